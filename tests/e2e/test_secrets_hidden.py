"""Verify secrets never leave the Secret: not in logs, log records, Redis, metrics or the banner.

`retrieve dev` runs with DEBUG logging and integrations of several presets whose secrets are
distinctive strings; it gets valid, invalid and erroring requests; then every place a value
could leak to is searched for each secret, raw and in the encodings a careless line would use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from tests.receiver.dns_server import LoopbackDNS
from tests.receiver.vectors import (
    github_signature,
    shopify_signature,
    standard_webhooks_signature,
    stripe_signature,
)
from tests.support.processes import retrieve_command, write_config
from tests.support.redis_server import RedisServer

from .conftest import DevServer

pytestmark = pytest.mark.e2e

GITHUB = "gh-SECRET-7f3a9c-do-not-leak"
SHOPIFY = "shpss_SECRET_41be77_do_not_leak"
STRIPE = "whsec_stripeSECRET0d5e1cdonotleak"
STANDARD_KEY = b"std-webhooks-SECRET-key-9b2e"
STANDARD = "whsec_" + base64.b64encode(STANDARD_KEY).decode()
ROTATED_OUT = "old-SECRET-rotated-2c4f8a"
CONSOLE_TOKEN = "secrets-hidden-console-token"
SECRETS = {"github": GITHUB, "shopify": SHOPIFY, "stripe": STRIPE, "standard": STANDARD}


def needles() -> Iterator[tuple[str, bytes]]:
    """Each secret as it could show up: raw, base64 (as in the Secret), hex."""
    for value in (*SECRETS.values(), ROTATED_OUT):
        raw = value.encode()
        yield value, raw
        yield f"{value} (base64)", base64.b64encode(raw)
        yield f"{value} (hex)", raw.hex().encode()
    yield "standard key", STANDARD_KEY
    yield "standard key (hex)", STANDARD_KEY.hex().encode()


def assert_hidden(where: str, haystack: bytes) -> None:
    for name, needle in needles():
        assert needle not in haystack, f"secret {name} found in {where}"


def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for name, value in {**SECRETS, "old": ROTATED_OUT}.items():
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-webhook", "namespace": "shop"},
                "data": {"secret": base64.b64encode(value.encode()).decode()},
            }
        )
    for iid, preset, refs in (
        ("SECGH1", "github", ["github", "old"]),
        ("SECSHOP1", "shopify", ["shopify"]),
        ("SECSTRIPE1", "stripe", ["stripe"]),
        ("SECSTD1", "standard-webhooks", ["standard"]),
    ):
        documents.append(
            {
                "apiVersion": "retrievetl.com/v1alpha1",
                "kind": "Integration",
                "metadata": {"name": iid.lower(), "namespace": "shop"},
                "spec": {
                    "application": "yourapp",
                    "integrationId": iid,
                    "verify": {
                        "preset": preset,
                        "secretRefs": [{"name": f"{r}-webhook", "key": "secret"} for r in refs],
                    },
                    # The destination refuses: jobs fail, are retried and dead-lettered.
                    "destinations": [{"name": "sink", "http": {"url": "http://x/secret-sink"}}],
                    "retry": {"maxAttempts": 2, "backoffSeconds": 0.1, "maxBackoffSeconds": 0.2},
                },
            }
        )
    return documents


async def dump_redis(url: str) -> bytes:
    """Every key and value of the database, whatever the type."""
    redis = Redis.from_url(url)
    parts: list[bytes] = []
    try:
        async for key in redis.scan_iter(count=500):
            parts.append(key)
            raw_kind = await redis.type(key)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else raw_kind
            value: Any
            if kind == "string":
                value = await redis.get(key)
            elif kind == "hash":
                value = await redis.hgetall(key)
            elif kind == "zset":
                value = await redis.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = await redis.xrange(key)
            elif kind == "list":
                value = await redis.lrange(key, 0, -1)
            elif kind == "set":
                value = await redis.smembers(key)
            else:
                value = kind
            parts.append(repr(value).encode())
    finally:
        await redis.aclose()
    return b"\n".join(parts)


async def send(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> int:
    async with session.post(url, data=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def test_secret_values_appear_in_no_log_record_key_metric_or_output(
    tmp_path: Path, sink: Sink, private_redis_server: RedisServer, dns_server: LoopbackDNS
) -> None:
    config = write_config(tmp_path / "config", sink.url, manifests())
    sink.status = 500  # every delivery fails: the error paths are exercised too
    env = {
        "RETRIEVE_DNS_SERVERS": f"127.0.0.1:{dns_server.port}",
        "RETRIEVE_LOG_LEVEL": "DEBUG",
        "RETRIEVE_CONSOLE_TOKEN": CONSOLE_TOKEN,
    }
    server = DevServer(config, private_redis_server.url, env).start()
    base = f"{server.url}/integration"
    body = b'{"id": "evt_1", "order": 1}'
    now = int(time.time())
    json_type = {"Content-Type": "application/json"}
    gh_ok = {**json_type, "X-Hub-Signature-256": github_signature(GITHUB.encode(), body)}
    gh_old = {**json_type, "X-Hub-Signature-256": github_signature(ROTATED_OUT.encode(), body)}
    std_id = "msg_1"
    std_ok = {
        **json_type,
        "webhook-id": std_id,
        "webhook-timestamp": str(now),
        "webhook-signature": standard_webhooks_signature(STANDARD, std_id, now, body),
    }
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("SECGH1", body, gh_ok, 200),
        ("SECGH1", body, {**gh_ok, "X-GitHub-Delivery": "d-2"}, 200),
        ("SECGH1", body, gh_old, 200),  # the rotated secret still matches
        ("SECGH1", body + b" ", gh_ok, 401),  # tampered body
        ("SECGH1", body, {**json_type, "X-Hub-Signature-256": "sha256=" + GITHUB}, 401),
        (
            "SECGH1",
            b"{broken",
            {**json_type, "X-Hub-Signature-256": github_signature(GITHUB.encode(), b"{broken")},
            400,
        ),
        (
            "SECSHOP1",
            body,
            {**json_type, "X-Shopify-Hmac-Sha256": shopify_signature(SHOPIFY.encode(), body)},
            200,
        ),
        ("SECSHOP1", body, {**json_type, "X-Shopify-Hmac-Sha256": SHOPIFY}, 401),
        (
            "SECSTRIPE1",
            body,
            {**json_type, "Stripe-Signature": stripe_signature([STRIPE.encode()], body, now)},
            200,
        ),
        (
            "SECSTRIPE1",
            b'{"id": "evt_2"}',
            {
                **json_type,
                "Stripe-Signature": stripe_signature([STRIPE.encode()], body, now - 3600),
            },
            401,
        ),
        ("SECSTD1", body, std_ok, 200),
        ("SECSTD1", body, {**std_ok, "webhook-signature": f"v1,{STANDARD}"}, 401),
        ("SECGH1", b"x" * (1024 * 1024 + 10), gh_ok, 413),
    ]
    try:
        async with aiohttp.ClientSession() as session:
            statuses = [await send(session, f"{base}/{iid}", b, h) for iid, b, h, _ in cases]
            assert statuses == [expected for *_, expected in cases]
            # Let the worker try, retry and dead-letter the accepted jobs (the sink says 500). The
            # command runs in a thread: the sink answering the worker shares this event loop.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                logs = await asyncio.to_thread(
                    subprocess.run,
                    [
                        *retrieve_command(),
                        "logs",
                        "--config-dir",
                        str(config),
                        "--redis-url",
                        private_redis_server.url,
                        "--json",
                        "--limit",
                        "1000",
                        "--payload",
                    ],
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
                records = [json.loads(line) for line in logs.stdout.splitlines() if line.strip()]
                if sum(r.get("status") == "dead_letter" for r in records) >= 5:
                    break
                await asyncio.sleep(0.5)
            assert sum(r.get("status") == "dead_letter" for r in records) >= 5, records
            async with session.get(f"http://127.0.0.1:{server.admin_port}/metrics") as answer:
                metrics = await answer.read()
            async with session.get(
                f"http://127.0.0.1:{server.admin_port}/api/logs?limit=1000",
                headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
            ) as answer:
                api_logs = await answer.read()
        redis_dump = await dump_redis(private_redis_server.url)
    finally:
        server.process.stop()
    output = server.process.output().encode()

    # The places searched hold what they should: the search is not vacuous.
    assert b"retrieve dev: receiver on" in output
    assert b"/integration/SECSTD1" in output
    assert b"SECGH1" in redis_dump
    assert b"dead_letter" in logs.stdout
    assert b"SECGH1" in api_logs
    assert_hidden("process output (banner and logs)", output)
    assert_hidden("retrieve logs --json", logs.stdout + logs.stderr)
    assert_hidden("the admin log API", api_logs)
    assert_hidden("Redis", redis_dump)
    assert_hidden("/metrics", metrics)
