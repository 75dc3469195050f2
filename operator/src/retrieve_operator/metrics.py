"""Prometheus metrics of the operator, served on their own port (kopf's liveness endpoint is
separate): reconcile passes and their duration, status polls and their duration."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "retrieve_operator_reconciles_total",
            "Reconcile passes of an application, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "retrieve_operator_reconcile_duration_seconds",
            "Time of one reconcile pass of an application.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.status_polls = Counter(
            "retrieve_operator_status_polls_total",
            "Reads of an application's live counters from Redis, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.status_poll_seconds = Histogram(
            "retrieve_operator_status_poll_duration_seconds",
            "Time to read one application's counters and patch its Integrations' status.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.status_patches = Counter(
            "retrieve_operator_status_patches_total",
            "Integration status patches made by the status poll (only when a value changed).",
            registry=r,
        )
        self.notification_failures = Counter(
            "retrieve_operator_notification_failures_total",
            "Error notifications the workers could not send (each also a NotificationFailed "
            "Event on the RetrieveApplication).",
            registry=r,
        )
        self.replays = Counter(
            "retrieve_operator_replays_total",
            "Dead letters requeued because of the replay-dead-letters annotation.",
            registry=r,
        )

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serves /metrics on `port` in a background thread (0: not served)."""
        if not port:
            return
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # e.g. a second operator in one process: no metrics, still works
            log.warning("operator metrics not served on port %d: %s", port, exc)
