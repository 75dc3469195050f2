"""`run_receiver`: real sockets, a sender on another loopback address, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_receiver.serving import run_receiver
from retrieve_receiver.settings import ReceiverSettings
from tests.receiver.conftest import make_app, make_integration, make_provider
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def wait_until_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_serves_webhooks_and_admin_until_cancelled(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    app = make_app(allowed=["127.0.0.2"], integrations=[make_integration("ABC123")])
    port, admin_port = free_port(), free_port()
    task = asyncio.create_task(
        run_receiver(
            ReceiverSettings(redis_url=redis_server.url),
            make_provider(app),
            "127.0.0.1",
            port,
            "127.0.0.1",
            admin_port,
        )
    )
    try:
        await wait_until_listening(port)
        await wait_until_listening(admin_port)
        url = f"http://127.0.0.1:{port}/integration/ABC123"
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        ) as allowed:
            response = await allowed.post(url, json={"a": 1})
            assert response.status == 200
        async with aiohttp.ClientSession() as other:
            response = await other.post(url, json={"a": 1})
            assert response.status == 403
            assert "(127.0.0.1)" in (await response.json())["error"]
            ready = await other.get(f"http://127.0.0.1:{admin_port}/readyz")
            assert ready.status == 200
        assert await redis_client.xlen(app.keys.jobs) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_in_flight_request_finishes_on_shutdown(private_redis_server: RedisServer) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    port, admin_port = free_port(), free_port()
    task = asyncio.create_task(
        run_receiver(
            ReceiverSettings(redis_url=private_redis_server.url, redis_timeout=10),
            make_provider(app),
            "127.0.0.1",
            port,
            "127.0.0.1",
            admin_port,
        )
    )
    await wait_until_listening(port)
    redis = Redis.from_url(private_redis_server.url)
    try:
        async with aiohttp.ClientSession() as session:
            # Writes stall: the request is in the handler, waiting for Redis, when shutdown begins.
            await redis.client_pause(10_000, all=False)
            request = asyncio.create_task(
                session.post(f"http://127.0.0.1:{port}/integration/ABC123", json={"n": 1})
            )
            deadline = time.monotonic() + 10
            while int((await redis.info("clients"))["blocked_clients"]) < 1:
                assert time.monotonic() < deadline, "the request never reached Redis"
                await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.sleep(0.3)  # shutdown under way, the request still waiting
            await redis.client_unpause()
            response = await request
            assert response.status == 200
            assert await response.json() == {"result": True, "error": ""}
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await redis.xlen(app.keys.jobs) == 1
    finally:
        await redis.aclose()
