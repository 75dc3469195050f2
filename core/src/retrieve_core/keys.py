"""The Redis key layout.

Every key of one application carries the hash tag `{<namespace>/<app>}`: apps of the same name in
two namespaces never share data, and one application's stream, logs, dedupe and counters live on
one Redis Cluster shard (so MULTI pipelines and Lua scripts over them are legal there).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

CONSUMER_GROUP: Final = "retrieve-workers"
KEY_PREFIX: Final = "retrieve"

# Fields of the per-minute `counters` hashes (written by receivers and workers, read by the
# operator into Integration status), the bucket width and how long a bucket is kept.
COUNTER_RECEIVED: Final = "received"  # accepted and enqueued
COUNTER_REJECTED: Final = "rejected"  # answered 4xx/5xx
COUNTER_DUPLICATE: Final = "duplicate"  # answered 200, not enqueued again
COUNTER_FAILED: Final = "failed"
COUNTER_UNAUTHORIZED: Final = "unauthorized"  # answered 401/403 (rejectedBurst notifications)
COUNTER_BUCKET_SECONDS: Final = 60
COUNTER_TTL_SECONDS: Final = 2 * 3600


def counter_bucket(timestamp: float) -> int:
    return int(timestamp // COUNTER_BUCKET_SECONDS)


@dataclass(frozen=True, slots=True)
class AppKeys:
    namespace: str
    app: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}/{self.app}}}"

    def _key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX, self.tag, *parts))

    @property
    def jobs(self) -> str:
        """Stream of jobs waiting for a worker (consumer group `CONSUMER_GROUP`)."""
        return self._key("jobs")

    @property
    def dead_letters(self) -> str:
        """Stream of jobs that failed for good; `retrieve replay` moves them back to `jobs`."""
        return self._key("dead")

    @property
    def dead_counts(self) -> str:
        """Hash of integration id -> entries of `dead_letters` (kept by the worker's outcome
        script and by replay, so the operator reads per-integration counts without a scan)."""
        return self._key("dead", "count")

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting for a retry, scored by the time they are due."""
        return self._key("delayed")

    @property
    def delayed_payloads(self) -> str:
        """Hash of job id -> encoded job for the entries of `delayed`."""
        return self._key("delayed", "jobs")

    @property
    def log_index(self) -> str:
        """Sorted set of webhook log record ids scored by their timestamp."""
        return self._key("logs")

    def log_record(self, record_id: str) -> str:
        return self.log_record_prefix + record_id

    @property
    def log_record_prefix(self) -> str:
        """`log_record(id)` is this prefix followed by the id."""
        return self._key("log", "")

    def dedupe(self, integration_id: str, delivery_id: str) -> str:
        digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
        return self._key("dedupe", integration_id, digest)

    def counters(self, integration_id: str, bucket: int) -> str:
        """Hash of per-minute counters (received, rejected, failed...) of one integration."""
        return f"{self.counters_prefix}{integration_id}:{bucket}"

    @property
    def counters_prefix(self) -> str:
        """`counters(id, bucket)` is this prefix followed by `<id>:<bucket>`."""
        return self._key("count", "")

    @property
    def last_received(self) -> str:
        """Hash of integration id -> unix time of the last accepted request."""
        return self._key("last-received")

    @property
    def ready_probe(self) -> str:
        """String a receiver writes in `/readyz`: proof it can write to this application's shard."""
        return self._key("ready")

    def poll_state(self, integration_id: str) -> str:
        """Hash of one integration's scheduled polls: the `since` window start and the last
        run's outcome (written by `retrieve poll`, read by the operator into status)."""
        return self._key("poll", integration_id)

    @property
    def notify_gate_prefix(self) -> str:
        """`notify_gate_prefix + <notification>:<integration id>:<event>`: hash of the events
        of one kind for one integration not yet told by one notification (`count`, the latest
        event's fields) and when that notification last sent a message (`last_sent`)."""
        return self._key("notify", "gate", "")

    @property
    def notify_due(self) -> str:
        """Sorted set of gates (`<notification>:<integration id>:<event>`) with events to
        send, scored by the time their message is due (`minIntervalSeconds` after the last)."""
        return self._key("notify", "due")

    @property
    def notify_log(self) -> str:
        """Stream of notification attempts (capped), shown by `retrieve logs --notifications`
        and the web console."""
        return self._key("notify", "log")

    def rate_limit(self, scope: str) -> str:
        """Hash (tokens, ts) of one token bucket: scope `app` or `int:<integration id>`."""
        return self._key("rate", scope)
