"""Replay of dead-lettered jobs (`retrieve replay`, and the operator's replay annotation).

Each dead letter moves back to the jobs stream in one Lua script: it is deleted from the
dead-letter stream, re-added to the jobs stream with its attempts reset and `replayed`
incremented, and its webhook log record goes back to `queued`. Two replays running at once
never requeue an entry twice (the XDEL decides who moves it), and the integration's count of
dead letters (`AppKeys.dead_counts`) goes down with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from retrieve_core.job import JOB_FIELD, Job
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogStatus
from retrieve_core.redisclient import RedisClient

from .destinations import is_delivered

PAGE_SIZE = 200

REPLAY_SCRIPT = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
if redis.call('HINCRBY', KEYS[4], ARGV[6], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[6])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'status', ARGV[4], 'error', '', 'updated_at', ARGV[5])
end
return 1
"""

Progress = Callable[[int, int], None]


def _replayed_job(job: Job) -> Job:
    """Attempts start again; deliveries that went through are not resent, refusals are."""
    return job.model_copy(
        update={
            "attempt": 0,
            "replayed": job.replayed + 1,
            "deliveries": {k: v for k, v in job.deliveries.items() if is_delivered(v)},
        }
    )


async def replay_dead_letters(
    redis: RedisClient,
    keys: AppKeys,
    integration_id: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Moves the dead letters of one integration (all when None) back to the jobs stream.

    `progress(done, total)` is called after each entry. Returns how many entries were requeued.
    An entry whose job cannot be decoded stays where it is.
    """
    script = redis.register_script(REPLAY_SCRIPT)
    wanted: list[tuple[str, Job]] = []
    start = "-"
    while True:
        page: list[Any] = (
            await redis.xrange(keys.dead_letters, min=start, max="+", count=PAGE_SIZE) or []
        )
        for raw_id, fields in page:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                job = Job.decode(fields)
            except ValueError:
                continue
            if integration_id is None or job.integration_id == integration_id:
                wanted.append((entry_id, job))
        if len(page) < PAGE_SIZE:
            break
        last = page[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    total = len(wanted)
    moved = 0
    for done, (entry_id, job) in enumerate(wanted, start=1):
        replayed = _replayed_job(job)
        moved += int(
            await script(
                keys=[keys.dead_letters, keys.jobs, keys.log_record(job.id), keys.dead_counts],
                args=[
                    entry_id,
                    JOB_FIELD,
                    replayed.model_dump_json(),
                    LogStatus.QUEUED.value,
                    repr(time.time()),
                    job.integration_id,
                ],
            )
        )
        if progress is not None:
            progress(done, total)
    return moved
