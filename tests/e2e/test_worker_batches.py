"""Batching and error notifications across real `retrieve receiver` / `retrieve worker`
processes sharing one Redis, with a real sink on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_cli.sink import Sink, SinkRequest
from retrieve_core.job import Job
from retrieve_core.notifications import read_attempts
from tests.support.fleet import (
    APP,
    KEYS,
    NAMESPACE,
    SINK_PATH,
    Ledger,
    Receiver,
    Worker,
    send_load,
    write_fleet_config,
)
from tests.support.ports import free_port
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


async def test_a_destination_failing_mid_burst_gets_every_record_once_retried_none_dead(
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
            ],
            "retry": {"maxAttempts": 20, "backoffSeconds": 0.2, "maxBackoffSeconds": 0.5},
        },
    )
    failed_enough = asyncio.Event()

    def count_failures(request: SinkRequest) -> None:
        if sum(1 for r in sink.requests if r.status >= 300) >= 3:
            failed_enough.set()

    sink.on_request = count_failures
    receiver = Receiver(config, private_redis_server.url).start()
    worker = Worker(config, private_redis_server.url).start()
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        load = asyncio.create_task(send_load([receiver.url], 300, ledger, rate=150))
        await asyncio.wait_for(sink.arrived.wait(), 30)
        sink.status = 503  # the destination fails while batches are being gathered and sent
        await asyncio.wait_for(failed_enough.wait(), 30)
        sink.status = 200
        await load
        await wait_all_settled(ledger, sink, redis, within=90)

        assert ledger.unexpected == []
        assert len(ledger.accepted) == 300
        assert await redis.xlen(KEYS.dead_letters) == 0
        requests = sink.requests_to(SINK_PATH)
        assert all(isinstance(r.body, list) and 1 <= len(r.body) <= 20 for r in requests)
        # Each failed batch went again, unchanged, with its Idempotency-Key, and got through.
        delivered = {r.headers["Idempotency-Key"]: r.body for r in sink.received}
        failed = [r for r in requests if r.status >= 300]
        assert len(failed) >= 3
        assert all(delivered.get(r.headers["Idempotency-Key"]) == r.body for r in failed)
        # Only the batches answered 2xx delivered: each record exactly once.
        seqs = Counter(int(r["seq"]) for r in batched_records(sink))
        assert set(seqs) == ledger.accepted
        assert set(seqs.values()) == {1}
        await _eventually_empty(redis)
    finally:
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


async def worker_metric(worker: Worker, prefix: str) -> float:
    """The sum of the samples whose line starts with `prefix` on the worker's /metrics."""
    url = f"http://127.0.0.1:{worker.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        text = await answer.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def worker_dead_letters(worker: Worker) -> float:
    return await worker_metric(worker, "retrieve_worker_dead_letters_total{")


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

        async def settled(total: int) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if await redis.xlen(KEYS.dead_letters) == total and await told() == total:
                    break
                await asyncio.sleep(0.2)

        total = 60
        await settled(total)
        # Both workers must have dead-lettered some (the gate is shared, not per process);
        # which reader Redis hands entries to is its choice, so a few more go out if needed.
        for _ in range(5):
            if all([await worker_dead_letters(w) > 0 for w in workers]):
                break
            await send_load([receiver.url], 20, ledger, rate=20, concurrency=2, start=total)
            total += 20
            await settled(total)

        assert len(ledger.accepted) == total
        assert await told() == total
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


async def test_a_notification_target_that_is_down_is_recorded_and_shown_while_jobs_go_on(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}/hook"
    broken = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "broken", "namespace": NAMESPACE},
        "spec": {
            "application": APP,
            "integrationId": "BROKEN1",
            # Nothing listens on port 9: the job is dead-lettered at its first attempt.
            "destinations": [{"name": "down", "http": {"url": "http://127.0.0.1:9/x"}}],
            "retry": {"maxAttempts": 1},
        },
    }
    config = write_fleet_config(
        tmp_path / "config",
        sink.url,
        application={
            "notifications": [
                {"name": "ops", "url": nothing_listens, "format": "json", "events": ["deadLetter"]}
            ]
        },
        extra=[broken],
    )
    receiver = Receiver(config, private_redis_server.url).start()
    worker = Worker(config, private_redis_server.url).start()
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{receiver.url}/integration/BROKEN1"
            async with session.post(url, json={"order": 1}) as answer:
                assert answer.status == 200
        await send_load([receiver.url], 100, ledger, rate=100)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            attempts = await read_attempts(redis, KEYS)
            delivered = {int(r.body["seq"]) for r in sink.received if r.path == SINK_PATH}
            if attempts and delivered == ledger.accepted:
                break
            await asyncio.sleep(0.2)

        assert len(ledger.accepted) == 100
        assert {int(r.body["seq"]) for r in sink.received if r.path == SINK_PATH} == ledger.accepted
        [attempt] = await read_attempts(redis, KEYS)
        assert (attempt.result, attempt.http_status, attempt.attempts) == ("failed", None, 3)
        assert attempt.error.startswith("unreachable")
        assert (attempt.event, attempt.integration_id) == ("deadLetter", "BROKEN1")
        failed = 'retrieve_worker_notifications_total{application="faults/fleet",'
        assert await worker_metric(worker, failed + 'notification="ops",result="failed"}') == 1

        plugin = Path(sys.executable).with_name("kubectl-retrieve")
        shown = await asyncio.to_thread(
            subprocess.run,
            [str(plugin), "logs", "broken", "--config-dir", str(config), "--redis-url",
             private_redis_server.url, "--notifications", "--status", "failed"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        [line] = shown.stdout.splitlines()
        assert line.split()[2:6] == ["ops", "deadLetter", "failed", "-"]
        assert "unreachable" in line
    finally:
        worker.stop()
        receiver.process.stop()
        await redis.aclose()
