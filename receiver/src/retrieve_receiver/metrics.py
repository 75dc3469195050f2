"""Prometheus metrics of one receiver, in a registry of its own (tests and dev mode never clash)."""

from __future__ import annotations

import urllib.request
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
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
        self.lean_handovers = Counter(
            "retrieve_receiver_lean_handovers",
            "Public-port connections the lean HTTP path handed to aiohttp, at a request that"
            " is not a plain webhook request arriving whole (chunked, 100-continue, slow, ...).",
            registry=self.registry,
        )
        self.observe = self.requests.observe


class ProcessSource(NamedTuple):
    """One receiver process of a supervisor: its number, PID and loopback metrics URL."""

    process: int
    pid: int
    metrics_url: str


class ProcessGroupCollector(Collector):
    """The metrics of several receiver processes (`retrieve receiver --processes N`) as one.

    Read from each process's loopback admin port when scraped, each sample labelled with the
    process index (`process="0"`...), so counters are never summed behind Prometheus's back nor
    shown for one process only; `retrieve_receiver_process_up{process,pid}` says which answered.
    The blocking reads are fine: the supervisor's loop serves nothing but the admin port.
    """

    def __init__(
        self, sources: Callable[[], Sequence[ProcessSource]], timeout: float = 2.0
    ) -> None:
        self._sources = sources
        self._timeout = timeout

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "retrieve_receiver_process_up",
            "1 if the receiver process answered this scrape, by process index and PID.",
            labels=["process", "pid"],
        )
        merged: dict[str, Metric] = {}
        for source in self._sources():
            try:
                with urllib.request.urlopen(source.metrics_url, timeout=self._timeout) as answer:
                    text = answer.read().decode()
            except OSError:
                up.add_metric([str(source.process), str(source.pid)], 0)
                continue
            up.add_metric([str(source.process), str(source.pid)], 1)
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = target
                for sample in family.samples:
                    labels = {**sample.labels, "process": str(source.process)}
                    target.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield up
        yield from merged.values()


def process_group_metrics(sources: Callable[[], Sequence[ProcessSource]]) -> ReceiverMetrics:
    """Metrics of a supervisor: what its admin port shows is its processes' (see above)."""
    metrics = ReceiverMetrics()  # the supervisor answers no webhook: its own stay unexported
    metrics.registry = CollectorRegistry()
    metrics.registry.register(ProcessGroupCollector(sources))
    return metrics
