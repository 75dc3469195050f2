"""Admin port: health, readiness (config + Redis), metrics and the log API; Redis outages."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from retrieve_core.config import SecretStore
from retrieve_core.provider import ConfigProvider
from retrieve_receiver.admin import init_admin_app
from retrieve_receiver.console import ConsoleSettings
from retrieve_receiver.metrics import ReceiverMetrics
from retrieve_receiver.settings import ReceiverSettings
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


TOKEN = "admin-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def admin_client(
    aiohttp_client: AiohttpClient,
    provider: ConfigProvider,
    redis_url: str,
    metrics: ReceiverMetrics | None = None,
    *,
    token: str | None = TOKEN,
    admin_hosts: tuple[str, ...] = (),
) -> TestClient[web.Request, web.Application]:
    """The admin app; with a console `token`, requests carry it unless they say otherwise."""
    settings = ReceiverSettings(redis_url=redis_url, redis_timeout=5.0)
    if admin_hosts:
        settings = settings.with_overrides(admin_hosts=admin_hosts)
    console = ConsoleSettings(token=token) if token is not None else None
    app = init_admin_app(settings, provider, metrics=metrics, console=console)
    return await aiohttp_client(app, headers=BEARER if token is not None else None)


async def test_healthz_answers_while_alive(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await admin_client(aiohttp_client, ConfigProvider(), redis_server.url)
    response = await client.get("/healthz")
    assert response.status == 200


async def test_readyz_waits_for_config_then_redis(
    aiohttp_client: AiohttpClient, private_redis_server: RedisServer
) -> None:
    provider = ConfigProvider()
    client = await admin_client(aiohttp_client, provider, private_redis_server.url)

    not_loaded = await client.get("/readyz")
    assert not_loaded.status == 503
    assert (await not_loaded.json())["ready"] is False

    provider.update((make_app(),), SecretStore())
    assert (await client.get("/readyz")).status == 200

    private_redis_server.stop()
    down = await client.get("/readyz")
    assert down.status == 503
    assert "redis" in (await down.json())["reason"]


async def test_redis_down_gives_503_then_recovers_after_restart(
    aiohttp_client: AiohttpClient,
    receiver_client: ClientFactory,
    private_redis_server: RedisServer,
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    provider = make_provider(app)
    metrics = ReceiverMetrics()
    client = await receiver_client(
        provider, redis_url=private_redis_server.url, metrics=metrics, redis_timeout=5.0
    )
    admin = await admin_client(aiohttp_client, provider, private_redis_server.url, metrics)
    assert (await client.post("/integration/ABC123", json={"n": 1})).status == 200

    private_redis_server.stop()
    down = await client.post("/integration/ABC123", json={"n": 2})
    assert down.status == 503
    assert await down.json() == {"result": False, "error": "Queue unavailable, retry later"}
    assert (await admin.get("/readyz")).status == 503
    # refusals still answer their own status, not 5xx, while the log store is down
    assert (await client.post("/integration/nope", json={})).status == 404

    private_redis_server.start()
    up = await client.post("/integration/ABC123", json={"n": 3})
    assert up.status == 200
    assert (await admin.get("/readyz")).status == 200

    redis = Redis.from_url(private_redis_server.url)
    try:  # AOF with fsync always: what was acknowledged survived the restart
        assert await redis.xlen(app.keys.jobs) == 2
    finally:
        await redis.aclose()
    text = await (await admin.get("/metrics")).text()
    assert "retrieve_receiver_enqueue_failures_total 1.0" in text


async def test_redis_out_of_memory_gives_503_never_200(
    receiver_client: ClientFactory, private_redis_server: RedisServer
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app), redis_url=private_redis_server.url)
    redis = Redis.from_url(private_redis_server.url)
    try:
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", "1")
        response = await client.post("/integration/ABC123", json={"x": 1})
        assert response.status == 503
        assert await response.json() == {"result": False, "error": "Queue unavailable, retry later"}
        await redis.config_set("maxmemory", "0")
        assert await redis.xlen(app.keys.jobs) == 0
    finally:
        await redis.aclose()


async def test_metrics_count_requests_by_integration_and_status(
    aiohttp_client: AiohttpClient, receiver_client: ClientFactory, redis_server: RedisServer
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    provider = make_provider(app)
    metrics = ReceiverMetrics()
    client = await receiver_client(provider, metrics=metrics)
    admin = await admin_client(aiohttp_client, provider, redis_server.url, metrics)
    await client.post("/integration/ABC123", json={})
    await client.post("/integration/ABC123", json={})
    await client.post("/integration/ABC123", data="{")
    await client.post("/integration/random-id-1", json={})

    response = await admin.get("/metrics")
    text = await response.text()
    assert response.status == 200
    assert 'retrieve_receiver_requests_total{integration="ABC123",status="200"} 2.0' in text
    assert 'retrieve_receiver_requests_total{integration="ABC123",status="400"} 1.0' in text
    assert 'retrieve_receiver_requests_total{integration="unknown",status="404"} 1.0' in text
    assert "random-id-1" not in text
    assert "retrieve_receiver_request_seconds_bucket" in text


async def test_log_api_returns_newest_first_and_filters(
    aiohttp_client: AiohttpClient,
    receiver_client: ClientFactory,
    redis_server: RedisServer,
    redis_client: Redis,
) -> None:
    app = make_app(integrations=[make_integration("A1"), make_integration("B2")])
    provider = make_provider(app)
    client = await receiver_client(provider)
    admin = await admin_client(aiohttp_client, provider, redis_server.url)
    await client.post("/integration/A1", json={"n": 1})
    await client.post("/integration/B2", json={"n": 2})
    await client.post("/integration/A1", data="not json")

    everything = await (await admin.get("/api/logs")).json()
    assert [r["integration_id"] for r in everything["records"]] == ["A1", "B2", "A1"]
    assert [r["http_status"] for r in everything["records"]] == [400, 200, 200]

    only_a = await (await admin.get("/api/logs", params={"integration": "A1"})).json()
    assert [r["http_status"] for r in only_a["records"]] == [400, 200]

    rejected = await (await admin.get("/api/logs", params={"status": "rejected"})).json()
    assert [r["integration_id"] for r in rejected["records"]] == ["A1"]

    limited = await (await admin.get("/api/logs", params={"limit": "1"})).json()
    assert len(limited["records"]) == 1

    wrong = await admin.get("/api/logs", params={"app": "other"})
    assert wrong.status == 404


async def test_log_api_needs_an_app_when_several_are_served(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    provider = make_provider(make_app("shop"), make_app("blog"))
    admin = await admin_client(aiohttp_client, provider, redis_server.url)
    response = await admin.get("/api/logs")
    assert response.status == 400
    assert (await (await admin.get("/api/logs", params={"app": "blog"})).json())[
        "application"
    ] == "blog"


async def test_log_api_needs_the_console_token_and_probes_and_metrics_stay_open(
    aiohttp_client: AiohttpClient,
    receiver_client: ClientFactory,
    redis_server: RedisServer,
) -> None:
    """Before: `/api/logs` answered every payload to anyone reaching the port (issue 12, 3)."""
    app = make_app(integrations=[make_integration("A1")])
    provider = make_provider(app)
    client = await receiver_client(provider)
    assert (await client.post("/integration/A1", json={"card": "4111"})).status == 200
    admin = await admin_client(aiohttp_client, provider, redis_server.url, token=None)
    closed = await admin_client(aiohttp_client, provider, redis_server.url)
    anonymous = {"Authorization": ""}

    for headers in (anonymous, {"Authorization": "Bearer wrong"}):
        refused = await closed.get("/api/logs", headers=headers)
        assert refused.status == 401
        assert await refused.json() == {"result": False, "error": "Console token required"}
    # No console token configured: the log API stays closed, there is nothing to present.
    assert (await admin.get("/api/logs")).status == 401
    assert (await admin.get("/api/logs", headers=BEARER)).status == 401

    allowed = await closed.get("/api/logs")
    assert allowed.status == 200
    assert "4111" in (await allowed.json())["records"][0]["payload"]
    for client_ in (admin, closed):
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = await client_.get(path, headers={**anonymous, "Host": "evil.example"})
            assert answer.status == 200, path


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8081", True),
        ("localhost:8081", True),
        ("[::1]:8081", True),
        ("10.244.1.7:8081", True),
        ("evil.example:8081", False),
        ("localhost.evil.example", False),
        ("yourapp-receiver.shop.svc.evil.example", False),
        ("", False),
    ],
)
async def test_the_admin_port_refuses_a_host_header_it_does_not_answer_to(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, host: str, allowed: bool
) -> None:
    """A page whose name was rebound to the admin address sends its own name (DNS rebinding)."""
    provider = make_provider(make_app(integrations=[make_integration("A1")]))
    admin = await admin_client(aiohttp_client, provider, redis_server.url)
    for path in ("/api/logs", "/console/api/overview"):
        answer = await admin.get(path, headers={"Host": host})
        if allowed:
            assert answer.status == 200, (host, path)
        else:
            assert answer.status == 403, (host, path)
            assert await answer.json() == {
                "result": False,
                "error": "Host not allowed on the admin port",
            }


async def test_admin_host_names_are_allowed_by_name_or_by_suffix(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    provider = make_provider(make_app(integrations=[make_integration("A1")]))
    admin = await admin_client(
        aiohttp_client, provider, redis_server.url, admin_hosts=(".svc", "admin.internal")
    )
    for host, status in (
        ("yourapp-receiver.shop.svc:8081", 200),
        ("ADMIN.internal.", 200),
        ("other.internal", 403),
        ("svc", 403),
    ):
        assert (await admin.get("/api/logs", headers={"Host": host})).status == status, host
