"""The receiver's per-request statistics, exported in Prometheus' text format."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from retrieve_receiver.metrics import ReceiverMetrics


@pytest.mark.unit
def test_requests_and_latency_are_exported_as_counters_and_a_cumulative_histogram() -> None:
    metrics = ReceiverMetrics()
    for seconds in (0.0001, 0.0005, 0.0007, 0.003, 7.0):  # 0.0005 is a bound: it is "le"
        metrics.observe("ABC123", 200, seconds)
    metrics.observe("unknown", 404, 0.0002)

    lines = set(generate_latest(metrics.registry).decode().splitlines())

    assert 'retrieve_receiver_requests_total{integration="ABC123",status="200"} 5.0' in lines
    assert 'retrieve_receiver_requests_total{integration="unknown",status="404"} 1.0' in lines
    expected = {"0.0005": 3, "0.001": 4, "0.005": 5, "5.0": 5, "+Inf": 6}
    for bound, count in expected.items():
        assert f'retrieve_receiver_request_seconds_bucket{{le="{bound}"}} {count}.0' in lines
    assert "retrieve_receiver_request_seconds_count 6.0" in lines
    [total] = [line for line in lines if line.startswith("retrieve_receiver_request_seconds_sum")]
    assert float(total.split()[-1]) == pytest.approx(7.0045)
