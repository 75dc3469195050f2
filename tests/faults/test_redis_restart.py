"""Redis SIGKILLed and restarted under load (AOF, appendfsync always): every 200 survives;
while it is down the receiver answers 503 and /readyz fails."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support.fleet import Fleet, send_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

REQUESTS = 1500
DOWN_SECONDS = 3.0


async def readyz_status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(f"{url}/readyz") as answer:
            return answer.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def test_redis_killed_under_load_keeps_every_accepted_job(fleet: Fleet) -> None:
    assert fleet.redis_server.appendonly  # the fixture runs AOF with appendfsync always
    receiver = fleet.receiver()
    fleet.worker(concurrency=16)
    ledger = fleet.ledger
    readiness_while_down: list[int] = []
    load = asyncio.create_task(send_load([receiver.url], REQUESTS, ledger, rate=150))
    await fleet.answered(300)  # the load is under way
    fleet.redis_server.stop(kill=True)  # SIGKILL: no shutdown save, only the AOF remains
    killed = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        # The outage lasts DOWN_SECONDS, while the load goes on: /readyz is watched meanwhile.
        while time.monotonic() - killed < DOWN_SECONDS:
            readiness_while_down.append(await readyz_status(session, receiver.admin_url))
            await asyncio.sleep(0.3)
        restarted = time.monotonic()
        await asyncio.to_thread(fleet.redis_server.start)  # same port, same AOF
        ready_after = 0
        deadline = time.monotonic() + 30
        while ready_after != 200 and time.monotonic() < deadline:
            ready_after = await readyz_status(session, receiver.admin_url)
            await asyncio.sleep(0.1)
    await load
    result = await fleet.settled("redis SIGKILL")
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
    assert ready_after == 200  # ready again once Redis is back
    assert result.lost == []
    assert result.foreign == []
    assert result.ok + result.status_503 + result.connection_errors >= REQUESTS
    assert result.ok > REQUESTS / 2
    assert set(result.other_statuses) == set()
