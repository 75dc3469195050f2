"""`retrieve logs|replay` and `kubectl retrieve logs` on a real Redis Cluster, by its URL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.redis_cluster import ClusterServers
from retrieve_core.enqueue import Delivery, Enqueuer
from retrieve_core.job import Job, new_job_id
from retrieve_core.keys import AppKeys
from retrieve_core.redisclient import connect_redis

pytestmark = pytest.mark.redis
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHOPIFY = "507f1f77bcf86cd799439011"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name(script)
    return subprocess.run(
        [str(command), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_command_line_reads_and_replays_on_a_cluster(
    redis_cluster: ClusterServers,
) -> None:
    keys = AppKeys("shop", "yourapp")
    redis = connect_redis(redis_cluster.url)
    try:
        await redis.delete(keys.log_index, keys.dead_letters, keys.jobs)
        job_id = f"job-{time.time_ns()}"
        await Enqueuer(redis).store(
            keys,
            Delivery(job_id, b'{"id": "%b"}' % job_id.encode(), SHOPIFY, time.time(),
                     "203.0.113.9", "json", b"{}", 100, 600),
        )  # fmt: skip
        dead = Job(id=new_job_id(), integration_id=SHOPIFY, application="yourapp",
                   namespace="shop", received_at=time.time(), source_ip="203.0.113.9",
                   format="json", headers={}, payload={"n": 1})  # fmt: skip
        fields: dict[Any, Any] = {**dead.encode(), "integration_id": SHOPIFY}
        await redis.xadd(keys.dead_letters, fields)
        common = ["--config-dir", str(EXAMPLES), "--redis-url", redis_cluster.url]

        logs = await asyncio.to_thread(run, "retrieve", "logs", *common, "--json")
        assert logs.returncode == 0, logs.stderr
        assert [json.loads(line)["id"] for line in logs.stdout.splitlines()] == [job_id]

        plugin = await asyncio.to_thread(
            run, "kubectl-retrieve", "logs", "shopify-orders", *common, "--json"
        )
        assert plugin.returncode == 0, plugin.stderr
        assert job_id in plugin.stdout

        replay = await asyncio.to_thread(run, "retrieve", "replay", "shopify-orders", *common)
        assert replay.returncode == 0, replay.stderr
        assert await redis.xlen(keys.dead_letters) == 0
        assert await redis.xlen(keys.jobs) == 2
    finally:
        await redis.aclose()
