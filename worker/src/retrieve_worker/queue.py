"""Redis side of the job queue: the consumer group, outcome commits, delayed retries.

Every command here touches keys of one application, which share a hash tag, so each Lua script
is legal on Redis Cluster too. An outcome (log update, retry schedule or dead letter) and the
XACK that ends a delivery are one atomic script call: a job is never acked before its outcome
is stored, and an outcome is never stored without the ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic_core import to_json
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from retrieve_core.job import JOB_FIELD
from retrieve_core.keys import CONSUMER_GROUP, COUNTER_TTL_SECONDS, AppKeys, counter_bucket
from retrieve_core.logstore import MAX_RESULT_TEXT_CHARS, encode_update
from retrieve_core.redisclient import RedisClient, is_redis_failure
from retrieve_core.resp import PackedScript, bulk, evalsha_head
from retrieve_core.text import utf8_text

log = logging.getLogger(__name__)


async def ensure_group(redis: RedisClient, keys: AppKeys) -> bool:
    """Creates the consumer group (and the stream) if missing; True when it was created.

    The group starts at id 0, so jobs enqueued before the first worker ever started are read.
    """
    try:
        await redis.xgroup_create(keys.jobs, CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


class Finish(StrEnum):
    DONE = "done"  # succeeded or failed for good: record and ack
    RETRY = "retry"  # record, schedule the next attempt, ack
    DEAD = "dead"  # record, add to the dead-letter stream, ack


# The outcomes of a batch of deliveries, in one atomic step: for each, the log record is
# updated (only if it still exists: a trimmed record must not come back half-empty), a retry is
# scheduled or a dead letter added; then every entry is acked and deleted (so the stream length
# is the queue depth). A job that failed for good (failed on purpose, 4xx, or dead-lettered)
# counts in its integration's per-minute `failed` counter, and a dead letter in the
# per-integration count of dead letters (replay decrements it): the operator reads both into
# Integration status. Log updates are sent once per distinct update: the jobs a batch delivered
# share theirs (bulk.py), so a call for a hundred of them decodes one, not a hundred.
# KEYS: jobs, delayed, delayed payloads, dead letters, dead counts, then per outcome its log
#       record and its counters bucket (all of one hash tag).
# ARGV[1]: the consumer group, ARGV[2]: the counters' TTL, ARGV[3]: a JSON array of log
#          updates, each [field name, value, ...], then per outcome a JSON array
#          [entry id, mode, job id, job json, due time, integration id, error, failed at,
#           log update (1-based index into ARGV[3], 0: none), failed (0/1)] (one argument
#          each: cheap to send).
FINISH_SCRIPT = """
local updates = cjson.decode(ARGV[3])
local ids = {}
for i = 4, #ARGV do
  local a = cjson.decode(ARGV[i])
  -- Only an entry still pending gets its outcome: a call sent again after its reply was lost
  -- (or an entry another worker settled meanwhile) stores nothing twice.
  if #redis.call('XPENDING', KEYS[1], ARGV[1], a[1], a[1], 1) > 0 then
    local record, counters = KEYS[6 + 2 * (i - 4)], KEYS[7 + 2 * (i - 4)]
    local fields = updates[a[9]]
    if fields and redis.call('EXISTS', record) == 1 then
      redis.call('HSET', record, unpack(fields))
    end
    if a[2] == 'retry' then
      redis.call('HSET', KEYS[3], a[3], a[4])
      redis.call('ZADD', KEYS[2], a[5], a[3])
    elseif a[2] == 'dead' then
      redis.call('XADD', KEYS[4], '*', 'job', a[4], 'integration_id', a[6], 'error', a[7],
                 'failed_at', a[8])
      redis.call('HINCRBY', KEYS[5], a[6], 1)
    end
    if a[10] == 1 and a[6] ~= '' then
      if redis.call('HINCRBY', counters, 'failed', 1) == 1 then
        redis.call('EXPIRE', counters, ARGV[2])
      end
    end
    ids[#ids + 1] = a[1]
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return #ids
"""
FINISH = PackedScript(FINISH_SCRIPT)
FINISH_SHA = FINISH.sha
_FINISH_KEYS = 5


@dataclass(slots=True)
class Completion:
    """One job's outcome to store, and its entry to ack (not changed once made)."""

    entry_id: str
    mode: Finish = Finish.DONE
    job_id: str = ""
    """The job (and log record) id; empty when the entry carries no decodable job."""
    log_fields: Mapping[str, Any] | None = None
    """The log record's new fields; completions holding the same mapping (the same object)
    send it once per script call."""
    job_json: str = ""
    due: float = 0.0
    integration_id: str = ""
    error: str = ""
    failed: bool = False
    """The job failed for good (counted in the integration's `failed` counter)."""


def pack_completions(keys: AppKeys, outcomes: Sequence[Completion]) -> bytes:
    """One packed FINISH call storing `outcomes` and acking their entries."""
    now = time.time()
    failed_at = repr(now)
    bucket = counter_bucket(now)
    record_prefix = keys.log_record_prefix
    counters: dict[str, bytes] = {}
    updates: list[list[str]] = []
    update_of: dict[int, int] = {}  # id(log fields) -> its index in `updates` (1-based)
    outcome_keys: list[bytes] = []
    arguments: list[bytes] = []
    for outcome in outcomes:
        update = 0
        fields = outcome.log_fields
        if fields:
            update = update_of.get(id(fields), 0)
            if not update:
                updates.append(encode_update(fields))
                update = update_of[id(fields)] = len(updates)
        integration = outcome.integration_id
        counter = counters.get(integration)
        if counter is None:
            counter = counters[integration] = bulk(
                keys.counters(integration or "-", bucket).encode()
            )
        outcome_keys.append(bulk((record_prefix + (outcome.job_id or "-")).encode()))
        outcome_keys.append(counter)
        mode = outcome.mode
        argument = [
            outcome.entry_id,
            mode.value,
            outcome.job_id,
            outcome.job_json,
            repr(outcome.due),
            integration,
            utf8_text(outcome.error[:MAX_RESULT_TEXT_CHARS])[:MAX_RESULT_TEXT_CHARS],
            failed_at,
            update,
            1 if outcome.failed or mode is Finish.DEAD else 0,
        ]
        arguments.append(bulk(to_json(argument)))
    return b"".join((
        evalsha_head(FINISH_SHA, _FINISH_KEYS + len(outcome_keys), 3 + len(arguments)),
        *(bulk(k.encode()) for k in (
            keys.jobs, keys.delayed, keys.delayed_payloads, keys.dead_letters, keys.dead_counts
        )),
        *outcome_keys,
        bulk(CONSUMER_GROUP.encode()),
        bulk(b"%d" % COUNTER_TTL_SECONDS),
        bulk(to_json(updates)),
        *arguments,
    ))  # fmt: skip


# Moves due retries back to the jobs stream: XADD and removal in one script, so a job is never
# lost or doubled by two workers running it at once.
MOVE_DUE_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('XADD', KEYS[3], '*', ARGV[3], job)
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #ids
"""


class DelayedMover:
    def __init__(self, redis: RedisClient) -> None:
        self._script = redis.register_script(MOVE_DUE_SCRIPT)

    async def move_due(self, keys: AppKeys, limit: int = 500, now: float | None = None) -> int:
        moved = await self._script(
            keys=[keys.delayed, keys.delayed_payloads, keys.jobs],
            args=[repr(time.time() if now is None else now), limit, JOB_FIELD],
        )
        return int(moved)


COMMIT_RETRY_SECONDS = 120.0
"""How long an outcome call is sent again while Redis is unreachable (a restart, a failover, a
pod rescheduled with its volume): the job was delivered, and the outcome dropped would have it
delivered again. A worker that is stopping gives up at its shutdown timeout."""
COMMIT_RETRY_FIRST_PAUSE = 0.1
COMMIT_RETRY_MAX_PAUSE = 2.0


def _unavailable(reply: Any) -> bool:
    """A script reply that says Redis could not run it now (loading its data, a replica
    during a failover, a cluster slot moving), not that it failed."""
    return isinstance(reply, BusyLoadingError | ReadOnlyError | TryAgainError | ClusterDownError)


class Committer:
    """Writes the outcomes of one application's jobs, batching concurrent ones.

    Each outcome is one atomic script call; while one batch is in flight the next accumulates,
    so under load many jobs share a round trip and at low load nothing waits. Each caller
    learns whether its own outcomes were stored.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: AppKeys,
        max_batch: int = 256,
        retry_seconds: float = COMMIT_RETRY_SECONDS,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._slot_key = keys.jobs.encode()
        self.max_batch = max_batch
        self.retry_seconds = retry_seconds
        self._pending: list[tuple[Sequence[Completion], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, outcome: Completion) -> None:
        """Stores one outcome and acks its entry; raises when that failed (not acked)."""
        await self.commit_many((outcome,))

    async def commit_many(self, outcomes: Sequence[Completion]) -> None:
        """Stores the outcomes and acks their entries (in calls of at most `max_batch`);
        raises when any call failed: some may be stored, none is acked without its outcome."""
        for error in await self.commit_calls(outcomes):
            if error is not None:
                raise error

    async def commit_calls(self, outcomes: Sequence[Completion]) -> list[Exception | None]:
        """Stores the outcomes and acks their entries in calls of at most `max_batch`, the
        outcomes taken in order; returns what each call raised (None: stored and acked)."""
        if not outcomes:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for start in range(0, len(outcomes), self.max_batch):
            future: asyncio.Future[None] = loop.create_future()
            self._pending.append((outcomes[start : start + self.max_batch], future))
            futures.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        if len(futures) == 1:
            try:
                await futures[0]
            except Exception as exc:
                return [exc]
            return [None]
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors: list[Exception | None] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled
            errors.append(result)
        return errors

    async def _flush(self) -> None:
        while self._pending:
            # Whole groups, up to `max_batch` outcomes (at least one group).
            taken, count = 1, len(self._pending[0][0])
            while taken < len(self._pending) and count + len(self._pending[taken][0]) <= (
                self.max_batch
            ):
                count += len(self._pending[taken][0])
                taken += 1
            batch = self._pending[:taken]
            del self._pending[:taken]
            try:
                await self._execute(batch)
            except BaseException as exc:  # nobody may wait forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else RedisError(repr(exc))
                        )
                if not isinstance(exc, Exception):
                    raise

    async def _execute(
        self, batch: list[tuple[Sequence[Completion], asyncio.Future[None]]]
    ) -> None:
        """One script call for the batch. While Redis is unreachable (restarting, failing
        over) the call is sent again, for up to `retry_seconds`: the jobs were delivered, and
        an outcome dropped now would have them delivered again once their entries are
        reclaimed. The script stores nothing twice (it skips entries no longer pending), so a
        call whose reply was lost may be sent again. A call that still fails fails each of its
        callers (their entries stay pending and are delivered again: at least once)."""
        outcomes = [outcome for group, _ in batch for outcome in group]
        data = pack_completions(self.keys, outcomes)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.retry_seconds, COMMIT_RETRY_FIRST_PAUSE
        while True:
            try:
                # To the node owning the application's slot; NOSCRIPT loads the script there.
                [reply] = await FINISH.run(self.redis, [(self._slot_key, data)])
            except Exception as exc:
                if not is_redis_failure(exc) or loop.time() + pause > deadline:
                    raise
                log.info("outcomes of %d job(s) not stored yet (%s), sending again in %.1f s",
                         len(outcomes), exc, pause)  # fmt: skip
            else:
                if not _unavailable(reply) or loop.time() + pause > deadline:
                    break
            await asyncio.sleep(pause)
            pause = min(pause * 2, COMMIT_RETRY_MAX_PAUSE)
        for _, future in batch:
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(None)
