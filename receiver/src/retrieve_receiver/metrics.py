"""Prometheus metrics of one receiver, in a registry of its own (tests and dev mode never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Accepting a webhook takes about a millisecond: resolve well below that and up to timeouts.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

UNKNOWN_INTEGRATION = "unknown"
"""Label value for ids that are not configured: senders must not create label values."""


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "retrieve_receiver_requests",
            "Webhook requests answered, by integration and HTTP status.",
            ["integration", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retrieve_receiver_request_seconds",
            "Time to answer a webhook request.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._children: dict[tuple[str, int], Counter] = {}

    def observe(self, integration: str, status: int, seconds: float) -> None:
        child = self._children.get((integration, status))
        if child is None:
            child = self.requests.labels(integration=integration, status=str(status))
            self._children[(integration, status)] = child
        child.inc()
        self.latency.observe(seconds)
