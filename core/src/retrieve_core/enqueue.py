"""Storing accepted webhooks: one atomic Lua call per batch, one round trip for many requests.

For each delivery the script does what the MULTI of `logstore.add_record` + XADD would, plus the
dedupe check: if the delivery id was already seen it writes a `duplicate` log record and enqueues
nothing; otherwise it adds the job to the stream, remembers the delivery id, writes the `queued`
log record and bumps the counters. A queued delivery's XADD is its first write, so an
out-of-memory Redis refuses the call before anything of it is stored; the caller answers 200 only
after Redis replied. All keys of one call carry one application's hash tag, so the script is
legal on Redis Cluster.

The log's count bound (`webhookLogs.maxRecords`) holds after every call: the call removes the
oldest records past it, as `logstore.add_bounded_record` does for refused requests, instead of
leaving them to the periodic trim (issue 12). The removal is one ZCARD, one ZPOPMIN and one
UNLINK a call, whatever its number of deliveries; at most that number plus
`logstore.EVICT_PER_WRITE` records go, so a lowered bound never holds Redis for long (the trim
takes the rest).

Requests that arrive while a call is in flight go out together in the next one. This is the
receiver's hot path (it bounds webhooks per second): the call is packed straight into RESP bytes
(`retrieve_core.resp`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from redis.exceptions import RedisError

from .job import JOB_FIELD
from .keys import (
    COUNTER_DUPLICATE,
    COUNTER_RECEIVED,
    COUNTER_TTL_SECONDS,
    AppKeys,
    counter_bucket,
)
from .logstore import EVICT_PER_WRITE, LogStatus, truncate_payload_bytes
from .redisclient import RedisClient
from .resp import PackedScript, bulk, evalsha_head

log = logging.getLogger(__name__)

DUPLICATE_MESSAGE: Final = "duplicate delivery, not enqueued"
MAX_BATCH: Final = 128

# Per delivery: 3 keys (log record, counters, dedupe) and 9 arguments, after the call's own
# 3 keys (jobs stream, log index, last-received) and 4 arguments (log max age, counters TTL,
# log max records, log record key prefix).
_CALL_KEYS: Final = 3  # a call's deliveries are at most MAX_BATCH: `unpack` takes 2 per one
_CALL_ARGS: Final = 4
_DELIVERY_KEYS: Final = 3
_DELIVERY_ARGS: Final = 9

# The `queued` log record as the script writes it: hash field -> Lua expression over the
# delivery's arguments (`job_id`, `ts`, `status`, `err`, `a` = index before its arguments).
# The same fields and encodings as `LogRecord.to_hash()` (a test compares the stored hashes).
_RECORD: Final = {
    "id": "job_id",
    "ts": "ts",
    "source_ip": "ARGV[a + 6]",
    "integration_id": "integration_id",
    "http_status": "'200'",
    "status": "status",
    "error": "err",
    "format": "ARGV[a + 7]",
    "payload": "ARGV[a + 8]",
    "payload_truncated": "ARGV[a + 9]",
    "message": "''",
    "attempts": "'0'",
    "destinations": "'[]'",
    "console": "'[]'",
}


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a double-quoted Lua string for these plain ASCII constants


_SCRIPT: Final = f"""
local max_age, counter_ttl, max_records, record_prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local results, index, last, counts, counted = {{}}, {{}}, {{}}, {{}}, {{}}
for i = 1, (#KEYS - {_CALL_KEYS}) / {_DELIVERY_KEYS} do
  local k = {_CALL_KEYS} + {_DELIVERY_KEYS} * (i - 1)
  local a = {_CALL_ARGS} + {_DELIVERY_ARGS} * (i - 1)
  local job_id, ts, integration_id = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local dedupe_ttl = tonumber(ARGV[a + 5])
  local status, counter, err, outcome
  if dedupe_ttl > 0 and redis.call('EXISTS', KEYS[k + 3]) == 1 then
    status, counter, outcome = {_lua_string(LogStatus.DUPLICATE)}, {_lua_string(COUNTER_DUPLICATE)}, '0'
    err = {_lua_string(DUPLICATE_MESSAGE)}
  else
    redis.call('XADD', KEYS[1], '*', {_lua_string(JOB_FIELD)}, ARGV[a + 1])
    if dedupe_ttl > 0 then
      redis.call('SET', KEYS[k + 3], job_id, 'EX', dedupe_ttl)
    end
    last[integration_id] = ts
    status, counter, err, outcome = {_lua_string(LogStatus.QUEUED)}, {_lua_string(COUNTER_RECEIVED)}, '', '1'
  end
  redis.call('HSET', KEYS[k + 1], {", ".join(f"'{name}', {expr}" for name, expr in _RECORD.items())})
  redis.call('EXPIRE', KEYS[k + 1], max_age)
  index[#index + 1] = ts
  index[#index + 1] = job_id
  local key = KEYS[k + 2]
  if not counts[key] then
    counts[key] = {{}}
    counted[#counted + 1] = key
  end
  counts[key][counter] = (counts[key][counter] or 0) + 1
  results[i] = outcome
end
-- What the deliveries share is written once per call: the log index, last-received times,
-- counters (each counter bucket's TTL is set by whoever counts a field in it first).
redis.call('ZADD', KEYS[2], unpack(index))
-- The count bound: the oldest records past it go now, not at the next periodic trim.
if max_records > 0 then
  local extra = math.min(redis.call('ZCARD', KEYS[2]) - max_records, #results + {EVICT_PER_WRITE})
  if extra > 0 then
    local popped, doomed = redis.call('ZPOPMIN', KEYS[2], extra), {{}}
    for i = 1, #popped, 2 do
      doomed[#doomed + 1] = record_prefix .. popped[i]
    end
    redis.call('UNLINK', unpack(doomed))
  end
end
for integration_id, ts in pairs(last) do
  redis.call('HSET', KEYS[3], integration_id, ts)
end
for _, key in ipairs(counted) do
  for field, n in pairs(counts[key]) do
    if redis.call('HINCRBY', key, field, n) == n then
      redis.call('EXPIRE', key, counter_ttl)
    end
  end
end
return table.concat(results)
"""  # noqa: E501 - generated Lua


class Outcome(IntEnum):
    DUPLICATE = 0
    QUEUED = 1


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to build, and this is per request
class Delivery:
    """What the script needs of one accepted request."""

    job_id: str
    job_json: bytes
    integration_id: str
    received_at: float
    source_ip: str
    format: str
    body: bytes
    payload_limit: int
    log_max_age_seconds: int
    dedupe_id: str | None = None
    dedupe_ttl_seconds: int = 0
    wait: tuple[int, int] = (0, 0)
    """(replicas, timeout ms) for `WAIT` after the call (`spec.redis.durability`); 0: none."""
    log_max_records: int = 0
    """The log's count bound (`webhookLogs.maxRecords`), held by the call; 0: the trim's alone."""


class _AppPrefix:
    """One application's keys, encoded once: the hot path only appends ids to them."""

    __slots__ = ("call_keys", "counters", "jobs", "jobs_key", "log_record", "log_record_arg")

    def __init__(self, keys: AppKeys) -> None:
        self.jobs_key = keys.jobs.encode()  # its slot is the application's
        self.jobs = bulk(self.jobs_key)
        self.call_keys = (
            self.jobs + bulk(keys.log_index.encode()) + bulk(keys.last_received.encode())
        )
        self.log_record = keys.log_record_prefix.encode()
        self.log_record_arg = bulk(self.log_record)
        self.counters = keys.counters_prefix.encode()


@dataclass(slots=True)
class _Call:
    """The deliveries of one application in a batch: one EVALSHA."""

    keys: AppKeys
    max_age: int
    max_records: int
    wait: tuple[int, int]
    packed_keys: list[bytes]
    packed_args: list[bytes]
    futures: list[asyncio.Future[Outcome]]

    def command(self, sha: bytes) -> bytes:
        n = len(self.futures)
        prefix = _prefix(self.keys)
        common = b"%b%b%b%b" % (
            bulk(b"%d" % self.max_age),
            bulk(b"%d" % COUNTER_TTL_SECONDS),
            bulk(b"%d" % self.max_records),
            prefix.log_record_arg,
        )
        head = evalsha_head(sha, _CALL_KEYS + n * _DELIVERY_KEYS, _CALL_ARGS + n * _DELIVERY_ARGS)
        return b"".join((head, prefix.call_keys, *self.packed_keys, common, *self.packed_args))


# (keys, log max age, log max records, wait, packed keys, packed arguments, the caller's future)
_Pending = tuple[AppKeys, int, int, tuple[int, int], bytes, bytes, asyncio.Future[Outcome]]
_PREFIXES: dict[AppKeys, _AppPrefix] = {}


def _prefix(keys: AppKeys) -> _AppPrefix:
    prefix = _PREFIXES.get(keys)
    if prefix is None:
        if len(_PREFIXES) > 10_000:  # applications come and go with the config
            _PREFIXES.clear()
        prefix = _PREFIXES[keys] = _AppPrefix(keys)
    return prefix


_KEYS_FORMAT: Final = b"$%d\r\n%b%b\r\n$%d\r\n%b%b:%d\r\n%b"
_ARGS_FORMAT: Final = b"$%d\r\n%b\r\n" * (_DELIVERY_ARGS - 1) + b"%b"


def _pack_delivery(keys: AppKeys, delivery: Delivery) -> tuple[bytes, bytes]:
    """The delivery's 3 keys and 9 arguments as RESP bulk strings (one format call each)."""
    prefix = _prefix(keys)
    job_id = delivery.job_id.encode()
    integration_id = delivery.integration_id.encode()
    dedupe = delivery.dedupe_id is not None and delivery.dedupe_ttl_seconds > 0
    if dedupe:
        assert delivery.dedupe_id is not None
        dedupe_key = bulk(keys.dedupe(delivery.integration_id, delivery.dedupe_id).encode())
    else:
        dedupe_key = prefix.jobs  # a declared key the script never touches
    bucket = counter_bucket(delivery.received_at)
    packed_keys = _KEYS_FORMAT % (
        len(prefix.log_record) + len(job_id), prefix.log_record, job_id,
        len(prefix.counters) + len(integration_id) + 1 + len(b"%d" % bucket),
        prefix.counters, integration_id, bucket,
        dedupe_key,
    )  # fmt: skip
    payload, truncated = truncate_payload_bytes(delivery.body, delivery.payload_limit)
    received_at = repr(delivery.received_at).encode()  # as json.dumps writes a finite float
    dedupe_ttl = b"%d" % (delivery.dedupe_ttl_seconds if dedupe else 0)
    source_ip, fmt = delivery.source_ip.encode(), delivery.format.encode()
    packed_args = _ARGS_FORMAT % (
        len(delivery.job_json), delivery.job_json,
        len(job_id), job_id,
        len(received_at), received_at,
        len(integration_id), integration_id,
        len(dedupe_ttl), dedupe_ttl,
        len(source_ip), source_ip,
        len(fmt), fmt,
        len(payload), payload,
        b"$4\r\ntrue\r\n" if truncated else b"$5\r\nfalse\r\n",
    )  # fmt: skip
    return packed_keys, packed_args


class Enqueuer:
    """Runs the script for accepted requests, batching the ones that arrive together.

    Each caller gets its own outcome or error; a call that does not complete within `timeout`
    fails its callers with `TimeoutError` (and its connection is dropped, so a late reply
    cannot be read as another call's).
    """

    def __init__(
        self, redis: RedisClient, *, timeout: float = 4.0, max_batch: int = MAX_BATCH
    ) -> None:
        self._redis = redis
        self._script = PackedScript(_SCRIPT)
        self._timeout = timeout
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def store(self, keys: AppKeys, delivery: Delivery) -> Outcome:
        packed_keys, packed_args = _pack_delivery(keys, delivery)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append(
            (
                keys,
                delivery.log_max_age_seconds,
                delivery.log_max_records,
                delivery.wait,
                packed_keys,
                packed_args,
                future,
            )
        )
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run(_group(batch))
        finally:
            self._flusher = None

    async def _run(self, calls: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                # Grouped by the node owning each application's slot on a cluster; NOSCRIPT
                # (Redis restarted or flushed) loads the script and runs the call again.
                replies = await self._execute(calls)
        except asyncio.CancelledError:  # shutting down: nobody waits in vain
            for call in calls:
                _settle(call, RedisError("enqueue cancelled"))
            raise
        except Exception as exc:  # the call failed as a whole: each caller gets the error
            replies = [exc] * len(calls)
        for call, reply in zip(calls, replies, strict=True):
            _settle(call, reply)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        sha = self._script.sha
        packed = [(_prefix(call.keys).jobs_key, call.command(sha)) for call in calls]
        if any(call.wait[0] for call in calls):  # spec.redis.durability: WAIT on the writes
            return await self._script.run(self._redis, packed, [call.wait for call in calls])
        return await self._script.run(self._redis, packed)


def _group(batch: list[_Pending]) -> list[_Call]:
    calls: dict[tuple[AppKeys, int, int, tuple[int, int]], _Call] = {}
    for keys, max_age, max_records, wait, packed_keys, packed_args, future in batch:
        call = calls.get((keys, max_age, max_records, wait))
        if call is None:
            call = calls[keys, max_age, max_records, wait] = _Call(
                keys, max_age, max_records, wait, [], [], []
            )
        call.packed_keys.append(packed_keys)
        call.packed_args.append(packed_args)
        call.futures.append(future)
    return list(calls.values())


def _settle(call: _Call, reply: Any) -> None:
    if isinstance(reply, BaseException):
        error: BaseException = reply
        if not isinstance(reply, RedisError | OSError | TimeoutError):
            log.error("enqueue call failed unexpectedly", exc_info=reply)
            error = RedisError(f"enqueue failed: {reply!r}")
    elif not isinstance(reply, bytes | str) or len(reply) != len(call.futures):
        error = RedisError(f"unexpected reply to the enqueue script: {reply!r:.200}")
    else:
        # One character per delivery, its `Outcome` ("0" duplicate, "1" queued): a string
        # reply is parsed in one read, an array element by element.
        outcomes = reply.decode() if isinstance(reply, bytes) else reply
        for future, outcome in zip(call.futures, outcomes, strict=True):
            if not future.done():  # not if the caller was cancelled
                future.set_result(Outcome(int(outcome)))
        return
    for future in call.futures:
        if not future.done():
            future.set_exception(error)
