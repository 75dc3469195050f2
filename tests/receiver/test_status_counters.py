"""What the real receiver counts is what the operator reads into Integration status."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from retrieve_operator.status_counters import live_status, read_counts
from tests.receiver.conftest import (
    ORDER_ID,
    ClientFactory,
    make_app,
    make_integration,
    make_provider,
)

pytestmark = pytest.mark.redis


async def test_accepted_and_refused_requests_show_in_the_status_counters(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(make_provider(app))
    for n in range(3):
        response = await client.post(f"/integration/{ORDER_ID}", json={"n": n})
        assert response.status == 200
    response = await client.post(f"/integration/{ORDER_ID}", data=b"{not json")
    assert response.status == 400

    counts = await read_counts(redis_client, app.keys, [ORDER_ID], time.time())

    mine = counts.integrations[ORDER_ID]
    assert (mine.received, mine.rejected, mine.failed, mine.dead_letters) == (3, 1, 0, 0)
    assert mine.last_received is not None
    assert abs(mine.last_received - time.time()) < 10
    status = live_status(mine, counts.queue_depth)
    assert status["queueDepth"] == 3  # no worker: every job waits
    assert status["receivedLastHour"] == 3
    assert status["lastReceivedAt"].endswith("Z")
