"""Webhook log records (DESIGN.md, "Webhook logs").

Every request leaves a record: a Redis hash per record plus a sorted-set index per application,
newest first by score. The receiver writes the record in the same MULTI as the job (one round
trip); the worker adds the processing result to the same hash. Records are bounded by count
(`trim`) and by age (hash TTL and index trim).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, cast

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .keys import AppKeys

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
    text = body[:limit].decode("utf-8", "replace")
    return text, len(body) > limit


def truncate_payload_bytes(body: bytes, limit: int) -> tuple[bytes, bool]:
    """`truncate_payload`, UTF-8 encoded: a short valid body is returned as it is."""
    if len(body) <= limit:
        try:
            body.decode()
        except UnicodeDecodeError:
            pass
        else:
            return body, False
    text, truncated = truncate_payload(body, limit)
    return text.encode(), truncated


def add_record(pipe: Pipeline, keys: AppKeys, record: LogRecord, max_age_seconds: int) -> None:
    """Queue the commands that store a new record on a pipeline (no round trip here)."""
    key = keys.log_record(record.id)
    pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
    pipe.expire(key, max_age_seconds)
    pipe.zadd(keys.log_index, {record.id: record.ts})


def encode_update(fields: Mapping[str, Any]) -> list[str]:
    """A record's processing result as hash fields (JSON unless a string), flattened, with
    `updated_at`: the worker's outcome script writes them if the record still exists."""
    flat: list[str] = []
    for name, value in fields.items():
        flat += (name, value if isinstance(value, str) else json.dumps(value))
    flat += ("updated_at", json.dumps(time.time()))
    return flat


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LogStore:
    """Reads and trims the records of one application."""

    def __init__(self, redis: Redis, keys: AppKeys) -> None:
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
                pipe.unlink(*(self.keys.log_record(_text(cast("bytes", i))) for i in ids))
                pipe.zrem(self.keys.log_index, *ids)
                await pipe.execute()
            removed += len(ids)
