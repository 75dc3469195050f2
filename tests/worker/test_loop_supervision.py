"""The worker's loops under the supervisor, against a Redis of the test's own: killed and
restarted on the same port, or refusing the loop's command (ACL). The loop goes down, `/readyz`
says so, one line is logged each way, and jobs flow again once Redis is back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from retrieve_core.config import SecretStore
from retrieve_core.logstore import LogStatus
from retrieve_core.provider import ConfigProvider
from retrieve_core.supervision import Backoff
from retrieve_worker import Worker
from retrieve_worker.admin import init_admin_app
from tests.support.redis_server import RedisServer

from .conftest import Harness, make_app

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

FAST = Backoff(initial=0.05, maximum=0.2, jitter=0.5, healthy_after=60.0)
WORKER_USER, WORKER_PASSWORD = "retrieve-worker", "worker-secret"

HarnessOn = Callable[[str], Harness]


@pytest.fixture
async def harness_on(
    private_redis_server: RedisServer, sink: Sink
) -> AsyncIterator[Callable[[str], Harness]]:
    """A harness whose worker talks to the test's own Redis at the URL given."""
    made: list[Harness] = []
    clients: list[Redis] = []

    def make(worker_url: str) -> Harness:
        app = make_app(
            f"app-{uuid.uuid4().hex[:8]}",
            {"flow": {"destinations": [{"name": "sink", "http": {"url": sink.url_for("/flow")}}]}},
        )
        provider = ConfigProvider()
        provider.update((app,), SecretStore())
        client = Redis.from_url(private_redis_server.url)
        clients.append(client)
        harness = Harness(client, worker_url, provider, app)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            await harness.stop_workers()
        for client in clients:
            await client.aclose()


async def readiness(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    answer = await client.get("/readyz")
    return answer.status, await answer.json()


def loop_sample(worker: Worker, metric: str, loop: str) -> float | None:
    return worker.registry.get_sample_value(f"retrieve_worker_{metric}", {"loop": loop})


def lines(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> list[str]:
    """The messages at `level` or above that contain `text`."""
    return [r.getMessage() for r in caplog.records if r.levelno >= level and text in r.getMessage()]


async def test_a_worker_whose_redis_is_killed_reports_its_loops_down_then_recovers_and_jobs_flow(
    harness_on: HarnessOn,
    private_redis_server: RedisServer,
    aiohttp_client: AiohttpClient,
    sink: Sink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness_on(private_redis_server.url)
    caplog.set_level(logging.INFO, logger="retrieve_core.supervision")
    worker = await h.start_worker(loop_backoff=FAST)
    admin = await aiohttp_client(init_admin_app(worker))
    read = f"read {h.app.namespace}/{h.app.name}"
    before = await h.enqueue("flow", {"n": 1})
    await h.wait_status(before.id, LogStatus.SUCCEEDED)
    assert (await readiness(admin))[0] == 200

    private_redis_server.stop(kill=True)

    async def read_loop_down() -> bool:
        return read in worker.down()

    await h.eventually(read_loop_down)
    status, body = await readiness(admin)
    assert status == 503
    assert body["ready"] is False
    assert loop_sample(worker, "loop_up", read) == 0.0

    await asyncio.to_thread(private_redis_server.start)  # same port, same data

    async def ready_again() -> bool:
        return (await readiness(admin))[0] == 200

    await h.eventually(ready_again)
    assert worker.down() == []
    assert loop_sample(worker, "loop_up", read) == 1.0
    assert (loop_sample(worker, "loop_restarts_total", read) or 0) >= 1
    assert (loop_sample(worker, "loop_last_error_timestamp_seconds", read) or 0) > 0
    h.redis = Redis.from_url(private_redis_server.url)  # the test's own client, reconnected
    try:
        after = await h.enqueue("flow", {"n": 2})
        await h.wait_status(after.id, LogStatus.SUCCEEDED)
    finally:
        await h.redis.aclose()
    assert sorted(b["n"] for b in sink.bodies("/flow")) == [1, 2]
    # One line when the read loop went down and one when it came back, however many retries.
    assert len(lines(caplog, f"loop {read} failed")) == 1
    assert lines(caplog, f"loop {read} recovered") == [f"loop {read} recovered"]


async def test_a_loop_refused_by_redis_backs_off_logs_once_and_keeps_the_worker_unready(
    harness_on: HarnessOn,
    private_redis_server: RedisServer,
    aiohttp_client: AiohttpClient,
    sink: Sink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """XREADGROUP answered with an error (here NOPERM) while Redis itself answers: the read loop
    is restarted with growing delays, not retried ten times a second with a line each time."""
    admin_redis = Redis.from_url(private_redis_server.url)
    await admin_redis.acl_setuser(
        WORKER_USER,
        enabled=True,
        passwords=[f"+{WORKER_PASSWORD}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
    )
    port = private_redis_server.port
    h = harness_on(f"redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{port}/0")
    caplog.set_level(logging.DEBUG, logger="retrieve_core.supervision")
    worker = await h.start_worker(loop_backoff=FAST)
    admin = await aiohttp_client(init_admin_app(worker))
    read = f"read {h.app.namespace}/{h.app.name}"
    try:
        await admin_redis.acl_setuser(WORKER_USER, enabled=True, commands=["-xreadgroup"])

        async def restarted_four_times() -> bool:
            return (loop_sample(worker, "loop_restarts_total", read) or 0) >= 4

        await h.eventually(restarted_four_times)
        status, body = await readiness(admin)
        assert status == 503
        assert body == {"ready": False, "reason": f"loops down: {read}"}
        failures = lines(caplog, f"loop {read} failed")
        assert len(failures) == 1
        assert "NoPermissionError" in failures[0]
        assert len(lines(caplog, f"loop {read} failed again", logging.DEBUG)) >= 3  # DEBUG only
        assert worker.supervisor.loops[read].retry_in <= FAST.maximum

        await admin_redis.acl_setuser(WORKER_USER, enabled=True, commands=["+xreadgroup"])

        async def ready_again() -> bool:
            return (await readiness(admin))[0] == 200

        await h.eventually(ready_again)
        job = await h.enqueue("flow", {"n": 1})
        await h.wait_status(job.id, LogStatus.SUCCEEDED)
        assert sink.bodies("/flow") == [{"n": 1}]
        assert lines(caplog, f"loop {read} recovered") == [f"loop {read} recovered"]
    finally:
        await admin_redis.aclose()


async def test_a_redis_error_while_recreating_a_deleted_stream_does_not_end_the_read_loop(
    harness_on: HarnessOn, private_redis_server: RedisServer, sink: Sink
) -> None:
    """The stream deleted under the worker (NOGROUP), and re-creating its group refused once:
    the read loop is restarted until it can, and jobs enqueued afterwards are delivered."""
    admin_redis = Redis.from_url(private_redis_server.url)
    await admin_redis.acl_setuser(
        WORKER_USER,
        enabled=True,
        passwords=[f"+{WORKER_PASSWORD}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
    )
    port = private_redis_server.port
    h = harness_on(f"redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{port}/0")
    worker = await h.start_worker(loop_backoff=FAST)
    read = f"read {h.app.namespace}/{h.app.name}"
    try:
        await admin_redis.acl_setuser(WORKER_USER, enabled=True, commands=["-xgroup"])
        await admin_redis.delete(h.keys.jobs)

        async def read_loop_down() -> bool:
            return read in worker.down()

        await h.eventually(read_loop_down)
        await admin_redis.acl_setuser(WORKER_USER, enabled=True, commands=["+xgroup"])

        async def recovered() -> bool:
            return worker.down() == [] and bool(await h.redis.exists(h.keys.jobs))

        await h.eventually(recovered)
        job = await h.enqueue("flow", {"n": 1})
        await h.wait_status(job.id, LogStatus.SUCCEEDED)
        assert sink.bodies("/flow") == [{"n": 1}]
    finally:
        await admin_redis.aclose()


async def test_the_admin_port_refuses_connections_over_its_cap_and_closes_silent_ones(
    harness_on: HarnessOn, private_redis_server: RedisServer, unused_tcp_port: int
) -> None:
    from retrieve_worker.admin import serve_admin

    h = harness_on(private_redis_server.url)
    worker = Worker(h.settings(admin_max_connections=2, admin_header_timeout=3), h.provider)
    app = init_admin_app(worker)
    serving = asyncio.create_task(serve_admin(app, "127.0.0.1", unused_tcp_port))
    opened: list[asyncio.StreamWriter] = []
    try:

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
            opened.append(writer)
            return reader, writer

        async def healthz_answers() -> bool:
            try:
                reader, writer = await connect()
            except OSError:
                return False
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return (await reader.read()).startswith(b"HTTP/1.1 200")

        await h.eventually(healthz_answers)
        # They hold the two places for the 3 s head deadline: the next connect is over the cap
        # unless the machine stalls that long in between.
        silent = [await connect() for _ in range(2)]
        over_reader, _ = await connect()

        refused = await asyncio.wait_for(over_reader.read(), 10)
        assert refused.startswith(b"HTTP/1.1 503")
        assert b"Too many connections" in refused
        # The silent ones never send a request head: each is closed at its deadline.
        for reader, _ in silent:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        assert await healthz_answers()  # their places are free again
    finally:
        for writer in opened:
            writer.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
