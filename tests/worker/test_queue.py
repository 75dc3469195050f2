"""Outcome commits: one script call for a batch of outcomes of every kind, against real Redis."""

from __future__ import annotations

import asyncio
import time
from unittest.mock import ANY

import pytest
from redis.asyncio import Redis

from retrieve_core.keys import CONSUMER_GROUP, COUNTER_FAILED, AppKeys, counter_bucket
from retrieve_worker.queue import Committer, Completion, Finish, ensure_group
from tests.support.counters import counter_total


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.redis
async def test_a_batch_of_outcomes_is_stored_and_acked_in_one_call(redis_client: Redis) -> None:
    keys = AppKeys("shop", "commits")
    await ensure_group(redis_client, keys)
    entry_ids = [_text(await redis_client.xadd(keys.jobs, {"job": f"{n}"})) for n in range(5)]
    await redis_client.xreadgroup(CONSUMER_GROUP, "w1", {keys.jobs: ">"}, count=10)
    for job_id in ("done", "retry", "dead", "failed"):  # "gone": its record was trimmed
        await redis_client.hset(keys.log_record(job_id), mapping={"status": "queued"})
    committer = Committer(redis_client, keys)
    start = time.time()

    def completion(n: int, job_id: str, mode: Finish, **extra: object) -> Completion:
        return Completion(
            entry_ids[n], mode, job_id=job_id, integration_id="ABC123",
            log_fields={"status": job_id, "attempts": n + 1}, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    await asyncio.gather(
        committer.commit(completion(0, "done", Finish.DONE)),
        committer.commit(completion(1, "retry", Finish.RETRY, job_json='{"a": 1}', due=42.0)),
        committer.commit(completion(2, "dead", Finish.DEAD, job_json='{"a": 2}', error="boom")),
        committer.commit(completion(3, "failed", Finish.DONE, failed=True)),
        committer.commit(completion(4, "gone", Finish.DONE)),
    )

    for n, job_id in enumerate(("done", "retry", "dead", "failed")):
        record = await redis_client.hgetall(keys.log_record(job_id))
        assert record[b"status"] == job_id.encode()
        assert record[b"attempts"] == str(n + 1).encode()
        assert b"updated_at" in record
    assert not await redis_client.exists(keys.log_record("gone"))
    assert await redis_client.zrange(keys.delayed, 0, -1, withscores=True) == [(b"retry", 42.0)]
    assert await redis_client.hget(keys.delayed_payloads, "retry") == b'{"a": 1}'
    dead = {b"job": b'{"a": 2}', b"integration_id": b"ABC123", b"error": b"boom", b"failed_at": ANY}
    assert await redis_client.xrange(keys.dead_letters) == [(ANY, dead)]
    assert await redis_client.hget(keys.dead_counts, "ABC123") == b"1"
    assert await counter_total(redis_client, keys, "ABC123", COUNTER_FAILED, since=start) == 2
    buckets = range(counter_bucket(start), counter_bucket(time.time()) + 1)
    ttls = [await redis_client.ttl(keys.counters("ABC123", bucket)) for bucket in buckets]
    assert max(ttls) > 0  # written with an expiry
    assert -1 not in ttls
    assert await redis_client.xlen(keys.jobs) == 0  # acked and deleted
    pending = await redis_client.xpending(keys.jobs, CONSUMER_GROUP)
    assert pending["pending"] == 0


@pytest.mark.redis
async def test_commits_survive_a_script_flush(redis_client: Redis) -> None:
    keys = AppKeys("shop", "commits-flush")
    await ensure_group(redis_client, keys)
    entry = _text(await redis_client.xadd(keys.jobs, {"job": "{}"}))
    await redis_client.xreadgroup(CONSUMER_GROUP, "w1", {keys.jobs: ">"})
    await redis_client.script_flush()  # as after a Redis restart
    await Committer(redis_client, keys).commit(Completion(entry))
    assert await redis_client.xlen(keys.jobs) == 0


@pytest.mark.redis
async def test_an_outcome_call_sent_twice_stores_its_outcomes_once(redis_client: Redis) -> None:
    """A call whose reply was lost (Redis restarting) is sent again: only entries still
    pending get their outcome, so no dead letter, retry or counter is written twice."""
    keys = AppKeys("shop", "commits-twice")
    await ensure_group(redis_client, keys)
    entries = [_text(await redis_client.xadd(keys.jobs, {"job": f"{n}"})) for n in range(2)]
    await redis_client.xreadgroup(CONSUMER_GROUP, "w1", {keys.jobs: ">"}, count=10)
    dead = Completion(entries[0], Finish.DEAD, job_id="dead", integration_id="ABC123",
                      job_json='{"a": 2}', error="boom", failed=True)  # fmt: skip
    retry = Completion(entries[1], Finish.RETRY, job_id="retry", integration_id="ABC123",
                       job_json='{"a": 1}', due=42.0)  # fmt: skip
    committer = Committer(redis_client, keys)
    start = time.time()
    await committer.commit_many([dead, retry])
    await redis_client.zrem(keys.delayed, "retry")  # the retry already moved on
    await committer.commit_many([dead, retry])  # the same call again

    assert await redis_client.xlen(keys.dead_letters) == 1
    assert await redis_client.hget(keys.dead_counts, "ABC123") == b"1"
    assert await counter_total(redis_client, keys, "ABC123", COUNTER_FAILED, since=start) == 1
    assert await redis_client.zcard(keys.delayed) == 0  # not scheduled again
