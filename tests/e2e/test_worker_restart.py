"""A `retrieve worker` process SIGKILLed with jobs in flight and restarted under the same consumer
name (a container restarted in its pod keeps `POD_NAME`; outside Kubernetes, `--consumer NAME`)
takes its own pending jobs back at once.

`claim_idle_ms` is ten minutes here, so the other consumers' path (XAUTOCLAIM of idle entries)
cannot be what delivers them within the test's bounds: only the restarted worker reading its own
pending entries can.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from retrieve_core.job import Job, new_job_id
from retrieve_core.keys import CONSUMER_GROUP
from tests.support.fleet import APP, INTEGRATION, KEYS, NAMESPACE, SINK_PATH, write_fleet_config
from tests.support.ports import free_port
from tests.support.processes import RetrieveProcess
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

JOBS = 5
POD_NAME = "fleet-worker-7d9f-abcde"
STALL_SECONDS = 10.0
"""How long the sink holds the first worker's requests: it is killed while they wait."""


def job(seq: int) -> Job:
    return Job(
        id=new_job_id(),
        integration_id=INTEGRATION,
        application=APP,
        namespace=NAMESPACE,
        received_at=time.time(),
        source_ip="127.0.0.1",
        format="json",
        headers={"Content-Type": "application/json"},
        payload={"seq": seq},
    )


async def eventually(what: str, check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


def scrape(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
    return text


@pytest.mark.parametrize("named_by", ["POD_NAME", "--consumer"])
async def test_a_worker_restarted_under_its_name_takes_back_its_jobs_without_waiting(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink, named_by: str
) -> None:
    config = write_fleet_config(tmp_path / "config", sink.url)
    admin_port = free_port()
    args = ["worker", "--config-dir", str(config), "--redis-url", private_redis_server.url]
    args += ["--host", "127.0.0.1", "--admin-port", str(admin_port), "--concurrency", "8"]
    env = {"RETRIEVE_CLAIM_IDLE_SECONDS": "600", "POD_NAME": ""}
    if named_by == "POD_NAME":
        env["POD_NAME"] = POD_NAME
    else:  # without it, each process would be host-pid: a new name after every restart
        args += ["--consumer", POD_NAME]
    redis = Redis.from_url(private_redis_server.url, decode_responses=True)
    first = RetrieveProcess(args, env).start()
    second: RetrieveProcess | None = None
    try:
        await asyncio.to_thread(first.wait_http, f"http://127.0.0.1:{admin_port}/readyz")
        sink.delays[SINK_PATH] = STALL_SECONDS
        for seq in range(JOBS):
            await redis.xadd(KEYS.jobs, job(seq).encode())  # type: ignore[arg-type]

        async def all_in_flight() -> bool:
            return len(sink.requests_to(SINK_PATH)) >= JOBS

        await eventually("the first worker's requests", all_in_flight)
        first.kill()  # SIGKILL while the sink holds every request: nothing was acked
        sink.delays[SINK_PATH] = 0.0
        pending = await redis.xpending_range(KEYS.jobs, CONSUMER_GROUP, "-", "+", 100)
        assert {p["consumer"] for p in pending} == {POD_NAME}
        assert len(pending) == JOBS

        second = RetrieveProcess(args, env).start()
        await sink.wait_for(JOBS, SINK_PATH, timeout=60)  # far less than the 600 s idle time

        assert sorted(body["seq"] for body in sink.bodies(SINK_PATH)) == list(range(JOBS))
        metrics = await asyncio.to_thread(scrape, admin_port)
        taken_back = f'retrieve_worker_taken_back_total{{application="{NAMESPACE}/{APP}"}} 5.0'
        assert taken_back in metrics
        assert 'retrieve_worker_reclaimed_total{application="faults/fleet"}' not in metrics

        async def all_acked() -> bool:
            summary = await redis.xpending(KEYS.jobs, CONSUMER_GROUP)
            return int(summary["pending"]) == 0

        await eventually("every job acked", all_acked)
    finally:
        first.kill()
        if second is not None:
            second.stop()
        await redis.aclose()
