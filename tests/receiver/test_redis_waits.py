"""How long a request waits for Redis: a stalled Redis gives a prompt answer, never a hung
request (`RETRIEVE_REDIS_TIMEOUT_SECONDS`, `RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS`)."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.receiver.conftest import (
    ORDER_ID,
    ClientFactory,
    make_app,
    make_integration,
    make_provider,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

STALL_MS = 20_000
"""Writes wait this long: a request that waited for them would outlive the client's patience."""
PATIENCE = aiohttp.ClientTimeout(total=8)


async def test_an_enqueue_that_redis_does_not_answer_is_a_503_after_the_redis_timeout(
    receiver_client: ClientFactory, private_redis_server: RedisServer
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(
        make_provider(app), redis_url=private_redis_server.url, redis_timeout=0.5
    )
    assert (await client.post(f"/integration/{ORDER_ID}", json={"n": 0})).status == 200
    redis = Redis.from_url(private_redis_server.url)
    try:
        await redis.client_pause(STALL_MS, all=False)
        stalled = await client.post(f"/integration/{ORDER_ID}", json={"n": 1}, timeout=PATIENCE)
        assert stalled.status == 503
        assert await stalled.json() == {"result": False, "error": "Queue unavailable, retry later"}
    finally:
        await redis.client_unpause()
        await redis.aclose()


async def test_a_refused_request_is_answered_while_its_log_record_waits_for_redis(
    receiver_client: ClientFactory,
    private_redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(allowed=["203.0.113.0"], integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(
        make_provider(app),
        source="127.0.0.3",
        redis_url=private_redis_server.url,
        redis_timeout=30,  # only the log write's own bound can end the wait
        log_write_timeout=0.5,
    )
    redis = Redis.from_url(private_redis_server.url)
    try:
        await redis.client_pause(STALL_MS, all=False)
        with caplog.at_level(logging.WARNING, logger="retrieve_receiver"):
            refused = await client.post(f"/integration/{ORDER_ID}", json={"n": 1}, timeout=PATIENCE)
        assert refused.status == 403
        dropped = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("log record of a 403 answer not stored" in r.getMessage() for r in dropped)
    finally:
        await redis.client_unpause()
        await redis.aclose()
