"""The enqueue script: record format shared with the log store, batching, atomic dedupe."""

from __future__ import annotations

import asyncio
from unittest.mock import ANY

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from retrieve_core.config import SecretStore
from retrieve_core.enqueue import Delivery, Enqueuer, Outcome
from retrieve_core.job import JOB_FIELD
from retrieve_core.keys import COUNTER_DUPLICATE, COUNTER_RECEIVED, AppKeys, counter_bucket
from retrieve_core.logstore import LogRecord, LogStatus
from retrieve_core.provider import ConfigProvider, ConfigSnapshot
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider
from tests.support.redis_faults import send_on_torn_down_connection
from tests.support.redis_server import RedisServer


@pytest.mark.redis
@pytest.mark.parametrize(
    ("body", "limit"), [(b'{"a": "\xc3\xa9"}', 100), (b"x" * 50, 10), (b"", 0), (b"\xff\xfe", 9)]
)
async def test_the_queued_record_matches_the_log_store_encoding(
    redis_client: Redis, body: bytes, limit: int
) -> None:
    keys = AppKeys("shop", "yourapp")
    delivery = Delivery(
        job_id="018f00000000a1b2c3d4e5f6a7b8c9d0",
        job_json=b'{"id": "018f00000000a1b2c3d4e5f6a7b8c9d0"}',
        integration_id="ABC123",
        received_at=1_700_000_000.123456,
        source_ip="203.0.113.5",
        format="json",
        body=body,
        payload_limit=limit,
        log_max_age_seconds=60,
    )
    assert await Enqueuer(redis_client).store(keys, delivery) is Outcome.QUEUED

    expected = LogRecord(
        id=delivery.job_id,
        ts=delivery.received_at,
        source_ip="203.0.113.5",
        integration_id="ABC123",
        http_status=200,
        status=LogStatus.QUEUED,
        format="json",
        payload=body[:limit].decode("utf-8", "replace"),
        payload_truncated=len(body) > limit,
    ).to_hash()
    stored = await redis_client.hgetall(keys.log_record(delivery.job_id))
    assert stored == {name.encode(): value.encode() for name, value in expected.items()}
    assert 0 < await redis_client.ttl(keys.log_record(delivery.job_id)) <= 60
    assert await redis_client.zscore(keys.log_index, delivery.job_id) == delivery.received_at
    job = {JOB_FIELD.encode(): delivery.job_json}
    assert await redis_client.xrange(keys.jobs) == [(ANY, job)]
    counters = keys.counters("ABC123", counter_bucket(delivery.received_at))
    assert await redis_client.hgetall(counters) == {COUNTER_RECEIVED.encode(): b"1"}
    assert (
        await redis_client.hget(keys.last_received, "ABC123") == repr(delivery.received_at).encode()
    )


@pytest.mark.redis
async def test_one_batch_spans_applications_and_settles_each_caller(redis_client: Redis) -> None:
    enqueuer = Enqueuer(redis_client)
    apps = [AppKeys("shop", "a"), AppKeys("shop", "b"), AppKeys("other", "a")]

    def delivery(n: int, dedupe_id: str | None = None) -> Delivery:
        return Delivery(
            job_id=f"job-{n}", job_json=b'{"n": %d}' % n, integration_id="ABC123",
            received_at=1_700_000_000.0 + n, source_ip="127.0.0.1", format="json",
            body=b"{}", payload_limit=100, log_max_age_seconds=600,
            dedupe_id=dedupe_id, dedupe_ttl_seconds=60 if dedupe_id else 0,
        )  # fmt: skip

    outcomes = await asyncio.gather(
        *(enqueuer.store(apps[n % 3], delivery(n, "same" if n >= 30 else None)) for n in range(60))
    )
    # Without a delivery id everything is queued; with one, once per application.
    assert outcomes.count(Outcome.QUEUED) == 30 + 3
    assert outcomes.count(Outcome.DUPLICATE) == 27
    for index, keys in enumerate(apps):
        assert await redis_client.xlen(keys.jobs) == 10 + 1
        assert await redis_client.zcard(keys.log_index) == 20
        totals: dict[bytes | str, int] = {}
        for bucket in {counter_bucket(1_700_000_000.0 + n) for n in range(60)}:
            for field, value in (
                await redis_client.hgetall(keys.counters("ABC123", bucket))
            ).items():
                totals[field] = totals.get(field, 0) + int(value)
            assert await redis_client.ttl(keys.counters("ABC123", bucket)) > 0
        assert totals == {COUNTER_RECEIVED.encode(): 11, COUNTER_DUPLICATE.encode(): 9}
        # The last accepted delivery of this application: n = 30 + index (the first "same").
        last = await redis_client.hget(keys.last_received, "ABC123")
        assert last == repr(1_700_000_000.0 + 30 + index).encode()
    await redis_client.script_flush()  # as after a Redis restart: NOSCRIPT, loaded again
    assert await enqueuer.store(apps[0], delivery(99)) is Outcome.QUEUED


@pytest.mark.redis
async def test_a_failed_call_fails_each_of_its_callers(redis_client: Redis) -> None:
    keys = AppKeys("shop", "yourapp")
    await redis_client.set(keys.jobs, "not a stream")  # XADD answers WRONGTYPE
    delivery = Delivery(
        job_id="j", job_json=b"{}", integration_id="ABC123", received_at=1.0,
        source_ip="127.0.0.1", format="json", body=b"", payload_limit=0, log_max_age_seconds=60,
    )  # fmt: skip
    enqueuer = Enqueuer(redis_client)
    results = await asyncio.gather(
        *(enqueuer.store(keys, delivery) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ResponseError) and "WRONGTYPE" in str(r) for r in results)
    await redis_client.delete(keys.jobs)
    assert await enqueuer.store(keys, delivery) is Outcome.QUEUED  # the connection is usable


@pytest.mark.redis
async def test_a_stopped_redis_fails_callers_without_hanging(
    private_redis_server: RedisServer,
) -> None:
    client = Redis.from_url(private_redis_server.url, socket_timeout=1)
    keys = AppKeys("shop", "yourapp")
    delivery = Delivery(
        job_id="j", job_json=b"{}", integration_id="ABC123", received_at=1.0,
        source_ip="127.0.0.1", format="json", body=b"", payload_limit=0, log_max_age_seconds=60,
    )  # fmt: skip
    enqueuer = Enqueuer(client, timeout=3)
    try:
        assert await enqueuer.store(keys, delivery) is Outcome.QUEUED
        private_redis_server.stop()
        with pytest.raises(RedisError):
            await enqueuer.store(keys, delivery)
        private_redis_server.start()
        assert await enqueuer.store(keys, delivery) is Outcome.QUEUED  # reconnected, reloaded
    finally:
        await client.aclose()


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


@pytest.mark.redis
async def test_with_durability_and_no_replica_to_confirm_the_answer_is_503(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[make_integration("ABC123")],
        redis={"durability": {"replicas": 1, "timeoutMs": 20}},
    )
    client = await receiver_client(make_provider(app))

    response = await client.post("/integration/ABC123", json={"a": 1})

    assert response.status == 503
    assert await response.json() == {"result": False, "error": "Queue unavailable, retry later"}


@pytest.mark.redis
async def test_a_transport_error_redis_py_lets_out_of_the_store_is_a_503_not_a_500(
    receiver_client: ClientFactory, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen under a cluster resharding: redis-py's AttributeError instead of ConnectionError.
    async def torn_down(self: Enqueuer, keys: AppKeys, delivery: Delivery) -> Outcome:
        await send_on_torn_down_connection("127.0.0.1", redis_server.port)
        raise AssertionError("unreachable")

    monkeypatch.setattr(Enqueuer, "store", torn_down)
    client = await receiver_client(make_provider(make_app(integrations=[make_integration("A1")])))

    response = await client.post("/integration/A1", json={"a": 1})

    assert response.status == 503
    assert await response.json() == {"result": False, "error": "Queue unavailable, retry later"}


@pytest.mark.redis
@pytest.mark.parametrize("leaked", [True, False], ids=["redis-py-transport-error", "a-bug"])
async def test_a_refusal_keeps_its_answer_when_its_log_record_cannot_be_stored(
    receiver_client: ClientFactory,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    leaked: bool,
) -> None:
    async def failing_write(*args: object, **kwargs: object) -> None:
        if leaked:
            await send_on_torn_down_connection("127.0.0.1", redis_server.port)
        raise KeyError("a bug in the log write")

    monkeypatch.setattr("retrieve_receiver.app.add_bounded_record", failing_write)
    client = await receiver_client(make_provider(make_app(integrations=[make_integration("A1")])))

    response = await client.post(
        "/integration/A1", data=b'{"a": ', headers={"Content-Type": "application/json"}
    )

    assert response.status == 400
    body = await response.json()
    assert body["result"] is False
    assert body["error"].startswith("Invalid JSON payload: ")
