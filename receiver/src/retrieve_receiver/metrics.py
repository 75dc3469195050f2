"""Prometheus metrics of one receiver, in a registry of its own (tests and dev mode never clash)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Accepting a webhook takes about a millisecond: resolve well below that and up to timeouts.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

UNKNOWN_INTEGRATION = "unknown"
"""Label value for ids that are not configured: senders must not create label values."""


class RequestStats(Collector):
    """Requests answered (by integration and status) and their latency histogram.

    Counted per request in plain integers and exported when scraped: the receiver answers
    thousands of requests a second on one event loop thread, where a prometheus-client metric
    per request (a lock and a label lookup each) costs more than it measures.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, integration: str, status: int, seconds: float) -> None:
        key = (integration, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "retrieve_receiver_requests",
            "Webhook requests answered, by integration and HTTP status.",
            labels=["integration", "status"],
        )
        for (integration, status), count in sorted(self.counts.items()):
            requests.add_metric([integration, str(status)], count)
        yield requests
        cumulative, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "retrieve_receiver_request_seconds",
            "Time to answer a webhook request.",
            buckets=cumulative,
            sum_value=self.seconds,
        )


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.enqueue_failures = Counter(
            "retrieve_receiver_enqueue_failures",
            "Accepted requests answered 503 because Redis did not store the job.",
            registry=self.registry,
        )
        self.dns_lookups = Counter(
            "retrieve_receiver_dns_checks",
            "Domain whitelist checks, by result (admitted or refused).",
            ["result"],
            registry=self.registry,
        )
        self.observe = self.requests.observe
