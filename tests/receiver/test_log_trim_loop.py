"""The receiver's log trim runs under the loop supervisor: with its Redis killed it goes down
(one log line, `retrieve_receiver_loop_up` 0), and comes back when Redis does (one line)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from retrieve_receiver import app as receiver_app
from retrieve_receiver.metrics import ReceiverMetrics
from tests.support.redis_server import RedisServer

from .conftest import ClientFactory, make_app, make_integration, make_provider

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LOOP = {"loop": "log-trim"}


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_the_log_trim_loop_goes_down_with_redis_and_recovers_with_one_line_each_way(
    receiver_client: ClientFactory,
    private_redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(receiver_app, "LOG_TRIM_INTERVAL", 0.05)
    caplog.set_level(logging.INFO, logger="retrieve_core.supervision")
    metrics = ReceiverMetrics()
    provider = make_provider(make_app(integrations=[make_integration("TRIM1")]))
    await receiver_client(provider, redis_url=private_redis_server.url, metrics=metrics)

    def up() -> float | None:
        return metrics.registry.get_sample_value("retrieve_receiver_loop_up", LOOP)

    def restarts() -> float:
        return metrics.registry.get_sample_value("retrieve_receiver_loop_restarts_total", LOOP) or 0

    assert up() == 1.0
    private_redis_server.stop(kill=True)

    async def down_and_retried() -> bool:
        return up() == 0.0 and restarts() >= 2

    await eventually(down_and_retried)
    await asyncio.to_thread(private_redis_server.start)

    async def recovered() -> bool:
        return up() == 1.0

    await eventually(recovered)
    messages = [r.getMessage() for r in caplog.records if "loop log-trim" in r.getMessage()]
    assert len(messages) == 2
    assert messages[0].startswith("loop log-trim failed: RedisError: could not trim the logs of")
    assert messages[1] == "loop log-trim recovered"
