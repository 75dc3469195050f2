"""Workers SIGKILLed repeatedly while 2,000 jobs flow: no accepted job is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support.fleet import (
    Ledger,
    Receiver,
    Worker,
    send_load,
    tally,
    wait_settled,
    write_fleet_config,
)
from tests.support.processes import Sink
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

JOBS = 2000


async def test_sigkilled_workers_lose_no_accepted_job(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = write_fleet_config(tmp_path / "config", sink.url)
    sink.delay = 0.005  # a destination that takes a moment: jobs are in flight when killed
    receiver = Receiver(config, private_redis_server.url).start()
    workers = [Worker(config, private_redis_server.url, concurrency=8).start() for _ in range(2)]
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    kills = 0
    try:
        load = asyncio.create_task(send_load([receiver.url], JOBS, ledger, rate=250))

        async def killer() -> None:
            nonlocal kills
            index = 0
            while not load.done() or len(sink.received) < len(ledger.accepted) * 0.9:
                await asyncio.sleep(1.0)
                victim = workers[index % 2]
                victim.kill()  # SIGKILL: no XACK, no goodbye; its jobs wait to be reclaimed
                kills += 1
                await asyncio.sleep(0.3)
                await asyncio.to_thread(victim.start, False)
                index += 1
                if kills >= 12:
                    return

        await asyncio.gather(load, killer())
        await wait_settled(ledger, sink, redis, timeout=60, also=3.0)
        result = await tally("worker SIGKILL", ledger, sink, redis)
        print(f"\n{result.line()} kills={kills}")

        assert ledger.unexpected == []
        assert kills >= 4
        assert result.ok == JOBS  # the receiver never depended on the workers
        assert result.lost == []
        assert result.foreign == []
        assert result.delivered_not_acked == 0
    finally:
        await redis.aclose()
        for worker in workers:
            worker.stop()
        receiver.process.stop()
