"""Webhook log records (DESIGN.md, "Webhook logs").

Every request leaves a record: a Redis hash per record plus a sorted-set index per application,
newest first by score. The receiver writes the record in the same script call as the job (one
round trip, `enqueue`); the worker adds the processing result to the same hash. Records are
bounded by count at every write (the enqueue script for accepted requests, `add_bounded_record`
for refused ones: the oldest past `maxRecords` go in the same call) and by age (hash TTL and the
periodic `trim`, which also takes what a lowered bound left).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, cast

from pydantic import BaseModel, Field
from pydantic_core import PydanticSerializationError, to_json

from .keys import AppKeys
from .redisclient import RedisClient, RedisPipeline
from .text import utf8_text

TRIM_CHUNK = 500
"""Records dropped per round trip by `LogStore.trim`."""


class LogStatus(StrEnum):
    QUEUED = "queued"  # accepted and waiting for a worker
    REJECTED = "rejected"  # answered 4xx/5xx, nothing enqueued
    DUPLICATE = "duplicate"  # answered 200, already seen, not enqueued again
    IGNORED = "ignored"  # answered 200 on purpose without a job (e.g. WooCommerce's ping)
    RETRYING = "retrying"  # an attempt failed, another is scheduled
    SUCCEEDED = "succeeded"  # the workflow ran and every destination took it
    FAILED = "failed"  # failed for good without retry (jobStatus 0, a 4xx destination)
    DEAD_LETTER = "dead_letter"  # retries exhausted, kept in the dead-letter stream


class DestinationResult(BaseModel):
    name: str
    record: int = 0
    status: int | None = None
    error: str = ""
    latency_ms: float = 0.0
    body: str = ""
    batch: str = ""
    """The batch that carried the record (its `Idempotency-Key`); empty when sent alone."""


class LogRecord(BaseModel):
    id: str
    ts: float
    source_ip: str
    integration_id: str
    http_status: int
    status: LogStatus
    error: str = ""
    format: str = ""
    payload: str = ""
    payload_truncated: bool = False
    job_status: int | None = None
    message: str = ""
    attempts: int = 0
    destinations: list[DestinationResult] = Field(default_factory=list)
    console: list[str] = Field(default_factory=list)
    updated_at: float | None = None

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            out[name] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> LogRecord:
        data: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if name in _TEXT_FIELDS:
                data[name] = text
            else:
                data[name] = json.loads(text)
        return cls.model_validate(data)


_TEXT_FIELDS = frozenset(
    {name for name, f in LogRecord.model_fields.items() if f.annotation is str} | {"status"}
)


def truncate_payload(body: bytes, limit: int) -> tuple[str, bool]:
    """A body as a log record keeps it: text of at most `limit` bytes once UTF-8 encoded, and
    whether any of the body was left out.

    Bytes that are not UTF-8 become U+FFFD, three bytes each, so the text is cut again after
    decoding: a binary body keeps fewer of its bytes, never more than `limit` of storage.
    """
    text, truncated = truncate_payload_bytes(body, limit)
    return text.decode(), truncated


def truncate_payload_bytes(body: bytes, limit: int) -> tuple[bytes, bool]:
    """`truncate_payload`, UTF-8 encoded: a short valid body is returned as it is."""
    if len(body) <= limit:
        try:
            body.decode()
        except UnicodeDecodeError:
            pass
        else:
            return body, False
    cut = limit
    while 0 < cut < len(body) and limit - cut < 3 and body[cut] & 0xC0 == 0x80:
        cut -= 1  # not inside a character: its first bytes alone would show as U+FFFD
    encoded = body[:cut].decode("utf-8", "replace").encode()
    if len(encoded) > limit:  # replacement characters for bytes that are not UTF-8
        # Cut at the limit, then drop the partial character the cut may leave at the end.
        return encoded[:limit].decode("utf-8", "ignore").encode(), True
    return encoded, len(body) > limit


def add_record(pipe: RedisPipeline, keys: AppKeys, record: LogRecord, max_age_seconds: int) -> None:
    """Queue the commands that store a new record on a pipeline (no round trip here)."""
    key = keys.log_record(record.id)
    pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
    pipe.expire(key, max_age_seconds)
    pipe.zadd(keys.log_index, {record.id: record.ts})


# A record added with the count bound enforced at once: the oldest records past `max_records`
# (at most EVICT_PER_WRITE of them, so a lowered bound never holds Redis for long) go with
# their hashes, whose keys share the index's hash tag (same slot). An optional counter is
# bumped in the same call.
EVICT_PER_WRITE = 16
_ADD_BOUNDED = f"""
local max_age, ts, id, max_records, prefix = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local counter_field, counter_ttl, nfields = ARGV[6], ARGV[7], tonumber(ARGV[8])
redis.call('HSET', KEYS[1], unpack(ARGV, 9, 8 + 2 * nfields))
redis.call('EXPIRE', KEYS[1], max_age)
redis.call('ZADD', KEYS[2], ts, id)
local extra = math.min(redis.call('ZCARD', KEYS[2]) - max_records, {EVICT_PER_WRITE})
if extra > 0 then
  local doomed = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  for _, old in ipairs(doomed) do
    redis.call('UNLINK', prefix .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
if counter_field ~= '' then
  if redis.call('HINCRBY', KEYS[3], counter_field, 1) == 1 then
    redis.call('EXPIRE', KEYS[3], counter_ttl)
  end
end
return extra
"""


async def add_bounded_record(
    redis: RedisClient,
    keys: AppKeys,
    record: LogRecord,
    *,
    max_age_seconds: int,
    max_records: int,
    counter: tuple[str, str, int] | None = None,
) -> None:
    """Store a record with the count bound enforced in the same call (no wait for `trim`).

    `counter` is (counters hash key, field, TTL seconds) to bump with it.
    """
    fields = record.to_hash()
    counter_key, counter_field, counter_ttl = counter or (keys.log_index, "", 0)
    args: list[str | int | float] = [
        max_age_seconds, record.ts, record.id, max_records, keys.log_record_prefix,
        counter_field, counter_ttl, len(fields),
    ]  # fmt: skip
    for name, value in fields.items():
        args += (name, value)
    await redis.eval(
        _ADD_BOUNDED, 3, keys.log_record(record.id), keys.log_index, counter_key, *args
    )


MAX_RESULT_TEXT_CHARS: Final = 2000
"""A processing result's text fields (`message`, `error`) keep at most this many characters:
their text comes from what a rewrite returned or a payload held (a mapping error quotes the
value it failed on), and the record must stay near its `payloadBytes`."""


def encode_update(fields: Mapping[str, Any]) -> list[str]:
    """A record's processing result as hash fields (JSON unless a string), flattened, with
    `updated_at`: the worker's outcome script writes them if the record still exists.

    Text fields are cut to `MAX_RESULT_TEXT_CHARS` and made valid UTF-8: a lone surrogate (a
    rewrite that cut a string inside an emoji) is written as its `\\udXXX` escape instead of
    failing the outcome call it travels in, with every other job of that call.
    """
    flat: list[str] = []
    for name, value in fields.items():
        flat += (name, utf8_text(value[:MAX_RESULT_TEXT_CHARS])[:MAX_RESULT_TEXT_CHARS]
                 if isinstance(value, str) else _json_text(value))  # fmt: skip
    flat += ("updated_at", repr(time.time()))
    return flat


def _json_text(value: Any) -> str:
    # pydantic-core's encoder costs a fifth of `json.dumps` (once per job on the worker's path);
    # `json.dumps` for what it refuses (a lone surrogate in a console line, say).
    try:
        return to_json(value).decode()
    except PydanticSerializationError:
        return json.dumps(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LogStore:
    """Reads and trims the records of one application."""

    def __init__(self, redis: RedisClient, keys: AppKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def get(self, record_id: str) -> LogRecord | None:
        raw = await self.redis.hgetall(self.keys.log_record(record_id))
        return LogRecord.from_hash(raw) if raw else None

    async def query(
        self,
        *,
        integration_id: str | None = None,
        statuses: Sequence[str] = (),
        limit: int = 50,
        page_size: int = 200,
    ) -> list[LogRecord]:
        """Newest first, filtered by integration and by status (a LogStatus or an HTTP code)."""
        wanted = set(statuses)
        found: list[LogRecord] = []
        start = 0
        while len(found) < limit:
            ids = await self.redis.zrevrange(self.keys.log_index, start, start + page_size - 1)
            if not ids:
                break
            start += page_size
            async with self.redis.pipeline(transaction=False) as pipe:
                for record_id in ids:
                    pipe.hgetall(self.keys.log_record(_text(cast("bytes", record_id))))
                rows = await pipe.execute()
            for raw in rows:
                if not raw:
                    continue
                record = LogRecord.from_hash(raw)
                if integration_id and record.integration_id != integration_id:
                    continue
                if wanted and not ({record.status.value, str(record.http_status)} & wanted):
                    continue
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    async def trim(self, max_records: int, max_age_seconds: int, chunk: int = TRIM_CHUNK) -> int:
        """Drop records beyond the count bound or older than the age bound; returns how many.

        The index is ordered by time, so both kinds of doomed records are its head. They go
        `chunk` at a time, each chunk one UNLINK (memory freed off Redis's main thread) and
        one ZREM: a backlog of a busy hour never holds Redis, nor the caller's event loop,
        for more than a moment, and requests are served between chunks.
        """
        removed = 0
        while True:
            cutoff = time.time() - max_age_seconds
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self.keys.log_index)
                pipe.zcount(self.keys.log_index, "-inf", cutoff)
                size, old = await pipe.execute()
            count = min(max(size - max_records, old), chunk)
            if count <= 0:
                return removed
            ids = await self.redis.zrange(self.keys.log_index, 0, count - 1)
            if not ids:
                return removed
            async with self.redis.pipeline(transaction=False) as pipe:
                # Not `pipe.unlink`: a cluster pipeline refuses several keys there (these
                # share one slot, which the raw command may name).
                records = (self.keys.log_record(_text(cast("bytes", i))) for i in ids)
                pipe.execute_command("UNLINK", *records)
                pipe.zrem(self.keys.log_index, *ids)
                await pipe.execute()
            removed += len(ids)
