"""Dedupe holds across two `retrieve receiver` processes sharing one Redis, and a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_core.logstore import LogStore
from tests.support.fleet import DELIVERY_HEADER, INTEGRATION, KEYS, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

OK = {"result": True, "error": ""}


async def post(session: aiohttp.ClientSession, url: str, delivery_id: str) -> tuple[int, object]:
    async with session.post(
        f"{url}/integration/{INTEGRATION}",
        data=json.dumps({"order": delivery_id}).encode(),
        headers={"Content-Type": "application/json", DELIVERY_HEADER: delivery_id},
    ) as answer:
        return answer.status, await answer.json()


async def test_same_delivery_to_two_receiver_processes_is_enqueued_once(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    # No worker runs: the stream keeps every job that was enqueued.
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    first = Receiver(config, private_redis_server.url).start()
    second = Receiver(config, private_redis_server.url).start()
    redis = Redis.from_url(private_redis_server.url)
    try:
        # One connection a request: a restarted receiver leaves no stale keep-alive behind.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            concurrent = await asyncio.gather(
                *(post(session, r.url, "delivery-1") for r in (first, second, first, second))
            )
            assert concurrent == [(200, OK)] * 4
            assert await redis.xlen(KEYS.jobs) == 1

            second.restart()
            again = [await post(session, r.url, "delivery-1") for r in (second, first)]
            assert again == [(200, OK)] * 2
            assert await redis.xlen(KEYS.jobs) == 1

            assert await post(session, second.url, "delivery-2") == (200, OK)
            assert await redis.xlen(KEYS.jobs) == 2

        records = await LogStore(redis, KEYS).query(limit=100)
        statuses = sorted(r.status.value for r in records)
        assert statuses == ["duplicate"] * 5 + ["queued"] * 2
        assert all(r.http_status == 200 for r in records)
    finally:
        await redis.aclose()
        first.process.stop()
        second.process.stop()
