"""Destination batching (`destinations[].http.batch`) against a real Redis and a real sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from retrieve_cli.sink import Sink, SinkRequest
from retrieve_core.job import Job
from retrieve_core.keys import CONSUMER_GROUP
from retrieve_core.logstore import LogStatus
from retrieve_core.models import Destination, RetrySpec
from retrieve_worker import replay_dead_letters
from retrieve_worker.batching import MAX_SENDS, Batcher, BatchSent, batch_id
from retrieve_worker.destinations import create_client

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]
NO_WAIT = {"maxAttempts": 3, "backoffSeconds": 0, "maxBackoffSeconds": 0}
SPLIT_ORDERS = """
let orders = jobData.job.data.data.orders;
return {jobStatus: 1, data: orders, message: `${orders.length} orders`};
"""


def batched(sink: Sink, path: str, max_records: int, max_wait_ms: int, **extra: Any) -> Any:
    return {
        "url": sink.url_for(path),
        "timeoutSeconds": 10,  # room for a loaded machine: no test here is about timeouts
        "batch": {"maxRecords": max_records, "maxWaitMs": max_wait_ms, **extra},
    }


def records_in(requests: list[SinkRequest]) -> list[Any]:
    return [record for request in requests for record in request.body]


async def settled(h: Harness, jobs: list[Job], *statuses: LogStatus) -> list[Any]:
    return [await h.wait_status(job.id, *statuses) for job in jobs]


async def test_a_burst_goes_as_json_arrays_of_at_most_max_records_each_record_with_its_id(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"bulk": {"destinations": [{"name": "erp", "http": batched(sink, "/bulk", 10, 2000)}]}}
    )
    jobs = [await h.enqueue("bulk", {"n": n}) for n in range(35)]
    await h.start_worker()

    records = await settled(h, jobs, LogStatus.SUCCEEDED, LogStatus.FAILED)

    requests = sink.requests_to("/bulk")
    assert all(isinstance(r.body, list) and 1 <= len(r.body) <= 10 for r in requests)
    assert len(requests) < len(jobs)  # batched: fewer requests than records
    delivered = records_in(requests)
    assert sorted(r["n"] for r in delivered) == list(range(35))
    # Each record carries its stable id: the key it would have had alone.
    ids = {job.id: job for job in jobs}
    for record in delivered:
        job = next(j for j in ids.values() if j.payload["n"] == record["n"])
        assert record["_retrieve_id"] == f"{job.id}-erp-0"
    # The batch's Idempotency-Key digests its records' ids; each log record names its batch.
    key_of = {r["_retrieve_id"]: q.headers["Idempotency-Key"] for q in requests for r in q.body}
    for request in requests:
        assert request.headers["Idempotency-Key"] == batch_id(
            [r["_retrieve_id"] for r in request.body]
        )
        assert request.headers["Content-Type"] == "application/json"
    for job, record in zip(jobs, records, strict=True):
        assert record.status is LogStatus.SUCCEEDED
        [result] = record.destinations
        assert (result.name, result.record, result.status) == ("erp", 0, 200)
        assert result.batch == key_of[f"{job.id}-erp-0"]
    info = await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP)
    assert info["pending"] == 0


async def test_a_job_with_more_records_than_max_records_is_acked_after_all_its_batches(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "many": {
                "rewrite": {"javascript": SPLIT_ORDERS},
                "destinations": [{"name": "erp", "http": batched(sink, "/many", 10, 50)}],
            }
        }
    )
    await h.start_worker()
    job = await h.enqueue("many", {"orders": [{"i": i} for i in range(25)]})

    record = await h.wait_status(job.id, LogStatus.SUCCEEDED, LogStatus.FAILED)

    requests = sink.requests_to("/many")
    assert sorted(len(r.body) for r in requests) == [5, 10, 10]
    assert sorted(r["i"] for r in records_in(requests)) == list(range(25))
    assert sorted(d.record for d in record.destinations) == list(range(25))
    assert {d.batch for d in record.destinations} == {
        r.headers["Idempotency-Key"] for r in requests
    }


async def test_a_record_id_field_set_by_the_mapping_is_kept_and_an_empty_name_adds_none(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "own": {
                "fieldMapping": {"n": "n", "_retrieve_id": "join('-', ['order', to_string(n)])"},
                "destinations": [{"name": "a", "http": batched(sink, "/own", 5, 20)}],
            },
            "bare": {
                "destinations": [
                    {"name": "b", "http": batched(sink, "/bare", 5, 20, recordIdField="")}
                ]
            },
        }
    )
    await h.start_worker()
    jobs = [await h.enqueue("own", {"n": 1}), await h.enqueue("bare", {"n": 2})]
    await settled(h, jobs, LogStatus.SUCCEEDED)

    assert records_in(sink.requests_to("/own")) == [{"n": 1, "_retrieve_id": "order-1"}]
    assert records_in(sink.requests_to("/bare")) == [{"n": 2}]


async def test_a_failed_batch_is_sent_again_with_the_same_body_and_idempotency_key(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "flaky": {
                "destinations": [{"name": "erp", "http": batched(sink, "/flaky", 10, 100)}],
                "retry": NO_WAIT,
            }
        }
    )
    jobs = [await h.enqueue("flaky", {"n": n}) for n in range(3)]
    sink.answer("/flaky", 503, 502)
    await h.start_worker()

    records = await settled(h, jobs, LogStatus.SUCCEEDED, LogStatus.DEAD_LETTER)

    assert {r.status for r in records} == {LogStatus.SUCCEEDED}
    requests = sink.requests_to("/flaky")
    by_key: dict[str, list[Any]] = {}
    for request in requests:
        by_key.setdefault(request.headers["Idempotency-Key"], []).append(request.body)
    # Each batch that met a failure went again unchanged; every record went in one batch.
    for bodies in by_key.values():
        assert all(body == bodies[0] for body in bodies)
    assert sorted(r["n"] for bodies in by_key.values() for r in bodies[0]) == [0, 1, 2]
    assert len(requests) == len(by_key) + 2
    for record in records:
        assert record.attempts == 1  # one workflow run: the batch did the retrying
        assert record.destinations[0].batch in by_key


async def test_a_batch_that_keeps_failing_dead_letters_each_job_and_replay_delivers_them(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "down": {
                "destinations": [{"name": "erp", "http": batched(sink, "/down", 10, 100)}],
                "retry": {"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0},
            }
        }
    )
    sink.always["/down"] = 503
    jobs = [await h.enqueue("down", {"n": n}) for n in range(3)]
    await h.start_worker()

    records = await settled(h, jobs, LogStatus.DEAD_LETTER, LogStatus.SUCCEEDED)

    assert {r.status for r in records} == {LogStatus.DEAD_LETTER}
    assert all("erp answered 503 (batch sent 2 times)" in r.error for r in records)
    keys = [r.headers["Idempotency-Key"] for r in sink.requests_to("/down")]
    assert all(keys.count(key) == 2 for key in keys)  # each batch: maxAttempts sends
    dead: Any = await h.redis.xrange(h.keys.dead_letters)
    assert sorted(Job.decode(fields).id for _, fields in dead) == sorted(j.id for j in jobs)

    sink.always["/down"] = 200
    assert await replay_dead_letters(h.redis, h.keys, "down") == 3
    replayed = await settled(h, jobs, LogStatus.SUCCEEDED)
    assert all(r.destinations[0].status == 200 for r in replayed)
    good = [r for r in sink.requests if r.path == "/down"][len(keys) :]
    assert sorted(r["n"] for r in records_in(good)) == [0, 1, 2]
    assert await h.redis.xlen(h.keys.dead_letters) == 0


async def test_a_batch_refused_with_4xx_fails_its_jobs_without_retry(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "bad": {
                "destinations": [{"name": "erp", "http": batched(sink, "/bad", 10, 50)}],
                "retry": NO_WAIT,
            }
        }
    )
    sink.always["/bad"] = 422
    jobs = [await h.enqueue("bad", {"n": n}) for n in range(2)]
    await h.start_worker()

    records = await settled(h, jobs, LogStatus.FAILED, LogStatus.SUCCEEDED, LogStatus.DEAD_LETTER)

    assert {r.status for r in records} == {LogStatus.FAILED}
    assert len(records_in(sink.requests_to("/bad"))) == 2  # each record sent once
    assert await h.redis.xlen(h.keys.dead_letters) == 0


async def test_batched_records_delivered_are_not_sent_again_when_another_destination_retries(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "mixed": {
                "destinations": [
                    {"name": "bulk", "http": batched(sink, "/mixed-bulk", 10, 20)},
                    {
                        "name": "one",
                        "http": {"url": sink.url_for("/mixed-one"), "timeoutSeconds": 10},
                    },
                ],
                "retry": NO_WAIT,
            }
        }
    )
    sink.answer("/mixed-one", 503)
    await h.start_worker()
    job = await h.enqueue("mixed", {"n": 1})

    record = await h.wait_status(job.id, LogStatus.SUCCEEDED, LogStatus.DEAD_LETTER)

    assert record.status is LogStatus.SUCCEEDED
    assert record.attempts == 2
    assert records_in(sink.requests_to("/mixed-bulk")) == [
        {"n": 1, "_retrieve_id": f"{job.id}-bulk-0"}
    ]
    assert [r.body for r in sink.requests_to("/mixed-one")] == [{"n": 1}, {"n": 1}]
    assert sink.requests_to("/mixed-one")[0].headers["Idempotency-Key"] == f"{job.id}-one-0"


async def test_more_jobs_than_the_concurrency_share_a_batch(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    """Jobs waiting for their batch give their slot back: a batch is not capped by
    `spec.worker.concurrency` (8 here)."""
    h = harness_factory(
        {"wide": {"destinations": [{"name": "erp", "http": batched(sink, "/wide", 30, 60_000)}]}}
    )
    jobs = [await h.enqueue("wide", {"n": n}) for n in range(30)]
    worker = await h.start_worker()

    await settled(h, jobs, LogStatus.SUCCEEDED)

    assert [len(r.body) for r in sink.requests_to("/wide")] == [30]
    labels = {"application": f"test/{h.app.name}", "integration": "wide", "destination": "erp"}
    assert worker.registry.get_sample_value("retrieve_worker_batch_records_sum", labels) == 30
    requests = worker.registry.get_sample_value(
        "retrieve_worker_destination_requests_total",
        {"application": f"test/{h.app.name}", "integration": "wide", "destination": "erp",
         "result": "2xx"},
    )  # fmt: skip
    assert requests == 1


async def test_a_stopping_worker_sends_what_its_batches_gathered_at_once(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"slow": {"destinations": [{"name": "erp", "http": batched(sink, "/slow", 100, 60_000)}]}}
    )
    await h.start_worker()
    jobs = [await h.enqueue("slow", {"n": n}) for n in range(3)]
    await h.eventually(lambda: _unsettled(h, 3))

    await asyncio.wait_for(h.stop_workers(), 20)  # well before maxWaitMs

    records = [await h.logs.get(job.id) for job in jobs]
    assert {r.status for r in records if r is not None} == {LogStatus.SUCCEEDED}
    assert [len(r.body) for r in sink.requests_to("/slow")] == [3]


async def _unsettled(h: Harness, count: int) -> bool:
    worker = h.workers[0][0]
    return sum(c.batches.unsettled for c in worker.consumers.values()) == count


async def test_a_batch_leaves_max_wait_ms_after_its_earliest_job_was_taken(sink: Sink) -> None:
    """The deadline is the job's, not the batch's: a record whose job was taken long ago
    (a slow rewrite) takes the whole batch with it when that job's wait is over."""
    destination = Destination.model_validate(
        {"name": "erp", "http": batched(sink, "/deadline", 100, 60_000)}
    )
    assert destination.http.batch is not None
    sent: list[BatchSent] = []
    client = create_client()
    batcher = Batcher(lambda: client, "int", sent.append)
    try:
        now = time.monotonic()
        late = await batcher.submit(
            destination, destination.http.batch, RetrySpec(), "job-b", [(0, {"n": "b"})],
            taken_at=now,
        )  # fmt: skip
        early = await batcher.submit(
            destination, destination.http.batch, RetrySpec(), "job-a", [(0, {"n": "a"})],
            taken_at=now - 59.9,
        )  # fmt: skip
        # Bounded far below the 60 s both would wait if the later job set the deadline.
        outcomes = await asyncio.wait_for(asyncio.gather(early, late), 20)
    finally:
        await client.close()

    assert [[r["n"] for r in q.body] for q in sink.requests_to("/deadline")] == [["b", "a"]]
    assert all(o.deliveries[0].delivered and not o.exhausted for o in outcomes)
    assert [s.records for s in sent] == [2]


async def test_a_slow_destination_holds_back_reading_instead_of_piling_up_records(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    """A batcher takes records while fewer than (4 + 1) x maxRecords are unsettled."""
    h = harness_factory(
        {"slow": {"destinations": [{"name": "erp", "http": batched(sink, "/slowest", 2, 10)}]}}
    )
    sink.delays["/slowest"] = 0.05
    jobs = [await h.enqueue("slow", {"n": n}) for n in range(40)]
    worker = await h.start_worker()
    consumer = next(iter(worker.consumers.values()))
    most = 0

    async def all_done() -> bool:
        nonlocal most
        most = max(most, consumer.batches.unsettled)
        records = [await h.logs.get(job.id) for job in jobs]
        return all(r is not None and r.status is LogStatus.SUCCEEDED for r in records)

    await h.eventually(all_done)

    assert 0 < most <= (MAX_SENDS + 1) * 2
    assert sorted(r["n"] for r in records_in(sink.requests_to("/slowest"))) == list(range(40))
    assert all(len(r.body) <= 2 for r in sink.requests_to("/slowest"))


async def test_a_worker_stopping_while_a_batch_waits_to_retry_schedules_ordinary_retries(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "later": {
                "destinations": [{"name": "erp", "http": batched(sink, "/later", 10, 20)}],
                "retry": {"maxAttempts": 5, "backoffSeconds": 30, "maxBackoffSeconds": 60},
            }
        }
    )
    sink.always["/later"] = 503
    await h.start_worker()
    jobs = [await h.enqueue("later", {"n": n}) for n in range(3)]
    await h.eventually(lambda: _is_true(len(records_in(sink.requests_to("/later"))) == 3))

    sent = len(sink.requests_to("/later"))
    await asyncio.wait_for(h.stop_workers(), 20)  # far sooner than the 15 s+ backoff

    records = [await h.logs.get(job.id) for job in jobs]
    assert {r.status for r in records if r is not None} == {LogStatus.RETRYING}
    assert await h.redis.zcard(h.keys.delayed) == 3
    assert len(sink.requests_to("/later")) == sent  # not sent again on the way out
    info = await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP)
    assert info["pending"] == 0


async def _is_true(value: bool) -> bool:
    return value
