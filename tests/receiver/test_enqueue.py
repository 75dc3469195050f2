"""The enqueue script: record format shared with the log store, batching, atomic dedupe."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from retrieve_core.config import SecretStore
from retrieve_core.logstore import LogRecord, LogStatus
from retrieve_core.provider import ConfigProvider, ConfigSnapshot
from retrieve_receiver.enqueue import Delivery, queued_record_fields
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "limit"), [(b'{"a": "\xc3\xa9"}', 100), (b"x" * 50, 10), (b"", 0)]
)
def test_queued_record_fields_match_the_log_store_encoding(body: bytes, limit: int) -> None:
    delivery = Delivery(
        job_id="018f00000000a1b2c3d4e5f6a7b8c9d0",
        job_json="{}",
        integration_id="ABC123",
        received_at=1_700_000_000.123456,
        source_ip="203.0.113.5",
        format="json",
        body=body,
        payload_limit=limit,
        log_max_age_seconds=60,
    )
    payload = body[:limit].decode("utf-8", "replace")
    expected = LogRecord(
        id=delivery.job_id,
        ts=delivery.received_at,
        source_ip="203.0.113.5",
        integration_id="ABC123",
        http_status=200,
        status=LogStatus.QUEUED,
        format="json",
        payload=payload,
        payload_truncated=len(body) > limit,
    ).to_hash()
    assert queued_record_fields(delivery) == expected


@pytest.mark.redis
async def test_concurrent_requests_are_all_stored(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    responses = await asyncio.gather(
        *(client.post("/integration/ABC123", json={"n": n}) for n in range(60))
    )
    assert [r.status for r in responses] == [200] * 60
    assert await redis_client.xlen(app.keys.jobs) == 60
    assert await redis_client.zcard(app.keys.log_index) == 60


@pytest.mark.redis
async def test_concurrent_duplicates_enqueue_exactly_once(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("EV1", dedupe={"header": "X-Event-Id"})])
    client = await receiver_client(make_provider(app))
    responses = await asyncio.gather(
        *(
            client.post("/integration/EV1", json={"n": n}, headers={"X-Event-Id": "same"})
            for n in range(20)
        )
    )
    assert [r.status for r in responses] == [200] * 20
    assert await redis_client.xlen(app.keys.jobs) == 1
    assert await redis_client.zcard(app.keys.log_index) == 20


class BrokenProvider(ConfigProvider):
    """A config source whose snapshot cannot be read, to provoke an unexpected error."""

    @property
    def current(self) -> ConfigSnapshot:
        raise RuntimeError("secret internals")


@pytest.mark.redis
async def test_unexpected_errors_are_contract_json_without_a_trace(
    receiver_client: ClientFactory,
) -> None:
    provider = BrokenProvider()
    provider.update((make_app(integrations=[make_integration("ABC123")]),), SecretStore())
    client = await receiver_client(provider)
    response = await client.post("/integration/ABC123", json={})
    assert response.status == 500
    assert await response.json() == {"result": False, "error": "Internal error"}
