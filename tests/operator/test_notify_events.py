"""The status poll's view of failed error notifications (Warning events), on a real Redis."""

from __future__ import annotations

import time
import uuid

import pytest
from redis.asyncio import Redis

from retrieve_core.keys import AppKeys
from retrieve_core.notifications import NotificationAttempt, record_attempt
from retrieve_operator.notifyevents import NotificationFailures, failure_message

pytestmark = pytest.mark.redis


def attempt(result: str, integration: str = "INT1") -> NotificationAttempt:
    return NotificationAttempt(
        ts=time.time(), notification="ops", event="deadLetter", integration_id=integration,
        result=result, error="" if result == "sent" else "answered 502", attempts=3,
    )  # fmt: skip


async def test_failures_since_the_last_look_are_reported_once_and_history_is_not_news(
    redis_client: Redis,
) -> None:
    keys = AppKeys("shop", f"app-{uuid.uuid4().hex[:8]}")
    app = (keys.namespace, keys.app)
    failures = NotificationFailures()
    await record_attempt(redis_client, keys, attempt("failed", "OLD"))

    assert await failures.new_failures(redis_client, app, keys) == []  # before our time

    await record_attempt(redis_client, keys, attempt("sent"))
    await record_attempt(redis_client, keys, attempt("failed", "A"))
    await record_attempt(redis_client, keys, attempt("failed", "B"))
    failed = await failures.new_failures(redis_client, app, keys)
    assert [a.integration_id for a in failed] == ["B", "A"]
    assert failure_message(failed).startswith("2 error notification(s) could not be sent")
    assert "answered 502" in failure_message(failed)

    assert await failures.new_failures(redis_client, app, keys) == []


async def test_the_first_failure_of_an_application_without_history_is_reported(
    redis_client: Redis,
) -> None:
    keys = AppKeys("shop", f"app-{uuid.uuid4().hex[:8]}")
    app = (keys.namespace, keys.app)
    failures = NotificationFailures()
    assert await failures.new_failures(redis_client, app, keys) == []

    await record_attempt(redis_client, keys, attempt("failed"))

    [only] = await failures.new_failures(redis_client, app, keys)
    assert only.error == "answered 502"
