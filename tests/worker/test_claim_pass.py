"""The claim pass and the keep-alive of our own entries, on a real Redis.

- Our entries stay alive while every slot is busy: the keep-alive is a loop of its own, not a
  step of the claim pass (which waits for a free slot); and such a worker still stops within
  its shutdown timeout, its jobs left pending.
- A dead consumer's idle entries are all claimed in one pass, also when the stream's ids run
  ahead of the Redis clock (a clock stepped back, a failover to a node whose clock is behind).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from retrieve_core.keys import CONSUMER_GROUP
from tests.worker.test_batching import batched

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def consumer_of(h: Any) -> Any:
    worker = h.workers[0][0]
    return next(iter(worker.consumers.values()))


async def test_our_entries_stay_alive_while_every_slot_waits_for_a_down_destination(
    harness_factory: Any, sink: Any
) -> None:
    h = harness_factory(
        {
            "d": {
                "destinations": [{"name": "erp", "http": batched(sink, "/down", 1, 10)}],
                "retry": {"maxAttempts": 5, "backoffSeconds": 30, "maxBackoffSeconds": 300},
            }
        }
    )
    sink.always["/down"] = 503
    for n in range(40):
        await h.enqueue("d", {"n": n})
    # Entries are kept alive once idle for half of claim_idle_ms: a stall shorter than 1.5 s
    # between a refresh and the check below cannot make one look abandoned.
    await h.start_worker(claim_idle_ms=3000, claim_interval_seconds=0.1)
    consumer = consumer_of(h)
    await asyncio.sleep(7)  # over two claim-idle times with the destination down
    ours = set(consumer.in_flight)
    assert ours, "the worker holds the jobs of the down destination"
    idle = await h.redis.xpending_range(h.keys.jobs, CONSUMER_GROUP, "-", "+", 100, idle=3000)
    # Another worker's XAUTOCLAIM would take (and send again) any of ours idle that long.
    assert [p for p in idle if p["message_id"].decode() in ours] == []

    # The read loop waits for a slot (each waits for the 30 s backoff): the stop must not.
    started = time.monotonic()
    await asyncio.wait_for(h.stop_workers(), 20)
    # The 5 s shutdown_timeout_seconds and slack for a loaded machine: far from the 30 s backoff.
    assert time.monotonic() - started < 15
    # Nothing lost: each job is pending (redelivered later), waits for its retry, or was
    # never read (the group's lag).
    pending = (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"]
    (group,) = await h.redis.xinfo_groups(h.keys.jobs)
    assert pending + await h.redis.zcard(h.keys.delayed) + group["lag"] == 40


@pytest.mark.parametrize("ahead_ms", [0, 600_000], ids=["ids-on-time", "ids-10-min-ahead"])
async def test_one_pass_claims_every_idle_entry_of_a_dead_consumer(
    harness_factory: Any, sink: Any, ahead_ms: int
) -> None:
    h = harness_factory(
        {"b": {"destinations": [{"name": "erp", "http": batched(sink, "/c", 10, 10)}]}}
    )
    await h.start_worker(claim_idle_ms=200, claim_interval_seconds=3600)
    consumer = consumer_of(h)
    await consumer.ready.wait()
    consumer.stop()  # no reading: the pass below is driven by hand
    await asyncio.sleep(0.3)
    consumer._stopping.clear()
    if ahead_ms:
        ahead = int(time.time() * 1000) + ahead_ms
        await h.redis.execute_command("XSETID", h.keys.jobs, f"{ahead}-0")
    for n in range(40):
        await h.enqueue("b", {"n": n})
    await h.redis.xreadgroup(CONSUMER_GROUP, "ghost", {h.keys.jobs: ">"}, count=100)  # then died
    await asyncio.sleep(0.5)
    assert await consumer.claim_once() == 40
