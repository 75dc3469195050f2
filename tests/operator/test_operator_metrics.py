"""The operator's Prometheus endpoint (its own port; kopf's liveness endpoint is separate)."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from retrieve_operator.metrics import OperatorMetrics
from retrieve_operator.settings import operator_metrics_port
from tests.support.ports import free_port

pytestmark = pytest.mark.unit


@contextmanager
def metrics_servers() -> Iterator[list[socketserver.BaseServer]]:
    """The HTTP servers started in the block, listed at its end, then shut down and closed.

    `OperatorMetrics.serve` keeps no handle (prometheus_client serves from a daemon thread of
    its own), so they are found by their threads."""
    before = set(threading.enumerate())
    started: list[socketserver.BaseServer] = []
    threads: list[threading.Thread] = []
    try:
        yield started
    finally:
        for thread in set(threading.enumerate()) - before:
            target = getattr(thread, "_target", None)
            server = getattr(target, "__self__", None)
            # The serving thread (request threads of a threading server are not counted).
            if isinstance(server, socketserver.BaseServer) and target == server.serve_forever:
                started.append(server)
                threads.append(thread)
        for server in started:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


def test_the_operator_serves_reconcile_and_status_poll_metrics() -> None:
    metrics = OperatorMetrics()
    metrics.reconciles.labels("ok").inc()
    metrics.status_poll_seconds.observe(0.02)
    port = free_port()

    with metrics_servers() as started:
        metrics.serve(port, host="127.0.0.1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    assert len(started) == 1
    assert 'retrieve_operator_reconciles_total{result="ok"} 1.0' in text
    assert "retrieve_operator_status_poll_duration_seconds_count 1.0" in text
    assert "retrieve_operator_reconcile_duration_seconds_bucket" in text


def test_a_port_in_use_leaves_the_operator_running_without_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken, metrics_servers() as started:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="retrieve_operator.metrics"):
            OperatorMetrics().serve(port, host="127.0.0.1")  # does not raise
    assert started == []
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"operator metrics not served on port {port}: ")


def test_port_0_serves_nothing() -> None:
    with metrics_servers() as started:
        OperatorMetrics().serve(0, host="127.0.0.1")
    assert started == []


def test_the_metrics_port_defaults_to_8082_and_0_turns_it_off() -> None:
    assert operator_metrics_port({}) == 8082
    assert operator_metrics_port({"RETRIEVE_OPERATOR_METRICS_PORT": "0"}) == 0
