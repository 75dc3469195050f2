"""The bulk path (bulk.py): jobs whose records only go to batched destinations, handled a read
at a time, their outcomes stored one script call a batch; against a real Redis and sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import RedisError

from retrieve_cli.sink import Sink
from retrieve_core.keys import CONSUMER_GROUP
from retrieve_core.logstore import LogStatus
from retrieve_core.logstore import encode_update as original_encode
from retrieve_core.models import Destination, RetrySpec
from retrieve_worker import queue
from retrieve_worker.batching import Batcher
from retrieve_worker.consumer import AppConsumer, Slots
from retrieve_worker.destinations import Delivery, create_client
from retrieve_worker.workflow import SETTLED_EARLIER

from .conftest import Harness
from .test_batching import batched, records_in, settled

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]


def consumer_of(h: Harness) -> AppConsumer:
    worker = h.workers[0][0]
    return next(iter(worker.consumers.values()))


async def test_the_jobs_a_batch_delivered_are_stored_in_one_script_call_with_one_log_update(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(
        {"bulk": {"destinations": [{"name": "erp", "http": batched(sink, "/one", 20, 5000)}]}}
    )
    calls: list[int] = []
    updates: list[object] = []
    original_pack = queue.pack_completions

    def counting_pack(keys: Any, outcomes: Any) -> bytes:
        calls.append(len(outcomes))
        return original_pack(keys, outcomes)

    def counting_encode(fields: Any) -> list[str]:
        updates.append(fields)
        return original_encode(fields)

    monkeypatch.setattr(queue, "pack_completions", counting_pack)
    monkeypatch.setattr(queue, "encode_update", counting_encode)
    jobs = [await h.enqueue("bulk", {"n": n}) for n in range(20)]
    worker = await h.start_worker()  # reads 8 jobs at a time (spec.worker.concurrency)

    records = await settled(h, jobs, LogStatus.SUCCEEDED)

    assert [len(r.body) for r in sink.requests_to("/one")] == [20]
    assert calls == [20]
    assert len(updates) == 1
    [key] = {r.headers["Idempotency-Key"] for r in sink.requests_to("/one")}
    for record in records:
        [result] = record.destinations
        assert (result.name, result.record, result.status, result.batch) == ("erp", 0, 200, key)
        assert record.attempts == 1
    labels = {"application": f"test/{h.app.name}"}
    sample = worker.registry.get_sample_value
    assert sample("retrieve_worker_jobs_total", {**labels, "integration": "bulk",
                                                  "outcome": "succeeded"}) == 20  # fmt: skip
    assert sample("retrieve_worker_jobs_in_flight", labels) == 0
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == 0


async def test_jobs_waiting_for_their_batch_hold_no_task_and_no_concurrency_slot(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"wait": {"destinations": [{"name": "erp", "http": batched(sink, "/wait", 100, 60_000)}]}}
    )
    await h.start_worker()
    consumer = consumer_of(h)
    jobs = [await h.enqueue("wait", {"n": n}) for n in range(12)]  # more than the 8 slots

    async def all_gathered() -> bool:
        return consumer.batches.unsettled == len(jobs)

    await h.eventually(all_gathered)

    assert not consumer._tasks  # and 12 jobs held with 8 slots: they hold none
    assert consumer.runner.bulk.held == len(jobs)
    assert len(consumer.in_flight) == len(jobs)  # kept alive while they wait (XCLAIM)
    assert sink.requests_to("/wait") == []

    await asyncio.wait_for(h.stop_workers(), 20)  # sends what was gathered, then stores it

    assert [len(r.body) for r in sink.requests_to("/wait")] == [12]
    records = [await h.logs.get(job.id) for job in jobs]
    assert {r.status for r in records if r is not None} == {LogStatus.SUCCEEDED}


async def test_a_mapping_failing_on_a_batched_job_sends_nothing_and_dead_letters_it_in_the_end(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "broken": {
                "fieldMapping": {"n": "n", "size": "abs(name)"},  # abs of a string: refused
                "destinations": [{"name": "erp", "http": batched(sink, "/broken", 10, 20)}],
                "retry": {"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0},
            },
            "fine": {"destinations": [{"name": "erp", "http": batched(sink, "/fine", 10, 20)}]},
        }
    )
    broken = await h.enqueue("broken", {"n": 1, "name": "x"})
    fine = await h.enqueue("fine", {"n": 2})
    await h.start_worker()

    [dead] = await settled(h, [broken], LogStatus.DEAD_LETTER)
    await settled(h, [fine], LogStatus.SUCCEEDED)

    assert "field mapping 'size' failed" in dead.error
    assert dead.attempts == 2
    assert sink.requests_to("/broken") == []
    assert records_in(sink.requests_to("/fine")) == [{"n": 2, "_retrieve_id": f"{fine.id}-erp-0"}]
    assert await h.redis.xlen(h.keys.dead_letters) == 1


async def test_a_retried_job_sends_only_the_records_its_earlier_attempt_did_not_settle(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "two": {
                "destinations": [
                    {"name": "a", "http": batched(sink, "/two-a", 10, 20)},
                    {"name": "b", "http": batched(sink, "/two-b", 10, 20)},
                ]
            }
        }
    )
    # As a retry scheduled after `a` took the record and `b` did not answer.
    job = await h.enqueue("two", {"n": 1}, attempt=1, deliveries={"a/0": 200})
    await h.start_worker()

    [record] = await settled(h, [job], LogStatus.SUCCEEDED)

    assert sink.requests_to("/two-a") == []
    assert records_in(sink.requests_to("/two-b")) == [{"n": 1, "_retrieve_id": f"{job.id}-b-0"}]
    assert record.attempts == 2
    assert [(d.name, d.status, d.body == SETTLED_EARLIER) for d in record.destinations] == [
        ("a", 200, True),
        ("b", 200, False),
    ]


async def test_outcomes_that_could_not_be_stored_leave_their_jobs_pending_and_they_come_back(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At least once: the batch was delivered, the script call that acks its jobs failed; the
    jobs are reclaimed and their records sent again with the same ids."""
    h = harness_factory(
        {"again": {"destinations": [{"name": "erp", "http": batched(sink, "/again", 10, 20)}]}}
    )
    failures = [RedisError("connection lost")]
    original = queue.Committer._execute

    async def failing_once(self: queue.Committer, batch: Any) -> None:
        if failures:
            raise failures.pop()
        await original(self, batch)

    monkeypatch.setattr(queue.Committer, "_execute", failing_once)
    jobs = [await h.enqueue("again", {"n": n}) for n in range(3)]
    worker = await h.start_worker(claim_idle_ms=300)

    await settled(h, jobs, LogStatus.SUCCEEDED)

    sent = [r["_retrieve_id"] for r in records_in(sink.requests_to("/again"))]
    assert sorted(sent) == sorted([f"{j.id}-erp-0" for j in jobs] * 2)
    errors = worker.registry.get_sample_value(
        "retrieve_worker_commit_errors_total", {"application": f"test/{h.app.name}"}
    )
    assert errors == 3
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == 0


class _Waiter:
    """A `PartWaiter` that notes what it is told."""

    def __init__(self) -> None:
        self.outcomes: list[list[Delivery]] = []
        self.abandoned_count = 0

    def settled(self, deliveries: list[Delivery], exhausted: bool) -> None:
        self.outcomes.append(deliveries)

    def abandoned(self) -> None:
        self.abandoned_count += 1


async def test_a_batch_cancelled_before_its_request_started_abandons_its_jobs(sink: Sink) -> None:
    destination = Destination.model_validate(
        {"name": "erp", "http": batched(sink, "/never", 100, 60_000)}
    )
    assert destination.http.batch is not None
    client = create_client()
    batcher = Batcher(lambda: client, "int", lambda _: None)
    waiter = _Waiter()
    try:
        batcher.add(
            destination, destination.http.batch, RetrySpec(), "job", [(0, {"n": 1})],
            waiter=waiter, taken_at=0.0,
        )  # fmt: skip
        batcher.close()  # the send task is made...
        batcher.cancel()  # ...and cancelled before it ran
        await asyncio.sleep(0.05)
    finally:
        await client.close()

    assert waiter.abandoned_count == 1
    assert waiter.outcomes == []
    assert batcher.unsettled == 0
    assert sink.requests_to("/never") == []


async def test_a_loop_taking_its_slots_back_at_once_does_not_starve_a_waiting_one() -> None:
    slots = Slots(2)
    assert await slots.take(5) == 2
    waiting = asyncio.ensure_future(slots.take(5))
    await asyncio.sleep(0)
    slots.release(2)  # handed to the waiter first, in turn...
    later = asyncio.ensure_future(slots.take(5))
    assert await waiting == 2
    assert not later.done()  # ...not to whoever asks next
    slots.release(2)
    assert await later == 2
    cancelled = asyncio.ensure_future(slots.take(1))
    await asyncio.sleep(0)
    cancelled.cancel()
    slots.release(2)
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    assert slots.free == 2


async def test_a_worker_stopping_past_its_timeout_leaves_jobs_waiting_for_a_batch_pending(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    # The destination would answer (or time out) long after the stop must have ended.
    stall = {**batched(sink, "/stall", 10, 20), "timeoutSeconds": 30}
    h = harness_factory({"slow": {"destinations": [{"name": "erp", "http": stall}]}})
    sink.delays["/stall"] = 10
    await h.start_worker(shutdown_timeout_seconds=0.3)
    jobs = [await h.enqueue("slow", {"n": n}) for n in range(3)]

    async def request_sent() -> bool:
        return len(sink.requests_to("/stall")) == 1

    await h.eventually(request_sent)

    await asyncio.wait_for(h.stop_workers(), 8)  # not the 10 s the destination takes

    records = [await h.logs.get(job.id) for job in jobs]
    assert {r.status for r in records if r is not None} == {LogStatus.QUEUED}
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == 3


async def test_a_full_batcher_holds_up_only_its_own_jobs_and_keeps_them_in_read_order(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    full_a = {**batched(sink, "/full-a", 2, 10), "timeoutSeconds": 10}
    h = harness_factory(
        {
            "a": {"destinations": [{"name": "erp", "http": full_a}]},
            "b": {"destinations": [{"name": "erp", "http": batched(sink, "/free-b", 10, 10)}]},
        }
    )
    sink.delays["/full-a"] = 5  # well under its 10 s timeout
    # Read 8 at a time (the slots): the second read takes a's last 3 (one finds no room) and b's.
    a_jobs = [await h.enqueue("a", {"n": n}) for n in range(11)]
    b_jobs = [await h.enqueue("b", {"n": n}) for n in range(3)]
    await h.start_worker(read_count=32)

    await settled(h, b_jobs, LogStatus.SUCCEEDED)

    # Not after a's first answers: the sink sets a request's status once its delay is over.
    a_requests = sink.requests_to("/full-a")
    assert a_requests, "a's first batches were sent"
    assert [r.status for r in a_requests] == [0] * len(a_requests)
    sink.delays["/full-a"] = 0  # the requests already waiting still take their 5 s
    more = [await h.enqueue("a", {"n": n}) for n in range(11, 16)]  # a later read
    await settled(h, a_jobs + more, LogStatus.SUCCEEDED)
    # a's jobs were handed over in read order: each request holds consecutive ones.
    requests = sink.requests_to("/full-a")
    sent = sorted([r["n"] for r in records_in([request])] for request in requests)
    assert sent == [[n, n + 1] for n in range(0, 16, 2)]


async def test_each_commit_call_counts_its_own_jobs(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(
        {"p": {"destinations": [{"name": "erp", "http": batched(sink, "/part", 4, 5000)}]}}
    )
    calls: list[int] = []
    original = queue.Committer._execute

    async def second_fails(self: queue.Committer, batch: Any) -> None:
        calls.append(sum(len(group) for group, _ in batch))
        if len(calls) == 2:
            raise RedisError("connection lost")
        await original(self, batch)

    monkeypatch.setattr(queue.Committer, "_execute", second_fails)
    jobs = [await h.enqueue("p", {"n": n}) for n in range(4)]
    worker = await h.start_worker(commit_batch=2, claim_idle_ms=60_000)

    await settled(h, jobs[:2], LogStatus.SUCCEEDED)

    async def both_calls_made() -> bool:
        return len(calls) == 2

    await h.eventually(both_calls_made)
    await asyncio.sleep(0.1)
    labels = {"application": f"test/{h.app.name}"}
    sample = worker.registry.get_sample_value
    assert sample("retrieve_worker_jobs_total", {**labels, "integration": "p",
                                                  "outcome": "succeeded"}) == 2  # fmt: skip
    assert sample("retrieve_worker_commit_errors_total", labels) == 2
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == 2


def _fails_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int) -> list[int]:
    """`owner.name` raises on its `call`-th call (1-based), once; returns the call count."""
    original = getattr(owner, name)
    count = [0]

    def failing(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] == call:
            raise RuntimeError("a bug")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return count


@pytest.mark.parametrize("call", [1, 12])  # on taking a read; on handing over waiting jobs
async def test_a_batcher_crashing_on_a_job_leaves_it_pending_and_gives_its_slot_back(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch, call: int
) -> None:
    h = harness_factory(
        {"c": {"destinations": [{"name": "erp", "http": batched(sink, "/crash", 2, 10)}]}}
    )
    sink.delays["/crash"] = 0.2
    count = _fails_once(monkeypatch, Batcher, "add", call)
    jobs = [await h.enqueue("c", {"n": n}) for n in range(16)]
    await h.start_worker(read_count=32, claim_idle_ms=500)
    consumer = consumer_of(h)

    await settled(h, jobs, LogStatus.SUCCEEDED)  # the crashed one reclaimed, run again

    assert count[0] > call
    assert consumer.runner.bulk.held == 0
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == 0
    more = [await h.enqueue("c", {"n": n}) for n in range(16, 48)]
    await settled(h, more, LogStatus.SUCCEEDED)  # no slot lost: reading goes on
    await asyncio.wait_for(h.stop_workers(), 5)


async def test_an_outcome_crashing_leaves_its_job_pending_and_the_others_stored(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(
        {"o": {"destinations": [{"name": "erp", "http": batched(sink, "/outcome", 10, 10)}]}}
    )
    jobs = [await h.enqueue("o", {"n": n}) for n in range(5)]
    worker = await h.start_worker(claim_idle_ms=500)
    consumer = consumer_of(h)
    count = _fails_once(monkeypatch, consumer.runner, "completion_of", 1)

    await settled(h, jobs, LogStatus.SUCCEEDED)

    assert count[0] == 6  # the crashed one made again when it came back
    assert consumer.runner.bulk.held == 0
    assert len(sink.requests_to("/outcome")) == 2
    await asyncio.wait_for(h.stop_workers(), 5)
    assert worker is not None


async def test_a_job_lost_track_of_does_not_hold_up_the_shutdown(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(
        {"l": {"destinations": [{"name": "erp", "http": batched(sink, "/lost", 10, 10)}]}}
    )
    monkeypatch.setattr("retrieve_worker.bulk.HeldJob.settled", lambda *_: None)  # never told
    jobs = [await h.enqueue("l", {"n": n}) for n in range(3)]
    await h.start_worker(shutdown_timeout_seconds=0.3)
    consumer = consumer_of(h)

    async def delivered() -> bool:
        return len(sink.requests_to("/lost")) == 1

    await h.eventually(delivered)
    assert consumer.runner.bulk.held == 3

    await asyncio.wait_for(h.stop_workers(), 3)

    assert consumer.runner.bulk.held == 0
    assert (await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP))["pending"] == len(jobs)


async def test_jobs_waiting_for_a_slow_commit_hold_reading_back(
    harness_factory: HarnessFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_factory(
        {"s": {"destinations": [{"name": "erp", "http": batched(sink, "/slow-commit", 10, 10)}]}}
    )
    original = queue.Committer._execute
    committed = asyncio.Event()  # no outcome is stored until the test has looked

    async def slow(self: queue.Committer, batch: Any) -> None:
        await committed.wait()
        await original(self, batch)

    monkeypatch.setattr(queue.Committer, "_execute", slow)
    try:
        for n in range(400):
            await h.enqueue("s", {"n": n})
        await h.start_worker()
        consumer = consumer_of(h)

        def sent() -> int:
            return sum(len(request.body) for request in sink.requests_to("/slow-commit"))

        async def some_sent() -> bool:
            return sent() > 0

        await h.eventually(some_sent)
        await asyncio.sleep(1)  # time to read (and send) well past the bound, were it not held

        # Room for (4 + 1) x maxRecords records in the batcher until stored, and the slots.
        assert consumer.runner.bulk.held <= consumer.concurrency + 5 * 10
        # Batches leave on time (maxWaitMs), not always full: it is the records that are bounded.
        assert 0 < sent() <= 5 * 10
    finally:
        committed.set()
