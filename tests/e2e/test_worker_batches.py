"""Batching and error notifications across real `retrieve receiver` / `retrieve worker`
processes sharing one Redis, with a real sink on loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_core.job import Job
from retrieve_core.notifications import read_attempts
from tests.support.fleet import (
    KEYS,
    SINK_PATH,
    Ledger,
    Receiver,
    Worker,
    send_load,
    write_fleet_config,
)
from tests.support.processes import Sink
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BATCH = {"maxRecords": 20, "maxWaitMs": 200}


def batched_records(sink: Sink) -> list[dict[str, Any]]:
    return [
        record
        for request in sink.received
        if request.path == SINK_PATH and isinstance(request.body, list)
        for record in request.body
    ]


async def dead_seqs(redis: Redis) -> set[int]:
    entries: Any = await redis.xrange(KEYS.dead_letters)
    return {int(Job.decode(fields).payload["seq"]) for _, fields in entries}


async def wait_all_settled(ledger: Ledger, sink: Sink, redis: Redis, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        delivered = {int(r["seq"]) for r in batched_records(sink)}
        if not ledger.accepted - delivered - await dead_seqs(redis):
            return
        await asyncio.sleep(0.2)
    delivered = {int(r["seq"]) for r in batched_records(sink)}
    missing = ledger.accepted - delivered - await dead_seqs(redis)
    raise AssertionError(f"{len(missing)} accepted webhooks neither delivered nor dead-lettered")


async def test_a_worker_sigkilled_mid_batch_loses_nothing_and_batches_stay_bounded(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = write_fleet_config(
        tmp_path / "config",
        sink.url,
        integration={
            "destinations": [
                {
                    "name": "sink",
                    "http": {"url": f"{sink.url}{SINK_PATH}", "timeoutSeconds": 5, "batch": BATCH},
                }
            ]
        },
    )
    sink.delay = 0.3  # batches are in flight (records taken, nothing acked) when the kill comes
    receiver = Receiver(config, private_redis_server.url).start()
    workers = [Worker(config, private_redis_server.url).start() for _ in range(2)]
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        load = asyncio.create_task(send_load([receiver.url], 400, ledger, rate=200))
        await asyncio.wait_for(sink.arrived.wait(), 30)
        await asyncio.sleep(0.5)
        workers[0].kill()  # SIGKILL: its open and in-flight batches die with it
        await load
        await asyncio.to_thread(workers[0].start)
        sink.delay = 0.0
        await wait_all_settled(ledger, sink, redis, within=90)

        assert ledger.unexpected == []
        assert len(ledger.accepted) == 400
        requests = [r for r in sink.received if r.path == SINK_PATH]
        assert all(isinstance(r.body, list) and 1 <= len(r.body) <= 20 for r in requests)
        assert len(requests) < 400  # batched
        records = batched_records(sink)
        by_id = Counter(r["_retrieve_id"] for r in records)
        by_seq = {int(r["seq"]): r["_retrieve_id"] for r in records}
        # A record delivered twice (its batch was in flight at the kill) keeps its id.
        assert len(by_id) == len(by_seq) == 400
        assert await redis.xlen(KEYS.dead_letters) == 0
        await _eventually_empty(redis)
    finally:
        for worker in workers:
            worker.stop()
        receiver.process.stop()
        await redis.aclose()


async def _eventually_empty(redis: Redis, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await redis.xlen(KEYS.jobs) == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("jobs left in the stream")


async def worker_dead_letters(worker: Worker) -> float:
    url = f"http://127.0.0.1:{worker.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        text = await answer.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("retrieve_worker_dead_letters_total{")
    )


async def test_dead_letters_of_two_worker_processes_are_aggregated_into_one_message(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = write_fleet_config(
        tmp_path / "config",
        sink.url,
        integration={
            # Nothing listens on port 9: every job is dead-lettered at its first attempt.
            "destinations": [{"name": "down", "http": {"url": "http://127.0.0.1:9/x"}}],
            "retry": {"maxAttempts": 1},
        },
        application={
            "notifications": [
                {
                    "name": "ops",
                    "url": f"{sink.url}/hook",
                    "format": "json",
                    "events": ["deadLetter"],
                    "minIntervalSeconds": 300,
                }
            ]
        },
    )
    receiver = Receiver(config, private_redis_server.url).start()
    workers = [Worker(config, private_redis_server.url, concurrency=2).start() for _ in range(2)]
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        await send_load([receiver.url], 60, ledger, rate=60, concurrency=4)
        assert len(ledger.accepted) == 60
        gate = KEYS.notify_gate_prefix + "ops:FLEET1:deadLetter"

        async def told() -> int:
            attempts = await read_attempts(redis, KEYS)
            waiting = int(await redis.hget(gate, "count") or 0)
            return sum(a.count for a in attempts) + waiting

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await redis.xlen(KEYS.dead_letters) == 60 and await told() == 60:
                break
            await asyncio.sleep(0.2)

        assert await told() == 60
        assert [await worker_dead_letters(w) > 0 for w in workers] == [True, True]
        messages = [r for r in sink.received if r.path == "/hook"]
        assert len(messages) == 1  # the others wait in the gate for minIntervalSeconds
        assert messages[0].body["event"] == "deadLetter"
        assert messages[0].body["integrationId"] == "FLEET1"
        due = await redis.zscore(KEYS.notify_due, "ops:FLEET1:deadLetter")
        if due is not None:  # events after the first message: told one interval later
            assert due > time.time() + 200
    finally:
        for worker in workers:
            worker.stop()
        receiver.process.stop()
        await redis.aclose()
