"""Storing an accepted webhook: one atomic Redis call, one round trip.

A Lua script does what the MULTI of `logstore.add_record` + XADD would, plus the dedupe check:
if the delivery id was already seen it writes a `duplicate` log record and enqueues nothing;
otherwise it adds the job to the stream, remembers the delivery id, writes the `queued` log
record and bumps the counters. The XADD is the script's first write, so an out-of-memory Redis
refuses the whole call and nothing is half-stored; the answer is 200 only after Redis replied.
All keys carry the application's hash tag, so the script is legal on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from retrieve_core.job import JOB_FIELD
from retrieve_core.keys import (
    COUNTER_DUPLICATE,
    COUNTER_RECEIVED,
    COUNTER_TTL_SECONDS,
    AppKeys,
    counter_bucket,
)
from retrieve_core.logstore import LogStatus, truncate_payload

DUPLICATE_MESSAGE = "duplicate delivery, not enqueued"

# KEYS: jobs stream, log record, log index, counters, last-received, dedupe key.
# ARGV[1] the job (JSON), ARGV[2] parameters (a JSON array of strings, see `Enqueuer.store`),
# ARGV[3] the log record's hash fields (a JSON object). JSON keeps the call to a few arguments:
# packing dozens of arguments is the costliest part of a call in redis-py.
_SCRIPT = """
local p = cjson.decode(ARGV[2])
local record = {}
for name, value in pairs(cjson.decode(ARGV[3])) do
  record[#record + 1] = name
  record[#record + 1] = value
end
local job_id, ts, max_age, counter_ttl, integration_id = p[1], p[2], p[3], p[4], p[5]
local dedupe_ttl = tonumber(p[6])
if dedupe_ttl > 0 and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('HSET', KEYS[2], unpack(record))
  redis.call('HSET', KEYS[2], 'status', p[9], 'error', p[10])
  redis.call('EXPIRE', KEYS[2], max_age)
  redis.call('ZADD', KEYS[3], ts, job_id)
  redis.call('HINCRBY', KEYS[4], p[8], 1)
  redis.call('EXPIRE', KEYS[4], counter_ttl)
  return 0
end
redis.call('XADD', KEYS[1], '*', p[11], ARGV[1])
if dedupe_ttl > 0 then
  redis.call('SET', KEYS[6], job_id, 'EX', dedupe_ttl)
end
redis.call('HSET', KEYS[2], unpack(record))
redis.call('EXPIRE', KEYS[2], max_age)
redis.call('ZADD', KEYS[3], ts, job_id)
redis.call('HINCRBY', KEYS[4], p[7], 1)
redis.call('EXPIRE', KEYS[4], counter_ttl)
redis.call('HSET', KEYS[5], integration_id, ts)
return 1
"""


class Outcome(IntEnum):
    DUPLICATE = 0
    QUEUED = 1


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the script needs of one accepted request."""

    job_id: str
    job_json: str
    integration_id: str
    received_at: float
    source_ip: str
    format: str
    body: bytes
    payload_limit: int
    log_max_age_seconds: int
    dedupe_id: str | None = None
    dedupe_ttl_seconds: int = 0


def queued_record_fields(delivery: Delivery) -> dict[str, str]:
    """The log record hash, exactly as `LogRecord(...).to_hash()` encodes it (tested)."""
    payload, truncated = truncate_payload(delivery.body, delivery.payload_limit)
    return {
        "id": delivery.job_id,
        "ts": json.dumps(delivery.received_at),
        "source_ip": delivery.source_ip,
        "integration_id": delivery.integration_id,
        "http_status": "200",
        "status": LogStatus.QUEUED.value,
        "error": "",
        "format": delivery.format,
        "payload": payload,
        "payload_truncated": "true" if truncated else "false",
        "message": "",
        "attempts": "0",
        "destinations": "[]",
        "console": "[]",
    }


class Enqueuer:
    """Runs the script for each accepted request, batching concurrent requests.

    Requests that arrive while a batch is in flight go out together in the next one: one write
    and one read for many webhooks (the system calls, not Redis, bound a busy receiver). Each
    script call stays atomic on its own and each caller gets its own result or error.
    """

    def __init__(self, redis: Redis, max_batch: int = 128) -> None:
        self._redis = redis
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self._max_batch = max_batch
        self._pending: list[tuple[list[str], list[str], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def store(self, keys: AppKeys, delivery: Delivery) -> Outcome:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((self._keys(keys, delivery), self._args(delivery), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return Outcome(int(await future))

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run(batch)
        finally:
            self._flusher = None

    async def _run(self, batch: list[tuple[list[str], list[str], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted or was flushed: a NOSCRIPT call did nothing, so rerun it.
                await self._redis.script_load(_SCRIPT)
                retry = [
                    c for c, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)
                ]
                again = iter(await self._execute(retry))
                results = [next(again) if isinstance(r, NoScriptError) else r for r in results]
        except Exception as exc:  # the connection failed: every caller gets the error
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller timed out
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(
        self, batch: list[tuple[list[str], list[str], asyncio.Future[Any]]]
    ) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script_keys, args, _ in batch:
                pipe.evalsha(self._sha, len(script_keys), *script_keys, *args)
            return await pipe.execute(raise_on_error=False)

    @staticmethod
    def _keys(keys: AppKeys, delivery: Delivery) -> list[str]:
        return [
            keys.jobs,
            keys.log_record(delivery.job_id),
            keys.log_index,
            keys.counters(delivery.integration_id, counter_bucket(delivery.received_at)),
            keys.last_received,
            keys.dedupe(delivery.integration_id, delivery.dedupe_id or ""),
        ]

    @staticmethod
    def _args(delivery: Delivery) -> list[str]:
        dedupe = delivery.dedupe_id is not None and delivery.dedupe_ttl_seconds > 0
        params = [
            delivery.job_id,
            json.dumps(delivery.received_at),
            str(delivery.log_max_age_seconds),
            str(COUNTER_TTL_SECONDS),
            delivery.integration_id,
            str(delivery.dedupe_ttl_seconds if dedupe else 0),
            COUNTER_RECEIVED,
            COUNTER_DUPLICATE,
            LogStatus.DUPLICATE.value,
            DUPLICATE_MESSAGE,
            JOB_FIELD,
        ]
        return [
            delivery.job_json,
            json.dumps(params),
            json.dumps(queued_record_fields(delivery), ensure_ascii=False),
        ]
