"""Workers SIGKILLed repeatedly while 2,000 jobs flow: no accepted job is lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.fleet import Fleet, send_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

JOBS = 2000


async def test_sigkilled_workers_lose_no_accepted_job(fleet: Fleet) -> None:
    fleet.sink.delay = 0.005  # a destination that takes a moment: jobs are in flight when killed
    receiver = fleet.receiver()
    workers = [fleet.worker(concurrency=8) for _ in range(2)]
    ledger = fleet.ledger
    sink = fleet.sink
    kills = 0
    load = asyncio.create_task(send_load([receiver.url], JOBS, ledger, rate=250))

    def enough() -> bool:
        return load.done() and len(sink.received) >= len(ledger.accepted) * 0.9

    async def delivered_more(count: int) -> None:
        """Paces the kills by progress, not time: `count` more deliveries (or enough)."""
        target, deadline = len(sink.received) + count, time.monotonic() + 30
        while len(sink.received) < target and not enough():
            if time.monotonic() > deadline:
                raise AssertionError(f"no deliveries for 30 s: {len(sink.received)} in all")
            await asyncio.sleep(0.05)

    async def killer() -> None:
        nonlocal kills
        index = 0
        while kills < 12:
            await delivered_more(250)
            if enough():
                return
            victim = workers[index % 2]
            victim.kill()  # SIGKILL: no XACK, no goodbye; its jobs wait to be reclaimed
            kills += 1
            await delivered_more(20)  # the other worker goes on meanwhile
            await asyncio.to_thread(victim.start, False)
            index += 1

    await asyncio.gather(load, killer())
    result = await fleet.settled("worker SIGKILL", timeout=60)
    print(f"\n{result.line()} kills={kills}")

    assert ledger.unexpected == []
    assert kills >= 4
    assert result.ok == JOBS  # the receiver never depended on the workers
    assert result.lost == []
    assert result.foreign == []
    assert result.delivered_not_acked == 0
