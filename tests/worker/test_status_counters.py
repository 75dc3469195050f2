"""The counters the operator reads into Integration status, written by a real worker in a real
Redis: failed jobs, dead letters per integration (kept by the outcome script and by replay)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from retrieve_cli.sink import Sink
from retrieve_core.logstore import LogStatus
from retrieve_operator.status_counters import read_counts
from retrieve_worker import replay_dead_letters
from retrieve_worker.consumer import AppConsumer
from retrieve_worker.worker import Worker

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]
NO_WAIT = {"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0}


def _spec(sink: Sink, path: str) -> dict[str, Any]:
    return {"destinations": [{"name": "d", "http": {"url": sink.url_for(path)}}], "retry": NO_WAIT}


async def test_failed_jobs_and_dead_letters_are_counted_per_integration(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"ok": _spec(sink, "/ok"), "bad": _spec(sink, "/bad"), "down": _spec(sink, "/down")}
    )
    sink.always["/bad"] = 422
    sink.always["/down"] = 503
    await h.start_worker()
    done = [await h.enqueue("ok", {"n": 1})]
    failed = [await h.enqueue("bad", {"n": 2})]
    dead = [await h.enqueue("down", {"n": n}) for n in range(3)]
    for job in done:
        await h.wait_status(job.id, LogStatus.SUCCEEDED)
    for job in failed:
        await h.wait_status(job.id, LogStatus.FAILED)
    for job in dead:
        await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    counts = await read_counts(h.redis, h.keys, ["ok", "bad", "down"], time.time())

    assert counts.queue_depth == 0
    assert (counts.integrations["ok"].failed, counts.integrations["ok"].dead_letters) == (0, 0)
    assert (counts.integrations["bad"].failed, counts.integrations["bad"].dead_letters) == (1, 0)
    assert (counts.integrations["down"].failed, counts.integrations["down"].dead_letters) == (3, 3)

    sink.always["/down"] = 200
    assert await replay_dead_letters(h.redis, h.keys, "down") == 3
    after = await read_counts(h.redis, h.keys, ["down"], time.time())
    assert after.integrations["down"].dead_letters == 0
    assert await h.redis.hgetall(h.keys.dead_counts) == {}


async def test_dead_letter_counts_missing_from_older_data_are_rebuilt_from_the_stream(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory({"down": _spec(sink, "/down"), "other": _spec(sink, "/other")})
    sink.always["/down"] = 503
    sink.always["/other"] = 503
    await h.start_worker()
    jobs = [await h.enqueue("down", {"n": n}) for n in range(2)]
    jobs.append(await h.enqueue("other", {"n": 9}))
    for job in jobs:
        await h.wait_status(job.id, LogStatus.DEAD_LETTER)
    await h.redis.delete(h.keys.dead_counts)  # as before the counts were kept

    counts = await read_counts(h.redis, h.keys, ["down", "other"], time.time())

    assert counts.integrations["down"].dead_letters == 2
    assert counts.integrations["other"].dead_letters == 1
    assert await h.redis.hgetall(h.keys.dead_counts) == {b"down": b"2", b"other": b"1"}


async def test_the_counters_of_one_application_are_read_in_one_round_trip(
    harness_factory: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory({"a": {}, "b": {}})
    await read_counts(h.redis, h.keys, ["a", "b"], time.time())  # loads the script
    sent: list[Any] = []
    original = h.redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **options)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(h.redis, "execute_command", counting)
    await read_counts(h.redis, h.keys, ["a", "b"], time.time())
    assert sent == ["EVALSHA"]


async def test_the_worker_gauges_queue_depth_dead_letters_and_the_oldest_jobs_delay(
    harness_factory: HarnessFactory,
) -> None:
    h = harness_factory({"slow": {}})
    worker = Worker(h.settings(), h.provider, redis=h.redis)
    consumer = AppConsumer(worker, h.app)
    first = await h.enqueue("slow", {"n": 1})
    second = await h.enqueue("slow", {"n": 2})
    now = first.received_at + 100.0
    assert second.received_at >= first.received_at
    await h.redis.xadd(h.keys.dead_letters, {"job": first.model_dump_json()})

    await consumer.sample_queue(now=now)

    def value(name: str) -> float | None:
        labels = {"application": f"{h.app.namespace}/{h.app.name}"}
        return worker.registry.get_sample_value(name, labels)

    assert value("retrieve_worker_queue_depth") == 2
    assert value("retrieve_worker_processing_delay_seconds") == pytest.approx(100.0)
    assert value("retrieve_worker_dead_letters_stored") == 1
    await h.redis.delete(h.keys.jobs)
    await consumer.sample_queue(now=now)
    assert value("retrieve_worker_processing_delay_seconds") == 0.0
