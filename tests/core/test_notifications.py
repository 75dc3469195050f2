"""Error notifications: aggregation in Redis (shared by every replica) and the message bodies."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_core.config import ApplicationConfig
from retrieve_core.models import NotificationEvent, RetrieveApplicationSpec
from retrieve_core.notifications import (
    Notice,
    NotificationAttempt,
    claim_due,
    note_event,
    note_unauthorized,
    read_attempts,
    record_attempt,
)

DEAD = NotificationEvent.DEAD_LETTER
T0 = 1_800_000_000.0


def make_app(*notifications: dict[str, Any]) -> ApplicationConfig:
    return ApplicationConfig(
        namespace="shop",
        name=f"app-{uuid.uuid4().hex[:8]}",
        spec=RetrieveApplicationSpec.model_validate(
            {"webhook": {"domain": "example.com"}, "notifications": list(notifications)}
        ),
    )


def ops(**extra: Any) -> dict[str, Any]:
    return {
        "name": "ops",
        "url": "https://hooks.example/T0/B0",
        "events": ["deadLetter"],
        "minIntervalSeconds": 300,
        **extra,
    }


async def dead_letter(redis: Redis, app: ApplicationConfig, job: str, at: float) -> int:
    return await note_event(
        redis, app, DEAD, integration_id="INT1", integration="orders", job_id=job,
        error=f"{job} failed", now=at,
    )  # fmt: skip


@pytest.mark.unit
def test_the_json_body_has_the_contract_fields_and_slack_a_text() -> None:
    notice = Notice(
        notification="ops", event=DEAD, namespace="shop", application="yourapp",
        integration="orders", integration_id="INT1", job_id="j1", error="erp answered 503",
        at=T0, count=3,
    )  # fmt: skip
    app = make_app(ops(), ops(name="chat", format="slack"))
    json_spec, slack_spec = app.spec.notifications

    assert json.loads(notice.render(json_spec)) == {
        "event": "deadLetter",
        "namespace": "shop",
        "application": "yourapp",
        "integration": "orders",
        "integrationId": "INT1",
        "jobId": "j1",
        "error": "erp answered 503",
        "at": "2027-01-15T08:00:00.000Z",
        "count": 3,
    }
    slack = json.loads(notice.render(slack_spec))
    assert set(slack) == {"text"}
    assert "shop/yourapp" in slack["text"]
    assert "3 times" in slack["text"]
    assert "erp answered 503" in slack["text"]


@pytest.mark.unit
def test_slack_text_shows_what_a_sender_wrote_as_characters_not_mentions_or_links() -> None:
    hostile = "<!channel> <https://evil.example|click here> &lt; R&D <@U123>"
    notice = Notice(
        notification="chat", event=DEAD, namespace="shop", application="yourapp",
        integration="orders", integration_id="INT1", job_id="<!here>", error=hostile,
        at=T0, count=1,
    )  # fmt: skip
    [slack_spec] = make_app(ops(name="chat", format="slack")).spec.notifications
    text = json.loads(notice.render(slack_spec))["text"]
    assert "<" not in text
    assert ">" not in text
    assert (
        "error: &lt;!channel&gt; &lt;https://evil.example|click here&gt; &amp;lt; R&amp;D "
        "&lt;@U123&gt;" in text
    )
    assert "job &lt;!here&gt;" in text
    # Every `&` left is one of the escapes: Slack reads the text back as what was written.
    assert text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").count(hostile) == 1


@pytest.mark.unit
def test_the_spec_refuses_unknown_events_duplicate_names_and_intervals_out_of_bounds() -> None:
    with pytest.raises(ValueError, match="events"):
        make_app(ops(events=["deadLetter", "onFire"]))
    with pytest.raises(ValueError, match="unique"):
        make_app(ops(), ops())
    with pytest.raises(ValueError, match=r"minIntervalSeconds|min_interval_seconds"):
        make_app(ops(minIntervalSeconds=0))
    with pytest.raises(ValueError, match="events"):
        make_app(ops(events=[]))


@pytest.mark.redis
async def test_the_first_event_is_due_at_once_and_the_next_ones_are_one_message_later(
    redis_client: Redis,
) -> None:
    app = make_app(ops())
    await dead_letter(redis_client, app, "j1", T0)

    [first] = await claim_due(redis_client, app, now=T0)
    assert (first.notice.count, first.notice.job_id) == (1, "j1")
    assert first.notice.integration == "orders"

    for n, at in enumerate((T0 + 10, T0 + 20, T0 + 30), start=2):
        await dead_letter(redis_client, app, f"j{n}", at)
    assert await claim_due(redis_client, app, now=T0 + 299) == []  # within the interval

    [later] = await claim_due(redis_client, app, now=T0 + 300)
    assert (later.notice.count, later.notice.job_id, later.notice.error) == (3, "j4", "j4 failed")
    assert await claim_due(redis_client, app, now=T0 + 10_000) == []  # told once

    # A quiet interval later, the next event goes at once again.
    await dead_letter(redis_client, app, "j5", T0 + 700)
    [again] = await claim_due(redis_client, app, now=T0 + 700)
    assert again.notice.count == 1


@pytest.mark.redis
async def test_replicas_claiming_at_once_send_one_message_per_gate(redis_client: Redis) -> None:
    app = make_app(ops())
    await asyncio.gather(*(dead_letter(redis_client, app, f"j{n}", T0) for n in range(30)))

    claims = await asyncio.gather(*(claim_due(redis_client, app, now=T0) for _ in range(3)))

    messages = [c for claim in claims for c in claim]
    assert len(messages) == 1
    assert messages[0].notice.count == 30


@pytest.mark.redis
async def test_gates_are_per_notification_integration_and_event(redis_client: Redis) -> None:
    app = make_app(ops(), ops(name="chat", events=["deadLetter", "rewriteError"]))
    await dead_letter(redis_client, app, "j1", T0)
    await note_event(
        redis_client, app, NotificationEvent.REWRITE_ERROR, integration_id="INT2", now=T0
    )
    await note_event(redis_client, app, NotificationEvent.POLL_FAILED, integration_id="I", now=T0)

    claimed = await claim_due(redis_client, app, now=T0)

    assert sorted((c.notification, c.notice.integration_id, c.notice.event) for c in claimed) == [
        ("chat", "INT1", DEAD),
        ("chat", "INT2", NotificationEvent.REWRITE_ERROR),
        ("ops", "INT1", DEAD),
    ]


@pytest.mark.redis
async def test_a_rejected_burst_is_noted_once_when_a_minute_passes_the_threshold(
    redis_client: Redis,
) -> None:
    app = make_app(ops(events=["rejectedBurst"], rejectedBurstThreshold=3))
    noted = []
    for _ in range(6):
        count = await note_unauthorized(
            redis_client, app, integration_id="INT1", integration="orders",
            error="Invalid webhook signature", now=T0,
        )  # fmt: skip
        noted.append(count)

    assert noted == [0, 0, 0, 1, 0, 0]  # the 4th answer is "more than 3"
    [message] = await claim_due(redis_client, app, now=T0)
    assert message.notice.event is NotificationEvent.REJECTED_BURST
    assert "more than 3" in message.notice.error


@pytest.mark.redis
async def test_attempts_are_kept_newest_first_and_filterable(redis_client: Redis) -> None:
    app = make_app(ops())
    for n, result in enumerate(("sent", "failed", "sent")):
        attempt = NotificationAttempt(
            ts=T0 + n, notification="ops", event="deadLetter", integration_id=f"I{n}",
            result=result,
        )  # fmt: skip
        await record_attempt(redis_client, app.keys, attempt)

    attempts = await read_attempts(redis_client, app.keys)
    assert [a.integration_id for a in attempts] == ["I2", "I1", "I0"]
    failed = await read_attempts(redis_client, app.keys, result="failed")
    assert [a.integration_id for a in failed] == ["I1"]


@pytest.mark.redis
async def test_the_defaults_are_the_documented_ones_300_s_and_more_than_20(
    redis_client: Redis,
) -> None:
    """docs/user-guide.md: `minIntervalSeconds` 300 and `rejectedBurstThreshold` 20 when unset."""
    app = make_app({"name": "ops", "url": "https://hooks.example/T0/B0",
                    "events": ["deadLetter", "rejectedBurst"]})  # fmt: skip
    noted = []
    for _ in range(22):
        count = await note_unauthorized(
            redis_client, app, integration_id="INT1", integration="orders",
            error="Invalid webhook signature", now=T0,
        )  # fmt: skip
        noted.append(count)
    assert noted == [0] * 20 + [1, 0]  # the 21st answer is "more than 20"

    await dead_letter(redis_client, app, "j1", T0)
    due = await claim_due(redis_client, app, now=T0)
    assert {m.notice.event for m in due} == {DEAD, NotificationEvent.REJECTED_BURST}
    await dead_letter(redis_client, app, "j2", T0 + 1)
    assert await claim_due(redis_client, app, now=T0 + 299) == []
    [later] = await claim_due(redis_client, app, now=T0 + 300)
    assert later.notice.job_id == "j2"


@pytest.mark.redis
async def test_an_error_is_cut_to_1000_characters_before_it_is_stored_or_sent(
    redis_client: Redis,
) -> None:
    app = make_app(ops())
    await note_event(
        redis_client, app, DEAD, integration_id="INT1", integration="orders", job_id="j1",
        error="é" + "x" * 100_000, now=T0,
    )  # fmt: skip
    [message] = await claim_due(redis_client, app, now=T0)
    assert message.notice.error == "é" + "x" * 999


@pytest.mark.redis
async def test_about_the_last_1000_attempts_are_kept(redis_client: Redis) -> None:
    """docs/user-guide.md: "the last 1,000 per application" (Redis trims the stream whole
    nodes at a time, so up to a node's 100 entries more)."""
    app = make_app(ops())
    for n in range(2500):
        attempt = NotificationAttempt(
            ts=T0 + n, notification="ops", event="deadLetter", integration_id=f"I{n}",
            result="sent",
        )  # fmt: skip
        await record_attempt(redis_client, app.keys, attempt)
    assert 1000 <= await redis_client.xlen(app.keys.notify_log) <= 1100
    attempts = await read_attempts(redis_client, app.keys, limit=1000)
    assert len(attempts) == 1000
    assert [a.integration_id for a in attempts[:2]] == ["I2499", "I2498"]


@pytest.mark.redis
async def test_an_error_with_a_lone_surrogate_is_noted_escaped(redis_client: Redis) -> None:
    """A rewrite's error can hold half of a surrogate pair (a string cut inside an emoji):
    UTF-8 cannot carry it, and Redis would refuse the event; it is noted as its escape."""
    app = make_app(ops())
    await note_event(
        redis_client, app, DEAD, integration_id="INT1", integration="orders", job_id="j1",
        error="bad \ud83d", now=T0,
    )  # fmt: skip
    [message] = await claim_due(redis_client, app, now=T0)
    assert message.notice.error == "bad \\ud83d"
