"""Redis SIGKILLed and restarted under load (AOF, appendfsync always): every 200 survives;
while it is down the receiver answers 503 and /readyz fails."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
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

REQUESTS = 1500
DOWN_SECONDS = 3.0


async def readyz_status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(f"{url}/readyz") as answer:
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def test_redis_killed_under_load_keeps_every_accepted_job(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    assert private_redis_server.appendonly  # the fixture runs AOF with appendfsync always
    config = write_fleet_config(tmp_path / "config", sink.url)
    receiver = Receiver(config, private_redis_server.url).start()
    worker = Worker(config, private_redis_server.url, concurrency=16).start()
    ledger = Ledger()
    readiness_while_down: list[int] = []
    try:
        load = asyncio.create_task(send_load([receiver.url], REQUESTS, ledger, rate=150))
        await asyncio.sleep(3.0)
        private_redis_server.stop(kill=True)  # SIGKILL: no shutdown save, only the AOF remains
        killed = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() - killed < DOWN_SECONDS:
                readiness_while_down.append(await readyz_status(session, receiver.admin_url))
                await asyncio.sleep(0.3)
            restarted = time.monotonic()
            await asyncio.to_thread(private_redis_server.start)  # same port, same AOF
            await asyncio.sleep(1.0)
            ready_after = await readyz_status(session, receiver.admin_url)
        await load
        redis = Redis.from_url(private_redis_server.url)
        try:
            await wait_settled(ledger, sink, redis, timeout=40, also=2.0)
            result = await tally("redis SIGKILL", ledger, sink, redis)
        finally:
            await redis.aclose()
        # Answers that arrived well inside the outage (past the receiver's 2 s Redis timeout).
        inside = [s for t, s in ledger.timeline if killed + 2.5 < t < restarted]
        print(
            f"\n{result.line()} readyz_while_down={sorted(set(readiness_while_down))} "
            f"readyz_after={ready_after} answers_inside_outage={sorted(set(map(str, inside)))}"
        )

        assert ledger.unexpected == []
        assert result.status_503 > 0
        assert 200 not in inside
        assert readiness_while_down
        assert 200 not in readiness_while_down[1:]
        assert ready_after == 200
        assert result.lost == []
        assert result.foreign == []
        assert result.ok + result.status_503 + result.connection_errors >= REQUESTS
        assert result.ok > REQUESTS / 2
        assert set(result.other_statuses) == set()
    finally:
        worker.stop()
        receiver.process.stop()
