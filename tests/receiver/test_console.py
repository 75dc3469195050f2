"""The console's protection and JSON API on the real admin app factory, with a real Redis."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from retrieve_core.keys import COUNTER_REJECTED, COUNTER_TTL_SECONDS, counter_bucket
from retrieve_core.notifications import NotificationAttempt, record_attempt
from retrieve_receiver import console as console_module
from retrieve_receiver.admin import init_admin_app
from retrieve_receiver.console import ConsoleSettings, QueueHistory, QueueSample
from retrieve_receiver.metrics import ReceiverMetrics
from retrieve_receiver.settings import ReceiverSettings
from tests.receiver.conftest import make_app, make_integration, make_provider
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

TOKEN = "t0ken-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CSRF = {**BEARER, "X-Retrieve-Console": "1"}
APP = make_app(integrations=[make_integration("ORDERS1")])


async def console_client(
    aiohttp_client: AiohttpClient, redis_url: str, console: ConsoleSettings | None
) -> TestClient[web.Request, web.Application]:
    settings = ReceiverSettings(redis_url=redis_url, redis_timeout=5.0)
    return await aiohttp_client(init_admin_app(settings, make_provider(APP), console=console))


async def test_console_is_absent_without_a_token(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETRIEVE_CONSOLE_TOKEN", raising=False)
    client = await console_client(aiohttp_client, redis_server.url, None)
    assert (await client.get("/console/")).status == 404
    assert (await client.get("/console/api/overview", headers=BEARER)).status == 404


async def test_the_token_comes_from_the_environment(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRIEVE_CONSOLE_TOKEN", TOKEN)
    client = await console_client(aiohttp_client, redis_server.url, None)
    assert (await client.get("/console/api/overview", headers=BEARER)).status == 200


async def test_requests_without_the_right_token_are_refused(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    assert (await client.get("/console/")).status == 401
    assert (await client.get("/console/api/overview")).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get("/console/api/overview", headers=wrong)).status == 401
    assert (await client.get("/console/?token=nope", allow_redirects=False)).status == 401
    assert (await client.get("/console/static/console.js")).status == 401
    # The rest of the admin port is unchanged.
    assert (await client.get("/healthz")).status == 200


async def test_a_token_in_the_query_becomes_a_strict_http_only_cookie(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    answer = await client.get(f"/console/?token={TOKEN}", allow_redirects=False)
    assert answer.status == 303
    assert answer.headers["Location"] == "/console/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console/" in cookie
    page = await client.get("/console/")  # the client keeps the cookie
    assert page.status == 200
    assert "Retrieve console" in await page.text()
    assert page.headers["X-Frame-Options"] == "DENY"
    assert (await client.get("/console/static/console.js")).status == 200


CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"


@pytest.mark.parametrize(
    "path",
    ["/console/", "/console/static/console.js", "/console/api/overview", "/console/api/logs"],
)
async def test_console_answers_carry_a_strict_csp_and_are_never_cached(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, path: str
) -> None:
    """docs/user-guide.md: "pages are sent with a strict Content-Security-Policy (`default-src
    'self'`, no inline script), `X-Frame-Options: DENY` and `Cache-Control: no-store`": payloads
    (customer data) must not stay in a browser's or a proxy's cache."""
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    answer = await client.get(path, headers=BEARER)
    assert answer.status == 200, await answer.text()
    assert answer.headers["Content-Security-Policy"] == CSP
    assert "unsafe-inline" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_console_page_has_no_inline_script_the_csp_would_block(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    page = await (await client.get("/console/", headers=BEARER)).text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S | re.I)
    assert scripts
    assert all("src=" in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", page, re.I)  # no inline event handlers either


async def test_the_console_token_is_compared_in_constant_time(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/user-guide.md: "the comparison is constant-time" (bearer, cookie and `?token=`)."""
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what `console` calls
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    assert (await client.get("/console/api/overview", headers=BEARER)).status == 200
    wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    assert (await client.get("/console/api/overview", headers=wrong)).status == 401
    assert (await client.get("/console/?token=nope", allow_redirects=False)).status == 401
    assert compared == [
        (TOKEN.encode(), TOKEN.encode()),
        (f"{TOKEN[:-1]}x".encode(), TOKEN.encode()),
        (b"nope", TOKEN.encode()),
    ]


async def test_post_needs_the_anti_csrf_header(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    url = "/console/api/replay?integration=ORDERS1"
    refused = await client.post(url, headers=BEARER)
    assert refused.status == 403
    assert "X-Retrieve-Console" in (await refused.json())["error"]
    accepted = await client.post(url, headers=CSRF)
    assert accepted.status == 200
    assert await accepted.json() == {"integration": "ORDERS1", "replayed": 0}
    assert (await client.post("/console/api/replay?integration=NOPE", headers=CSRF)).status == 404


async def test_overview_sums_the_last_hour_of_counters_and_reads_queue_lengths(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    redis = Redis.from_url(redis_server.url)
    now = time.time()
    try:
        for minutes_ago, count in ((0, 2), (30, 3), (90, 100)):  # 90 minutes ago: outside
            key = APP.keys.counters("ORDERS1", counter_bucket(now - minutes_ago * 60))
            await redis.hincrby(key, "received", count)
            await redis.hincrby(key, COUNTER_REJECTED, 1)
            await redis.expire(key, COUNTER_TTL_SECONDS)
        await redis.xadd(APP.keys.jobs, {"job": "x"})
        await redis.xadd(APP.keys.dead_letters, {"job": "y"})
        await redis.hset(APP.keys.last_received, "ORDERS1", str(now))
    finally:
        await redis.aclose()
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    data = await (await client.get("/console/api/overview", headers=BEARER)).json()
    [app] = data["applications"]
    assert (app["queueDepth"], app["deadLetters"]) == (1, 1)
    [integration] = app["integrations"]
    assert integration["received"] == 5
    assert integration["rejected"] == 2
    assert integration["lastReceivedAt"] == pytest.approx(now)
    assert integration["webhookURL"] == "https://webhook-yourapp.retrievetl.com/integration/ORDERS1"


def test_queue_history_is_a_bounded_ring_buffer() -> None:
    history = QueueHistory(size=3)
    for i in range(5):
        history.add(QueueSample(float(i), {"ns/app": i}))
    assert [s["depth"]["ns/app"] for s in history.series()] == [2, 3, 4]


async def test_the_console_path_without_a_slash_redirects(
    aiohttp_client: AiohttpClient, redis_server: RedisServer
) -> None:
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))
    answer = await client.get("/console", headers=BEARER, allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"] == "/console/"


async def test_the_console_lists_notification_attempts_and_needs_the_token(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, redis_client: Redis
) -> None:
    await redis_client.delete(APP.keys.notify_log)
    for n, result in enumerate(("sent", "failed")):
        attempt = NotificationAttempt(
            ts=time.time() + n, notification="ops", event="deadLetter",
            integration_id="ORDERS1", result=result, http_status=200 if n == 0 else None,
            error="" if n == 0 else "unreachable: ClientConnectorError",
        )  # fmt: skip
        await record_attempt(redis_client, APP.keys, attempt)
    client = await console_client(aiohttp_client, redis_server.url, ConsoleSettings(TOKEN))

    assert (await client.get("/console/api/notifications")).status == 401
    answer = await client.get("/console/api/notifications", headers=BEARER)
    assert answer.status == 200
    data = await answer.json()
    assert [(a["result"], a["event"]) for a in data["attempts"]] == [
        ("failed", "deadLetter"),
        ("sent", "deadLetter"),
    ]
    failed = await client.get("/console/api/notifications?result=failed", headers=BEARER)
    assert [a["error"] for a in (await failed.json())["attempts"]] == [
        "unreachable: ClientConnectorError"
    ]


async def test_the_queue_sampler_is_a_supervised_loop_restarted_after_an_unexpected_error(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sample = console_module.sample_queue_depth
    calls = 0

    async def flaky_sample(state: console_module.ConsoleState) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the sampler")
        await real_sample(state)

    monkeypatch.setattr(console_module, "sample_queue_depth", flaky_sample)
    metrics = ReceiverMetrics()
    settings = ReceiverSettings(redis_url=redis_server.url, redis_timeout=5.0)
    app = init_admin_app(
        settings, make_provider(APP), console=ConsoleSettings(TOKEN, 0.05), metrics=metrics
    )
    client = await aiohttp_client(app)
    loop = {"loop": "console-queue-sampler"}

    deadline = time.monotonic() + 20
    while not app[console_module.CONSOLE_KEY].history.series():
        assert time.monotonic() < deadline, "the sampler never sampled after its failure"
        await asyncio.sleep(0.02)
    assert metrics.registry.get_sample_value("retrieve_receiver_loop_restarts_total", loop) == 1
    assert metrics.registry.get_sample_value("retrieve_receiver_loop_up", loop) == 1
    exposed = await (await client.get("/metrics")).text()
    assert 'retrieve_receiver_loop_up{loop="console-queue-sampler"} 1.0' in exposed
