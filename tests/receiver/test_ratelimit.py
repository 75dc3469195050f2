"""Rate limits: token buckets in a real Redis, shared by every receiver instance of an app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_core.logstore import LogStore
from retrieve_core.models import RateLimitSpec
from retrieve_receiver.ratelimit import retry_after_seconds
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider

OK = {"result": True, "error": ""}
LIMITED = {"result": False, "error": "Rate limit exceeded, retry later"}


def limit(rps: float, burst: int | None = None) -> dict[str, Any]:
    return {"requestsPerSecond": rps, **({"burst": burst} if burst is not None else {})}


@pytest.mark.unit
def test_burst_defaults_to_the_rate_rounded_up() -> None:
    assert RateLimitSpec(requests_per_second=2.5).capacity == 3
    assert RateLimitSpec(requests_per_second=0.1).capacity == 1
    assert RateLimitSpec(requests_per_second=1, burst=50).capacity == 50


@pytest.mark.unit
@pytest.mark.parametrize(("wait_ms", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2)])
def test_retry_after_is_whole_seconds_at_least_one(wait_ms: int, seconds: int) -> None:
    assert retry_after_seconds(wait_ms) == seconds


@pytest.mark.redis
async def test_integration_over_its_burst_gets_429_with_retry_after_and_a_log_record(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("LIM1", rateLimit=limit(0.5, 3))])
    client = await receiver_client(make_provider(app))

    answers = [await client.post("/integration/LIM1", data=b'{"n": 1}') for _ in range(5)]

    assert [a.status for a in answers] == [200, 200, 200, 429, 429]
    refused = answers[3]
    assert await refused.json() == LIMITED
    assert refused.content_type == "application/json"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2  # one token every 2 s
    assert await redis_client.xlen(app.keys.jobs) == 3
    records = await LogStore(redis_client, app.keys).query()
    assert sorted(r.http_status for r in records) == [200, 200, 200, 429, 429]
    assert {r.error for r in records if r.http_status == 429} == {LIMITED["error"]}


@pytest.mark.redis
async def test_two_receiver_instances_share_one_limit(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("LIM2", rateLimit=limit(0.2, 6))])
    provider = make_provider(app)
    first = await receiver_client(provider)
    second = await receiver_client(provider)

    async def send(index: int) -> int:
        client = first if index % 2 else second
        answer = await client.post("/integration/LIM2", data=b"{}")
        return answer.status

    statuses = await asyncio.gather(*(send(i) for i in range(20)))

    assert statuses.count(200) == 6
    assert statuses.count(429) == 14
    assert await redis_client.xlen(app.keys.jobs) == 6


@pytest.mark.redis
async def test_application_limit_covers_all_its_integrations(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[make_integration("APPA"), make_integration("APPB")],
        rateLimit=limit(0.1, 4),
    )
    client = await receiver_client(make_provider(app))

    statuses = [
        (await client.post(f"/integration/{iid}", data=b"{}")).status
        for iid in ("APPA", "APPB", "APPA", "APPB", "APPA", "APPB")
    ]

    assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.mark.redis
async def test_tokens_refill_at_the_configured_rate(receiver_client: ClientFactory) -> None:
    # One token a second: the 429 has a whole second to be seen even on a stalled machine.
    app = make_app(integrations=[make_integration("FAST", rateLimit=limit(1, 1))])
    client = await receiver_client(make_provider(app))

    assert (await client.post("/integration/FAST", data=b"{}")).status == 200
    assert (await client.post("/integration/FAST", data=b"{}")).status == 429
    await asyncio.sleep(1.1)
    assert (await client.post("/integration/FAST", data=b"{}")).status == 200


@pytest.mark.redis
async def test_limit_is_checked_after_the_whitelist_and_before_the_body(
    receiver_client: ClientFactory,
) -> None:
    app = make_app(integrations=[make_integration("ORDER1", rateLimit=limit(0.1, 1))])
    provider = make_provider(app)
    client = await receiver_client(provider)
    stranger = await receiver_client(provider, source="127.0.0.2")

    assert (await client.post("/integration/ORDER1", data=b"{}")).status == 200
    # Exhausted: even a body over the size limit is answered 429, unread.
    too_big = await client.post("/integration/ORDER1", data=b"x" * (2 * 1024 * 1024))
    assert (too_big.status, await too_big.json()) == (429, LIMITED)
    # An unauthorized sender learns nothing, not even that a limit exists.
    refused = await stranger.post("/integration/ORDER1", data=b"{}")
    assert refused.status == 403
    unknown = await client.post("/integration/NOPE", data=b"{}")
    assert unknown.status == 404


@pytest.mark.redis
async def test_no_limit_configured_writes_no_bucket(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("FREE")])
    client = await receiver_client(make_provider(app))

    for _ in range(5):
        assert (await client.post("/integration/FREE", data=b"{}")).status == 200

    assert [k async for k in redis_client.scan_iter(match="*:rate:*")] == []
