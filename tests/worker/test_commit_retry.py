"""An outcome whose call fails while Redis restarts is sent again, not dropped.

The job was delivered; an outcome dropped then leaves its entry pending, and the entry is
delivered again once Redis is back (read again by its own worker, or reclaimed by another):
a duplicate at the destination for every job finished while Redis was away. The outcome
script stores nothing twice, so the call can be sent again safely.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from retrieve_core.config import SecretStore
from retrieve_core.keys import CONSUMER_GROUP, AppKeys
from retrieve_core.logstore import LogStatus
from retrieve_core.provider import ConfigProvider
from retrieve_worker import queue
from retrieve_worker.queue import Committer, Completion, ensure_group
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

from .conftest import Harness, make_app

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

DOWN_SECONDS = 1.5


class RestartingDestination:
    """Answers 200 to each request; the first one first stops Redis (a clean shutdown, AOF
    kept), and Redis comes back `DOWN_SECONDS` later, while the worker commits."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.redis_server = redis_server
        self.received: list[bytes] = []
        self.port = free_port()
        self.restarted = asyncio.Event()

    async def take(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        if len(self.received) == 1:
            await asyncio.to_thread(self.redis_server.stop)
            asyncio.get_running_loop().call_later(DOWN_SECONDS, self._start)
        return web.json_response({"ok": True})

    def _start(self) -> None:
        async def start() -> None:
            await asyncio.to_thread(self.redis_server.start)
            self.restarted.set()

        asyncio.get_running_loop().create_task(start())


@pytest.fixture
async def destination(private_redis_server: RedisServer) -> AsyncIterator[RestartingDestination]:
    server = RestartingDestination(private_redis_server)
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_an_outcome_is_stored_once_redis_is_back_and_the_job_is_not_delivered_again(
    private_redis_server: RedisServer, destination: RestartingDestination
) -> None:
    redis = Redis.from_url(private_redis_server.url)
    url = f"http://127.0.0.1:{destination.port}/orders"
    app = make_app("restart", {"R1": {"destinations": [{"name": "d", "http": {"url": url}}]}})
    provider = ConfigProvider()
    provider.update((app,), SecretStore())
    h = Harness(redis, private_redis_server.url, provider, app)
    try:
        job = await h.enqueue("R1", {"id": 1})
        # A short claim time: without the outcome sent again, the entry would be delivered
        # again within a second of Redis coming back.
        await h.start_worker(claim_idle_ms=500, claim_interval_seconds=0.2)
        async with asyncio.timeout(30):
            await destination.restarted.wait()
        await redis.aclose()  # its connection went with the old process
        h.redis = redis = Redis.from_url(private_redis_server.url)
        record = await h.wait_status(job.id, LogStatus.SUCCEEDED)
        assert record.attempts == 1
        await asyncio.sleep(3)  # well past the claim time and several claim passes
        assert len(destination.received) == 1
        pending = await redis.xpending(app.keys.jobs, CONSUMER_GROUP)
        assert pending["pending"] == 0
    finally:
        await h.stop_workers()
        await redis.aclose()


async def test_an_outcome_call_gives_up_once_redis_stays_away_past_its_bound(
    private_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call is sent again for a bounded time (`COMMIT_RETRY_SECONDS`, here 1 s), then fails:
    the job stays pending and is delivered again later; the worker is not held up for ever."""
    keys = AppKeys("shop", "gives-up")
    redis = Redis.from_url(private_redis_server.url, socket_timeout=1, socket_connect_timeout=1)
    sent = 0
    run = queue.FINISH.run

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return await run(*args, **kwargs)

    monkeypatch.setattr(queue.FINISH, "run", counted)
    try:
        await ensure_group(redis, keys)
        added = await redis.xadd(keys.jobs, {"job": "{}"})
        entry = added.decode() if isinstance(added, bytes) else added
        await redis.xreadgroup(CONSUMER_GROUP, "w1", {keys.jobs: ">"})
        private_redis_server.stop()
        with pytest.raises(RedisConnectionError):  # the test's own timeout if it never ends
            await Committer(redis, keys, retry_seconds=1.0).commit(Completion(entry))
        assert sent >= 3  # sent again while the bound lasted (0.1, 0.2, 0.4 s pauses...)
    finally:
        private_redis_server.start()
        await redis.aclose()
