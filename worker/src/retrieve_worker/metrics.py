"""Prometheus metrics of a worker, registered in a registry the caller owns (and serves)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.jobs = Counter(
            "retrieve_worker_jobs_total",
            "Job attempts processed, by outcome (succeeded, failed, retrying, dead_letter).",
            ["application", "integration", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "retrieve_worker_retries_total",
            "Retries scheduled after a failed attempt.",
            ["application", "integration"],
            registry=r,
        )
        self.dead_letters = Counter(
            "retrieve_worker_dead_letters_total",
            "Jobs moved to the dead-letter stream.",
            ["application", "integration"],
            registry=r,
        )
        self.destination_latency = Histogram(
            "retrieve_worker_destination_latency_seconds",
            "Time for a destination to answer one record.",
            ["application", "integration", "destination"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.destination_requests = Counter(
            "retrieve_worker_destination_requests_total",
            "Requests to destinations, by result (2xx, 4xx, 5xx, timeout or error...).",
            ["application", "integration", "destination", "result"],
            registry=r,
        )
        self.rewrite_seconds = Histogram(
            "retrieve_worker_rewrite_duration_seconds",
            "Time spent in rewrite functions.",
            ["application", "integration"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reclaimed = Counter(
            "retrieve_worker_reclaimed_total",
            "Jobs reclaimed from a consumer that stopped acknowledging them (XAUTOCLAIM).",
            ["application"],
            registry=r,
        )
        self.taken_back = Counter(
            "retrieve_worker_taken_back_total",
            "Jobs found pending under this worker's own consumer name when its read loop started "
            "(a restarted container keeps its pod name) and run again at once.",
            ["application"],
            registry=r,
        )
        self.in_flight = Gauge(
            "retrieve_worker_jobs_in_flight",
            "Jobs being processed now.",
            ["application"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "retrieve_worker_queue_depth",
            "Jobs in the application's stream (waiting or being processed).",
            ["application"],
            registry=r,
        )
        self.processing_delay = Gauge(
            "retrieve_worker_processing_delay_seconds",
            "Now minus the received-at time of the oldest job not yet processed (0: none).",
            ["application"],
            registry=r,
        )
        self.dead_letters_stored = Gauge(
            "retrieve_worker_dead_letters_stored",
            "Dead-lettered jobs kept for replay (length of the dead-letter stream).",
            ["application"],
            registry=r,
        )
        self.batch_records = Histogram(
            "retrieve_worker_batch_records",
            "Records per batch request to a batched destination.",
            ["application", "integration", "destination"],
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.notifications = Counter(
            "retrieve_worker_notifications_total",
            "Error notification messages, by result (sent, failed after its retries).",
            ["application", "notification", "result"],
            registry=r,
        )
        self.commit_errors = Counter(
            "retrieve_worker_commit_errors_total",
            "Outcomes that could not be written to Redis (the job is redelivered later).",
            ["application"],
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup is a measurable cost per job."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
