"""Live counters of an application's Integrations: read from Redis, turned into status fields.

DESIGN.md, "Status that tells the truth". One Lua script call per application (one round trip,
summing in Redis) fetches, for every Integration: the time of its last accepted request, its
per-minute counter buckets of the last hour summed (received, rejected, failed), its count of
dead letters, and the application's queue depth (the jobs stream is per application: XLEN is
its depth, as the worker deletes acked entries; each Integration reports the application's
depth).

Dead letters per Integration come from the `dead_counts` hash the worker's outcome script and
replay keep; when its total disagrees with XLEN of the dead-letter stream (data written before
the hash existed), it is rebuilt once from the stream, in a WATCH/MULTI transaction so a
concurrent dead letter or replay is never lost.

The functions turning counts into status are pure and tested without Redis.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.exceptions import WatchError

from retrieve_core.keys import (
    COUNTER_BUCKET_SECONDS,
    COUNTER_FAILED,
    COUNTER_RECEIVED,
    COUNTER_REJECTED,
    AppKeys,
    counter_bucket,
)
from retrieve_core.redisclient import RedisClient

WINDOW_SECONDS: Final = 3600
COUNTER_FIELDS: Final = (COUNTER_RECEIVED, COUNTER_REJECTED, COUNTER_FAILED)
REBUILD_PAGE: Final = 1000

# The status fields this module owns (the reconciler owns the others).
LIVE_FIELDS: Final = (
    "lastReceivedAt",
    "receivedLastHour",
    "rejectedLastHour",
    "failedLastHour",
    "queueDepth",
    "deadLetters",
)


@dataclass(frozen=True)
class IntegrationCounts:
    last_received: float | None = None
    received: int = 0
    rejected: int = 0
    failed: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class ApplicationCounts:
    queue_depth: int = 0
    integrations: Mapping[str, IntegrationCounts] = field(default_factory=dict)


# ------------------------------------------------------------------------------- pure


def window_buckets(now: float) -> range:
    """The per-minute buckets of the last hour, the current (partial) minute included."""
    last = counter_bucket(now)
    return range(last - WINDOW_SECONDS // COUNTER_BUCKET_SECONDS + 1, last + 1)


def rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def live_status(counts: IntegrationCounts, queue_depth: int) -> dict[str, Any]:
    """The live status fields of one Integration (lastReceivedAt None: never received)."""
    return {
        "lastReceivedAt": rfc3339(counts.last_received) if counts.last_received else None,
        "receivedLastHour": counts.received,
        "rejectedLastHour": counts.rejected,
        "failedLastHour": counts.failed,
        "queueDepth": queue_depth,
        "deadLetters": counts.dead_letters,
    }


def live_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings `current` to `desired`, None when nothing changed (no
    status churn: an unchanged Integration is not written every interval)."""
    patch = {
        key: value
        for key, value in desired.items()
        if (current.get(key) is not None if value is None else current.get(key) != value)
    }
    return patch or None


def _int(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    try:
        return float(_text(value)) if value is not None else None
    except ValueError:
        return None


def counts_from_reply(
    integration_ids: Sequence[str], reply: Sequence[Any]
) -> tuple[ApplicationCounts, bool]:
    """Decodes the reply of :data:`COUNTS_SCRIPT` into counts; the flag says whether the
    per-integration dead-letter counts agree with the dead-letter stream's length."""
    queue_depth, dead_total, rows, dead_sum = reply[0], reply[1], reply[2:-1], reply[-1]
    integrations: dict[str, IntegrationCounts] = {}
    for integration_id, row in zip(integration_ids, rows, strict=True):
        received, rejected, failed, last, dead = row
        integrations[integration_id] = IntegrationCounts(
            last_received=_float(last) if last else None,
            received=_int(received),
            rejected=_int(rejected),
            failed=_int(failed),
            dead_letters=max(0, _int(dead)),
        )
    consistent = _int(dead_sum) == _int(dead_total)
    return ApplicationCounts(_int(queue_depth), integrations), consistent


# ------------------------------------------------------------------------------- RedisClient

# Sums an application's counters in RedisClient: the reply is a few numbers per integration rather
# than 60 bucket rows each, which is what keeps the operator's side of a poll cheap. Every key
# is declared and carries the application's hash tag (legal on Redis Cluster).
# KEYS: jobs, dead letters, last received, dead counts, then the buckets of each integration.
# ARGV: buckets per integration, the 3 counter field names, then the integration ids.
# Reply: [XLEN jobs, XLEN dead, [received, rejected, failed, last received, dead] per
#         integration..., sum of the dead counts].
COUNTS_SCRIPT: Final = """
local per = tonumber(ARGV[1])
local out = {redis.call('XLEN', KEYS[1]), redis.call('XLEN', KEYS[2])}
local k = 5
for i = 5, #ARGV do
  local received, rejected, failed = 0, 0, 0
  for _ = 1, per do
    local v = redis.call('HMGET', KEYS[k], ARGV[2], ARGV[3], ARGV[4])
    received = received + (tonumber(v[1]) or 0)
    rejected = rejected + (tonumber(v[2]) or 0)
    failed = failed + (tonumber(v[3]) or 0)
    k = k + 1
  end
  local last = redis.call('HGET', KEYS[3], ARGV[i]) or ''
  local dead = redis.call('HGET', KEYS[4], ARGV[i]) or '0'
  out[#out + 1] = {received, rejected, failed, last, dead}
end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  total = total + (tonumber(v) or 0)
end
out[#out + 1] = total
return out
"""


def counts_call(
    keys: AppKeys, integration_ids: Sequence[str], now: float
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of :data:`COUNTS_SCRIPT` for one application."""
    buckets = window_buckets(now)
    script_keys = [keys.jobs, keys.dead_letters, keys.last_received, keys.dead_counts]
    for integration_id in integration_ids:
        script_keys += [keys.counters(integration_id, bucket) for bucket in buckets]
    return script_keys, [str(len(buckets)), *COUNTER_FIELDS, *integration_ids]


async def read_counts(
    redis: RedisClient, keys: AppKeys, integration_ids: Sequence[str], now: float
) -> ApplicationCounts:
    """One round trip (plus, rarely, a rebuild of the dead-letter counts)."""
    script_keys, args = counts_call(keys, integration_ids, now)
    reply = await redis.register_script(COUNTS_SCRIPT)(keys=script_keys, args=args)
    counts, consistent = counts_from_reply(integration_ids, reply)
    if consistent:
        return counts
    dead = await rebuild_dead_counts(redis, keys)
    if dead is None:  # changed while counting: the next poll tries again
        return counts
    return ApplicationCounts(
        counts.queue_depth,
        {
            integration_id: IntegrationCounts(
                c.last_received, c.received, c.rejected, c.failed, dead.get(integration_id, 0)
            )
            for integration_id, c in counts.integrations.items()
        },
    )


async def rebuild_dead_counts(redis: RedisClient, keys: AppKeys) -> dict[str, int] | None:
    """Counts the dead-letter stream by integration and stores the counts; None when the
    stream or the counts changed meanwhile (nothing written)."""
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(keys.dead_letters, keys.dead_counts)
            counts: dict[str, int] = {}
            start = "-"
            while True:
                page: list[Any] = (
                    await pipe.xrange(keys.dead_letters, min=start, max="+", count=REBUILD_PAGE)
                    or []
                )
                for _, fields in page:
                    owner = _text((fields or {}).get(b"integration_id", b""))
                    counts[owner] = counts.get(owner, 0) + 1
                if len(page) < REBUILD_PAGE:
                    break
                start = "(" + _text(page[-1][0])
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.execute_command("DEL", keys.dead_counts)  # `delete` is async on a cluster
            if counts:
                pipe.hset(keys.dead_counts, mapping=counts)  # type: ignore[arg-type]
            await pipe.execute()
        except WatchError:
            return None
    return counts
