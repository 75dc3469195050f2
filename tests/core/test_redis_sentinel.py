"""A real Sentinel setup (one primary, one replica, three sentinels): receiver and worker
follow the primary the sentinels name, across a failover."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient

from harness.redis_cluster import SentinelServers
from retrieve_cli.sink import Sink
from retrieve_core.logstore import LogStatus, LogStore
from retrieve_core.redisclient import SentinelPrimary, connect_redis
from retrieve_receiver.admin import init_admin_app
from retrieve_receiver.app import init_app
from retrieve_receiver.settings import ReceiverSettings
from retrieve_worker import Worker, WorkerSettings
from tests.receiver.conftest import make_app, make_integration, make_provider

pytestmark = pytest.mark.redis
WAIT = 30.0
MAX_ATTEMPTS = 200


async def test_receiver_and_worker_follow_the_new_primary_after_a_sentinel_failover(
    redis_sentinel: SentinelServers, aiohttp_client: AiohttpClient, sink: Sink
) -> None:
    destination = {"name": "sink", "http": {"url": f"{sink.url}/orders"}}
    app = make_app(
        "plain", integrations=[make_integration("ORDERS", "plain", destinations=[destination])]
    )
    durable_destination = {"name": "sink", "http": {"url": f"{sink.url}/durable"}}
    durable = make_app(
        "durable",
        namespace=app.namespace,
        integrations=[make_integration("DURABLE", "durable", destinations=[durable_destination])],
        redis={"durability": {"replicas": 1, "timeoutMs": 500}},
    )
    provider = make_provider(app, durable)
    settings = ReceiverSettings(redis_url=redis_sentinel.url, redis_timeout=1.0, dev_mode=True)
    receiver = await aiohttp_client(init_app(settings, provider))
    admin = await aiohttp_client(init_admin_app(settings, provider))
    worker = Worker(
        WorkerSettings(redis_url=redis_sentinel.url, consumer="w1", block_ms=200,
                       shutdown_timeout_seconds=5),
        provider,
    )  # fmt: skip
    assert isinstance(worker.redis, SentinelPrimary)
    task = asyncio.create_task(worker.run())
    try:
        before = await asyncio.gather(*(_post(receiver, n) for n in range(10)))
        assert before == [200] * 10
        # With durability, 200 means the replica confirmed the job: it survives the failover.
        # (A 503 means it did not confirm in time on this busy machine: the sender retries.)
        confirmed = await asyncio.gather(*(_post_until_200(receiver, n) for n in range(10)))
        assert confirmed == [True] * 10
        await sink.wait_for(10, "/orders", timeout=WAIT)

        new_primary = await asyncio.to_thread(redis_sentinel.kill_primary)

        # The first requests may meet the dead primary's pooled connections (answered 503,
        # the sender retries): bounded, never a hang.
        for attempt in range(MAX_ATTEMPTS):
            if await _post(receiver, 100 + attempt) == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the receiver never wrote to the new primary")
        after = await asyncio.gather(*(_post(receiver, 1000 + n) for n in range(10)))
        assert after == [200] * 10
        await sink.wait_for(10 + 1 + 10, "/orders", timeout=WAIT)
        await sink.wait_for(10, "/durable", timeout=WAIT)
        # The old primary is gone: no replica left to confirm, so the durable app refuses.
        assert await _post(receiver, 2000, "DURABLE") == 503
        ready = await admin.get("/readyz")
        assert ready.status == 200, await ready.text()

        # On the promoted replica: the 11+ jobs accepted after the failover, delivered and
        # recorded there, and every durable job (its queued record was confirmed by WAIT; the
        # outcomes of jobs before the failover may be lost with the old primary: no WAIT there).
        direct = connect_redis(f"redis://127.0.0.1:{new_primary}/0")
        try:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                records = await LogStore(direct, app.keys).query(limit=100)
                if len([r for r in records if r.status is LogStatus.SUCCEEDED]) >= 11:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"not all recorded as succeeded: {records}")
            durable_records = await LogStore(direct, durable.keys).query(limit=100)
            assert len(durable_records) >= 10
        finally:
            await direct.aclose()
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT)


async def _post_until_200(client: TestClient[Request, Application], n: int) -> bool:
    for _ in range(20):
        if await _post(client, n, "DURABLE") == 200:
            return True
    return False


async def _post(
    client: TestClient[Request, Application], n: int, integration: str = "ORDERS"
) -> int:
    host = "webhook-durable.example.com" if integration == "DURABLE" else "webhook-plain.x"
    response = await client.post(
        f"/integration/{integration}", json={"n": n, "at": time.time()}, headers={"Host": host}
    )
    await response.read()
    return response.status
