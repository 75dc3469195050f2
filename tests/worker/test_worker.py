"""The worker against a real Redis and a real HTTP destination on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from retrieve_cli.sink import Sink
from retrieve_core.job import Job
from retrieve_core.keys import CONSUMER_GROUP
from retrieve_core.logstore import LogStatus
from retrieve_worker import replay_dead_letters
from retrieve_worker.queue import ensure_group

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]

SHOPIFY_REWRITE = """
let job = jobData.job;
let payload = job.data.data;
let orders = Array.isArray(payload.orders) ? payload.orders : [payload.order || payload];
console.log(`event ${payload.event}: ${orders.length} order(s)`);
return {jobStatus: 1, data: orders, message: `Processed ${orders.length} orders`};
"""
MAPPING = {"order_id": "id", "customer_email": "email", "total": "to_number(total_price)"}
NO_WAIT = {"maxAttempts": 3, "backoffSeconds": 0, "maxBackoffSeconds": 0}


def http(sink: Sink, path: str, **extra: Any) -> dict[str, Any]:
    # Generous: a loaded machine stalling the in-process sink must not turn into a retry here.
    return {"url": sink.url_for(path), "timeoutSeconds": 10, **extra}


def rewrite(javascript: str) -> dict[str, Any]:
    """A rewrite with room to run on a loaded machine (the default `timeoutMs` is 1 s)."""
    return {"javascript": javascript, "timeoutMs": 10_000}


async def stream_len(h: Harness, key: str) -> int:
    return int(await h.redis.xlen(key))


async def pending(h: Harness) -> int:
    info = await h.redis.xpending(h.keys.jobs, CONSUMER_GROUP)
    return int(info["pending"])


async def test_a_job_is_rewritten_mapped_delivered_and_logged_as_succeeded(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "shop": {
                "rewrite": rewrite(SHOPIFY_REWRITE),
                "fieldMapping": MAPPING,
                "destinations": [
                    {"name": "warehouse", "http": http(sink, "/orders", headers={"X-Api": "k"})}
                ],
            }
        }
    )
    # Enqueued before any worker exists: the group starts at 0, so it is not skipped.
    payload = {
        "event": "orders/create",
        "orders": [
            {"id": 1, "email": "a@example.com", "total_price": "9.99"},
            {"id": 2, "email": "b@example.com", "total_price": "5"},
        ],
    }
    job = await h.enqueue("shop", payload)
    await h.start_worker()

    record = await h.wait_status(job.id, LogStatus.SUCCEEDED, LogStatus.FAILED)

    assert record.status is LogStatus.SUCCEEDED
    assert record.job_status == 1
    assert record.message == "Processed 2 orders"
    assert record.console == ["event orders/create: 2 order(s)"]
    assert record.attempts == 1
    assert [(d.name, d.record, d.status) for d in record.destinations] == [
        ("warehouse", 0, 200),
        ("warehouse", 1, 200),
    ]
    received = sorted(sink.requests_to("/orders"), key=lambda r: r.body["order_id"])
    assert [r.body for r in received] == [
        {"order_id": 1, "customer_email": "a@example.com", "total": 9.99},
        {"order_id": 2, "customer_email": "b@example.com", "total": 5},
    ]
    assert received[0].headers["Idempotency-Key"] == f"{job.id}-warehouse-0"
    assert received[1].headers["Idempotency-Key"] == f"{job.id}-warehouse-1"
    assert received[0].headers["X-Api"] == "k"
    assert received[0].headers["Content-Type"] == "application/json"
    await h.eventually(lambda: _is(stream_len(h, h.keys.jobs), 0))
    assert await pending(h) == 0


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_without_rewrite_a_list_payload_is_one_request_per_item(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"raw": {"destinations": [{"name": "d", "http": http(sink, "/raw", method="PUT")}]}}
    )
    await h.start_worker()
    job = await h.enqueue("raw", [{"a": 1}, {"a": 2}, {"a": 3}])
    await h.wait_status(job.id, LogStatus.SUCCEEDED)
    assert sorted(r.body["a"] for r in sink.requests_to("/raw")) == [1, 2, 3]


async def test_a_destination_that_fails_then_recovers_gets_the_job_once_and_others_no_resend(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "two": {
                "destinations": [
                    {"name": "steady", "http": http(sink, "/steady")},
                    {"name": "flaky", "http": http(sink, "/flaky")},
                ],
                "retry": NO_WAIT,
            }
        }
    )
    sink.answer("/flaky", 500)
    worker = await h.start_worker()
    job = await h.enqueue("two", {"id": 7})

    record = await h.wait_status(job.id, LogStatus.SUCCEEDED, LogStatus.DEAD_LETTER)

    assert record.status is LogStatus.SUCCEEDED
    assert record.attempts == 2
    assert len(sink.requests_to("/steady")) == 1  # delivered in attempt 1, not resent
    assert [r.body for r in sink.requests_to("/flaky")] == [{"id": 7}, {"id": 7}]
    keys = {r.headers["Idempotency-Key"] for r in sink.requests_to("/flaky")}
    assert keys == {f"{job.id}-flaky-0"}
    retries = worker.registry.get_sample_value(
        "retrieve_worker_retries_total",
        {"application": f"test/{h.app.name}", "integration": "two"},
    )
    assert retries == 1
    assert await h.redis.zcard(h.keys.delayed) == 0
    assert await h.redis.hlen(h.keys.delayed_payloads) == 0


async def test_a_destination_that_always_fails_dead_letters_the_job_after_max_attempts(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"down": {"destinations": [{"name": "d", "http": http(sink, "/down")}], "retry": NO_WAIT}}
    )
    sink.always["/down"] = 503
    await h.start_worker()
    job = await h.enqueue("down", {"id": 1})

    record = await h.wait_status(job.id, LogStatus.DEAD_LETTER, LogStatus.SUCCEEDED)

    assert record.attempts == 3
    assert "d answered 503" in record.error
    assert len(sink.requests_to("/down")) == 3
    dead: Any = await h.redis.xrange(h.keys.dead_letters)
    assert len(dead) == 1
    fields = dead[0][1]
    assert Job.decode(fields).id == job.id
    assert Job.decode(fields).attempt == 3
    assert b"answered 503" in fields[b"error"]
    assert await pending(h) == 0


async def test_a_destination_refusing_with_4xx_fails_the_job_without_retry(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"bad": {"destinations": [{"name": "d", "http": http(sink, "/bad")}], "retry": NO_WAIT}}
    )
    sink.always["/bad"] = 422
    await h.start_worker()
    job = await h.enqueue("bad", {"id": 1})

    record = await h.wait_status(job.id, LogStatus.FAILED, LogStatus.SUCCEEDED)
    # The outcome, its acknowledgement and any retry are written by one script: nothing is
    # scheduled or left pending, so nothing more will be sent.
    assert await h.redis.zcard(h.keys.delayed) == 0
    assert await pending(h) == 0

    assert record.status is LogStatus.FAILED
    assert record.destinations[0].status == 422
    assert len(sink.requests_to("/bad")) == 1
    assert await h.redis.xlen(h.keys.dead_letters) == 0
    assert (await h.logs.get(job.id)).status is LogStatus.FAILED  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [408, 429])
async def test_a_destination_answering_408_or_429_is_retried_like_5xx(
    harness_factory: HarnessFactory, sink: Sink, status: int
) -> None:
    # "Try again later" answers (docs/user-guide.md): retried, then delivered once it accepts.
    h = harness_factory(
        {"busy": {"destinations": [{"name": "d", "http": http(sink, "/busy")}], "retry": NO_WAIT}}
    )
    sink.answer("/busy", status)
    await h.start_worker()
    job = await h.enqueue("busy", {"id": 3})

    record = await h.wait_status(
        job.id, LogStatus.SUCCEEDED, LogStatus.FAILED, LogStatus.DEAD_LETTER
    )

    assert record.status is LogStatus.SUCCEEDED
    assert record.attempts == 2
    assert [r.status for r in sink.requests_to("/busy")] == [status, 200]


async def test_a_rewrite_returning_job_status_0_fails_the_job_without_retry(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "skip": {
                "rewrite": rewrite("return {jobStatus: 0, message: 'not an order'};"),
                "destinations": [{"name": "d", "http": http(sink, "/skip")}],
                "retry": NO_WAIT,
            }
        }
    )
    await h.start_worker()
    job = await h.enqueue("skip", {"id": 1})

    record = await h.wait_status(job.id, LogStatus.FAILED, LogStatus.SUCCEEDED)
    assert await h.redis.zcard(h.keys.delayed) == 0  # no retry scheduled
    assert await pending(h) == 0

    assert record.job_status == 0
    assert record.message == "not an order"
    assert record.attempts == 1
    assert sink.requests_to("/skip") == []
    assert (await h.logs.get(job.id)).attempts == 1  # type: ignore[union-attr]


async def test_a_throwing_rewrite_is_retried_then_dead_lettered_with_its_error(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "boom": {
                "rewrite": rewrite("console.log('before'); throw new Error('no orders');"),
                "destinations": [{"name": "d", "http": http(sink, "/boom")}],
                "retry": {"maxAttempts": 2, "backoffSeconds": 0},
            }
        }
    )
    await h.start_worker()
    job = await h.enqueue("boom", {"id": 1})

    record = await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    assert record.attempts == 2
    assert "Error: no orders" in record.error
    assert record.console == ["before"]
    assert sink.requests_to("/boom") == []


async def test_replay_moves_dead_letters_back_and_they_are_delivered(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "rp": {"destinations": [{"name": "d", "http": http(sink, "/rp")}], "retry": NO_WAIT},
            "other": {
                "destinations": [{"name": "d", "http": http(sink, "/other")}],
                "retry": NO_WAIT,
            },
        }
    )
    sink.always["/rp"] = 500
    sink.always["/other"] = 500
    await h.start_worker()
    jobs = [await h.enqueue("rp", {"n": n}) for n in range(3)]
    other = await h.enqueue("other", {"n": 99})
    for job in [*jobs, other]:
        await h.wait_status(job.id, LogStatus.DEAD_LETTER)
    sink.always["/rp"] = 200
    seen: list[tuple[int, int]] = []

    moved = await replay_dead_letters(
        h.redis, h.keys, "rp", lambda done, total: seen.append((done, total))
    )

    assert moved == 3
    assert seen == [(1, 3), (2, 3), (3, 3)]
    for job in jobs:
        record = await h.wait_status(job.id, LogStatus.SUCCEEDED)
        assert record.attempts == 1  # attempts start again
    delivered = [r for r in sink.requests_to("/rp") if r.body is not None]
    assert sorted(r.body["n"] for r in delivered[-3:]) == [0, 1, 2]
    remaining: Any = await h.redis.xrange(h.keys.dead_letters)
    assert [Job.decode(f).id for _, f in remaining] == [other.id]
    assert await replay_dead_letters(h.redis, h.keys, "rp") == 0


async def test_a_job_left_pending_by_a_dead_consumer_is_reclaimed(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory({"rc": {"destinations": [{"name": "d", "http": http(sink, "/rc")}]}})
    await ensure_group(h.redis, h.keys)
    job = await h.enqueue("rc", {"id": 5})
    # A consumer that read the job and died before acking it.
    taken: Any = await h.redis.xreadgroup(CONSUMER_GROUP, "dead-pod", {h.keys.jobs: ">"}, count=10)
    assert len(taken[0][1]) == 1
    await asyncio.sleep(0.3)

    worker = await h.start_worker(claim_idle_ms=200, claim_interval_seconds=0.1)
    record = await h.wait_status(job.id, LogStatus.SUCCEEDED)

    assert record.status is LogStatus.SUCCEEDED
    assert len(sink.requests_to("/rc")) == 1
    assert await pending(h) == 0
    reclaimed = worker.registry.get_sample_value(
        "retrieve_worker_reclaimed_total", {"application": f"test/{h.app.name}"}
    )
    assert reclaimed == 1


async def test_a_job_delivered_too_many_times_is_dead_lettered_without_running(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory({"pp": {"destinations": [{"name": "d", "http": http(sink, "/pp")}]}})
    await ensure_group(h.redis, h.keys)
    job = await h.enqueue("pp", {"id": 5})
    taken: Any = await h.redis.xreadgroup(CONSUMER_GROUP, "crashy", {h.keys.jobs: ">"}, count=1)
    entry_id = taken[0][1][0][0]
    for _ in range(3):  # each claim is one more delivery
        await h.redis.xclaim(h.keys.jobs, CONSUMER_GROUP, "crashy", 0, [entry_id])
    await asyncio.sleep(0.3)

    await h.start_worker(claim_idle_ms=200, claim_interval_seconds=0.1, max_deliveries=3)
    record = await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    assert "delivered 5 times" in record.error
    assert sink.requests_to("/pp") == []
    assert await h.redis.xlen(h.keys.dead_letters) == 1


async def test_clean_shutdown_finishes_in_flight_jobs_and_removes_the_consumer(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory({"slow": {"destinations": [{"name": "d", "http": http(sink, "/slow")}]}})
    sink.delays["/slow"] = 0.5
    worker = await h.start_worker()
    job = await h.enqueue("slow", {"id": 1})
    await h.eventually(lambda: _is(asyncio.sleep(0, len(sink.requests_to("/slow"))), 1))

    await h.stop_workers()

    record = await h.logs.get(job.id)
    assert record is not None
    assert record.status is LogStatus.SUCCEEDED
    consumers = await h.redis.xinfo_consumers(h.keys.jobs, CONSUMER_GROUP)
    names = [c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers]
    assert worker.settings.consumer not in names


async def test_an_unknown_integration_is_retried_then_dead_lettered(
    harness_factory: HarnessFactory,
) -> None:
    h = harness_factory({})
    await h.start_worker()
    job = await h.enqueue("ghost", {"id": 1}, attempt=4)  # default retry: 5 attempts

    record = await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    assert "Integration ghost is not configured" in record.error


async def test_webhook_logs_are_trimmed_to_the_application_bounds(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory({"t": {"destinations": [{"name": "d", "http": http(sink, "/t")}]}})
    bounds = h.app.spec.model_copy(
        update={"webhook_logs": h.app.spec.webhook_logs.model_copy(update={"max_records": 10})}
    )
    app = h.app.model_copy(update={"spec": bounds})
    h.app = app
    h.provider.update((app,), h.provider.current.secrets)
    for n in range(15):
        await h.enqueue("t", {"n": n})
    await h.start_worker(log_trim_interval_seconds=0.1)

    await h.eventually(lambda: _is(h.redis.zcard(h.keys.log_index), 10))


CUT_IN_AN_EMOJI = "jobData.job.data.data.text.substring(0, 1)"  # half of a surrogate pair
CUT_MESSAGE = f"return {{jobStatus: 0, message: 'ignored: ' + {CUT_IN_AN_EMOJI}}};"


async def test_text_a_rewrite_cut_inside_an_emoji_settles_its_job_and_no_other_is_held_up(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    """A lone surrogate cannot be UTF-8: before, it failed the outcome call it travelled in,
    with every job of that call, which stayed pending and went out again."""
    h = harness_factory(
        {
            "cut": {
                "rewrite": rewrite(CUT_MESSAGE),
                "destinations": [{"name": "d", "http": http(sink, "/cut")}],
                "retry": NO_WAIT,
            },
            "thrown": {
                "rewrite": rewrite(f"throw new Error('bad ' + {CUT_IN_AN_EMOJI});"),
                "destinations": [{"name": "d", "http": http(sink, "/thrown")}],
                "retry": {"maxAttempts": 1, "backoffSeconds": 0},
            },
            "fine": {"destinations": [{"name": "d", "http": http(sink, "/fine")}]},
        }
    )  # fmt: skip
    jobs = [
        await h.enqueue(integration, {"text": "\U0001f600 hello", "n": n})
        for n in range(3)
        for integration in ("cut", "thrown", "fine")
    ]
    await h.start_worker()
    for job in jobs:
        await h.wait_status(job.id, LogStatus.FAILED, LogStatus.DEAD_LETTER, LogStatus.SUCCEEDED)

    async def nothing_pending() -> bool:
        return await pending(h) == 0

    await h.eventually(nothing_pending)

    cut = await h.logs.get(jobs[0].id)
    assert cut is not None
    assert (cut.status, cut.message) == (LogStatus.FAILED, "ignored: \\ud83d")
    thrown = await h.logs.get(jobs[1].id)
    assert thrown is not None
    assert thrown.status == LogStatus.DEAD_LETTER
    assert "bad \\ud83d" in thrown.error
    assert len(sink.requests_to("/fine")) == 3  # each once: nothing went out again
    assert sink.requests_to("/cut") == sink.requests_to("/thrown") == []


async def test_a_result_text_is_bounded_whatever_a_rewrite_or_a_payload_holds(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    """A job's log record keeps at most 2,000 characters of a rewrite's message and of an
    error: a mapping error quotes the value it failed on, which the sender chose."""
    h = harness_factory(
        {
            "chatty": {
                "rewrite": rewrite("return {jobStatus: 0, message: 'm'.repeat(100000)};"),
                "destinations": [{"name": "d", "http": http(sink, "/chatty")}],
                "retry": NO_WAIT,
            },
            "mapped": {
                "fieldMapping": {"amount": "abs(total)"},
                "destinations": [{"name": "d", "http": http(sink, "/mapped")}],
                "retry": {"maxAttempts": 1, "backoffSeconds": 0},
            },
        }
    )
    await h.start_worker()
    chatty = await h.enqueue("chatty", {"id": 1})
    mapped = await h.enqueue("mapped", {"total": "\x1b[31m" + "A" * 1_000_000})

    record = await h.wait_status(chatty.id, LogStatus.FAILED)
    assert record.message == "m" * 2000
    assert record.error == "m" * 2000
    failed = await h.wait_status(mapped.id, LogStatus.DEAD_LETTER, LogStatus.FAILED)
    assert 0 < len(failed.error) <= 2000
    for job in (chatty, mapped):  # as stored: the harness keeps the whole payload besides
        for field in ("message", "error"):
            assert await h.redis.hstrlen(h.keys.log_record(job.id), field) <= 2000
