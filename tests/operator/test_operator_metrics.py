"""The operator's Prometheus endpoint (its own port; kopf's liveness endpoint is separate)."""

from __future__ import annotations

import urllib.request

import pytest

from retrieve_operator.metrics import OperatorMetrics
from retrieve_operator.settings import operator_metrics_port
from tests.support.ports import free_port

pytestmark = pytest.mark.unit


def test_the_operator_serves_reconcile_and_status_poll_metrics() -> None:
    metrics = OperatorMetrics()
    metrics.reconciles.labels("ok").inc()
    metrics.status_poll_seconds.observe(0.02)
    port = free_port()

    metrics.serve(port, host="127.0.0.1")

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'retrieve_operator_reconciles_total{result="ok"} 1.0' in text
    assert "retrieve_operator_status_poll_duration_seconds_count 1.0" in text
    assert "retrieve_operator_reconcile_duration_seconds_bucket" in text


def test_a_port_in_use_leaves_the_operator_running_without_metrics() -> None:
    port = free_port()
    OperatorMetrics().serve(port, host="127.0.0.1")
    OperatorMetrics().serve(port, host="127.0.0.1")  # logs a warning, does not raise


def test_the_metrics_port_defaults_to_8082_and_0_turns_it_off() -> None:
    assert operator_metrics_port({}) == 8082
    assert operator_metrics_port({"RETRIEVE_OPERATOR_METRICS_PORT": "0"}) == 0
