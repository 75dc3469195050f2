"""Error notifications sent by the worker, against a real Redis and a real HTTP target."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.logstore import LogStatus
from retrieve_core.models import IntegrationSpec, NotificationEvent, RetrieveApplicationSpec
from retrieve_core.notifications import claim_due, read_attempts
from retrieve_core.provider import ConfigProvider
from retrieve_core.scheduling.source_poll import Poller, PollError
from tests.support.redis_server import RedisServer

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

NO_WAIT = {"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0}
THROWS = "throw new Error('no orders in ' + JSON.stringify(jobData.job.data.data));"

Factory = Callable[..., Harness]


@pytest.fixture
async def notifying(redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[Factory]:
    made: list[Harness] = []

    def make(
        notifications: list[dict[str, Any]],
        integrations: dict[str, dict[str, Any]],
        secrets: SecretStore | None = None,
    ) -> Harness:
        name = f"app-{uuid.uuid4().hex[:8]}"
        app = ApplicationConfig(
            namespace="test",
            name=name,
            spec=RetrieveApplicationSpec.model_validate(
                {"webhook": {"domain": "example.com"}, "notifications": notifications}
            ),
            integrations=tuple(
                IntegrationConfig(
                    id=integration_id,
                    name=f"{integration_id.lower()}-name",
                    spec=IntegrationSpec.model_validate({"application": name, **spec}),
                )
                for integration_id, spec in integrations.items()
            ),
        )
        provider = ConfigProvider()
        provider.update((app,), secrets or SecretStore())
        harness = Harness(redis_client, redis_server.url, provider, app)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            await harness.stop_workers()


def target(sink: Sink, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": "ops", "url": sink.url_for(path), "minIntervalSeconds": 300, **extra}


def down_destination(sink: Sink) -> dict[str, Any]:
    return {"name": "erp", "http": {"url": sink.url_for("/erp"), "timeoutSeconds": 2}}


async def test_a_dead_letter_is_told_to_a_json_target_with_the_contract_fields(
    notifying: Factory, sink: Sink
) -> None:
    h = notifying(
        [target(sink, "/hook", events=["deadLetter"])],
        {"ORDERS": {"destinations": [down_destination(sink)], "retry": NO_WAIT}},
    )
    sink.always["/erp"] = 503
    worker = await h.start_worker()
    job = await h.enqueue("ORDERS", {"id": 1})
    await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    await h.eventually(lambda: _has(sink, "/hook", 1))

    [message] = sink.requests_to("/hook")
    body = message.body
    assert set(body) == {
        "event", "namespace", "application", "integration", "integrationId", "jobId",
        "error", "at", "count",
    }  # fmt: skip
    assert body["event"] == "deadLetter"
    assert (body["namespace"], body["application"]) == ("test", h.app.name)
    assert (body["integration"], body["integrationId"]) == ("orders-name", "ORDERS")
    assert body["jobId"] == job.id
    assert "erp answered 503" in body["error"]
    assert body["count"] == 1
    assert body["at"].endswith("Z")
    assert message.headers["Content-Type"] == "application/json"

    await h.eventually(lambda: _attempts(h, 1))
    [attempt] = await read_attempts(h.redis, h.keys)
    assert (attempt.result, attempt.http_status, attempt.job_id) == ("sent", 200, job.id)
    sent = worker.registry.get_sample_value(
        "retrieve_worker_notifications_total",
        {"application": f"test/{h.app.name}", "notification": "ops", "result": "sent"},
    )
    assert sent == 1


async def test_rewrite_errors_go_to_slack_with_headers_from_secrets_and_aggregate(
    notifying: Factory, sink: Sink
) -> None:
    secrets = SecretStore()
    secrets.put_secret("test", "chat-token", {"token": b"s3cret\n"})
    h = notifying(
        [
            target(
                sink,
                "/slack",
                format="slack",
                events=["rewriteError"],
                headers={"X-Team": "ops"},
                headersFrom=[
                    {
                        "name": "Authorization",
                        "prefix": "Bearer ",
                        "secretKeyRef": {"name": "chat-token", "key": "token"},
                    }
                ],
            )
        ],
        {
            "JS": {
                "rewrite": {"javascript": THROWS},
                "destinations": [down_destination(sink)],
                "retry": {"maxAttempts": 1},
            }
        },
        secrets,
    )
    jobs = [await h.enqueue("JS", {"n": n}) for n in range(4)]
    await h.start_worker()
    for job in jobs:
        await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    await h.eventually(lambda: _has(sink, "/slack", 1))

    # The first went at once; those after it wait for minIntervalSeconds, in one gate.
    [message] = sink.requests_to("/slack")
    assert set(message.body) == {"text"}
    assert "rewrite function error" in message.body["text"]
    assert "no orders in" in message.body["text"]
    assert message.headers["Authorization"] == "Bearer s3cret"
    assert message.headers["X-Team"] == "ops"
    await h.eventually(lambda: _attempts(h, 1))
    [attempt] = await read_attempts(h.redis, h.keys)
    gate = h.keys.notify_gate_prefix + "ops:JS:rewriteError"
    waiting = int(await h.redis.hget(gate, "count") or 0)
    assert attempt.count + waiting == 4  # every event told now or in the next message
    assert await h.redis.zcard(h.keys.notify_due) == (1 if waiting else 0)


async def test_a_target_that_is_down_is_counted_and_logged_and_jobs_go_on(
    notifying: Factory, sink: Sink
) -> None:
    h = notifying(
        [target(sink, "/hook-down", events=["deadLetter"])],
        {
            "ORDERS": {"destinations": [down_destination(sink)], "retry": NO_WAIT},
            "OK": {"destinations": [{"name": "ok", "http": {"url": sink.url_for("/ok")}}]},
        },
    )
    sink.always["/erp"] = 503
    sink.always["/hook-down"] = 502
    worker = await h.start_worker()
    job = await h.enqueue("ORDERS", {"id": 1})
    await h.wait_status(job.id, LogStatus.DEAD_LETTER)
    later = await h.enqueue("OK", {"id": 2})

    await h.wait_status(later.id, LogStatus.SUCCEEDED)
    await h.eventually(lambda: _attempts(h, 1))

    [attempt] = await read_attempts(h.redis, h.keys)
    assert (attempt.result, attempt.http_status, attempt.attempts) == ("failed", 502, 3)
    assert len(sink.requests_to("/hook-down")) == 3  # the short retry, then given up
    failed = worker.registry.get_sample_value(
        "retrieve_worker_notifications_total",
        {"application": f"test/{h.app.name}", "notification": "ops", "result": "failed"},
    )
    assert failed == 1


async def test_a_missing_secret_fails_the_notification_without_sending_it(
    notifying: Factory, sink: Sink
) -> None:
    h = notifying(
        [
            target(
                sink,
                "/nosecret",
                events=["deadLetter"],
                headersFrom=[
                    {"name": "Authorization", "secretKeyRef": {"name": "absent", "key": "k"}}
                ],
            )
        ],
        {"ORDERS": {"destinations": [down_destination(sink)], "retry": NO_WAIT}},
    )
    sink.always["/erp"] = 503
    await h.start_worker()
    job = await h.enqueue("ORDERS", {"id": 1})
    await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    await h.eventually(lambda: _attempts(h, 1))

    [attempt] = await read_attempts(h.redis, h.keys)
    assert attempt.result == "failed"
    assert "Secret absent has no key k" in attempt.error
    assert sink.requests_to("/nosecret") == []


async def _has(sink: Sink, path: str, count: int) -> bool:
    return len(sink.requests_to(path)) >= count


async def _attempts(h: Harness, count: int) -> bool:
    return len(await read_attempts(h.redis, h.keys)) >= count


async def test_a_failed_scheduled_poll_is_noted_for_poll_failed_notifications(
    notifying: Factory, sink: Sink
) -> None:
    h = notifying(
        [target(sink, "/polls", events=["pollFailed"])],
        {
            "POLLED": {
                "schedule": {
                    "cron": "*/5 * * * *",
                    "source": {"http": {"url": sink.url_for("/source"), "idField": "id"}},
                }
            }
        },
    )

    async def failing(url: str) -> Any:
        raise PollError(f"{url} answered 500")

    result = await Poller(h.redis, h.app, h.app.integrations[0]).run(SecretStore(), failing)
    assert result.error

    [message] = await claim_due(h.redis, h.app)
    assert message.notice.event is NotificationEvent.POLL_FAILED
    assert message.notice.integration_id == "POLLED"
    assert "answered 500" in message.notice.error


async def test_a_redirecting_target_is_a_failure_and_is_not_followed(
    notifying: Factory, sink: Sink
) -> None:
    h = notifying(
        [target(sink, "/moved", events=["deadLetter"])],
        {"ORDERS": {"destinations": [down_destination(sink)], "retry": NO_WAIT}},
    )
    sink.always["/erp"] = 503
    sink.always["/moved"] = 302
    await h.start_worker()
    job = await h.enqueue("ORDERS", {"id": 1})
    await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    await h.eventually(lambda: _attempts(h, 1))

    [attempt] = await read_attempts(h.redis, h.keys)
    assert (attempt.result, attempt.http_status, attempt.attempts) == ("failed", 302, 1)
    assert [r.path for r in sink.requests if r.path != "/erp"] == ["/moved"]
