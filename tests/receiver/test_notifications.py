"""The receiver's part of error notifications: bursts of 401/403 answers become an event."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from retrieve_core.config import SecretStore
from retrieve_core.keys import COUNTER_UNAUTHORIZED, AppKeys
from retrieve_core.models import NotificationEvent
from retrieve_core.notifications import claim_due
from tests.receiver.conftest import (
    ORDER_ID,
    ClientFactory,
    make_app,
    make_integration,
    make_provider,
)
from tests.support.counters import counter_total

pytestmark = pytest.mark.redis

SIGNED = {"preset": "shopify", "secretRefs": [{"name": "shopify", "key": "secret"}]}


def burst_notification(threshold: int) -> dict[str, object]:
    return {
        "name": "security",
        "url": "https://hooks.example/T0/B0",
        "events": ["rejectedBurst"],
        "rejectedBurstThreshold": threshold,
    }


async def test_more_401_answers_than_the_threshold_within_a_minute_note_one_rejected_burst(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[make_integration(ORDER_ID, verify=SIGNED)],
        notifications=[burst_notification(2)],
    )
    secrets = SecretStore()
    secrets.put_secret(app.namespace, "shopify", {"secret": b"key"})
    client = await receiver_client(make_provider(app, secrets=secrets))

    for _ in range(5):
        response = await client.post(f"/integration/{ORDER_ID}", json={"forged": True})
        assert response.status == 401

    claimed = await claim_due(redis_client, app, now=time.time() + 1)
    [message] = claimed
    assert message.notice.event is NotificationEvent.REJECTED_BURST
    assert message.notice.count == 1  # noted once for the minute, not once per answer
    assert message.notice.integration_id == ORDER_ID
    assert message.notice.integration == f"int-{ORDER_ID.lower()}"
    assert "Invalid webhook signature" in message.notice.error


async def test_a_sender_outside_the_whitelist_counts_and_apps_without_the_event_count_nothing(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    watched = make_app(
        "watched",
        allowed=["203.0.113.9"],
        integrations=[make_integration(ORDER_ID, app="watched")],
        notifications=[burst_notification(1)],
    )
    quiet = make_app(
        "quiet", allowed=["203.0.113.9"], integrations=[make_integration("Q1", app="quiet")]
    )
    client = await receiver_client(make_provider(watched, quiet))
    start = time.time()

    # Three over a threshold of 1: however a minute's boundary splits them, one minute has 2.
    for integration_id in (ORDER_ID, ORDER_ID, ORDER_ID, "Q1", "Q1"):
        response = await client.post(f"/integration/{integration_id}", json={})
        assert response.status == 403

    async def unauthorized(keys: AppKeys, integration_id: str) -> int:
        return await counter_total(
            redis_client, keys, integration_id, COUNTER_UNAUTHORIZED, since=start
        )

    assert await unauthorized(watched.keys, ORDER_ID) == 3
    assert await unauthorized(quiet.keys, "Q1") == 0
    assert len(await claim_due(redis_client, watched, now=time.time() + 1)) == 1
