"""`retrieve dev` as a subprocess, over real HTTP, with a real Redis and a sink the test runs."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from typing import Any

import aiohttp
import pytest

from retrieve_cli.sink import Sink
from retrieve_core.keys import AppKeys
from tests.support.processes import retrieve_command
from tests.support.queue_state import wait_quiescent
from tests.support.redis_server import RedisServer

from .conftest import GITHUB_SECRET, DevServer

pytestmark = pytest.mark.e2e

SHOPIFY_ID = "507f1f77bcf86cd799439011"
ORDER = {
    "event": "order.created",
    "order": {"id": 123456, "email": "customer@example.com", "total_price": "99.99"},
}
XML_ORDER = b"""<?xml version="1.0" encoding="UTF-8"?>
<webhook>
<event>order.created</event>
<order><id>123456</id><order_number>#1001</order_number><email>customer@example.com</email>
<total_price>99.99</total_price>
<items><item><sku>TSHIRT-001</sku><quantity>2</quantity></item>
<item><sku>MUG-002</sku><quantity>1</quantity></item></items></order>
</webhook>"""
OK = {"result": True, "error": ""}


async def post(
    url: str,
    body: bytes,
    content_type: str = "application/json",
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, url, data=body, headers={"Content-Type": content_type, **(headers or {})}
        ) as answer,
    ):
        return answer.status, await answer.json()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*retrieve_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_json_order_is_accepted_and_delivered_with_rewrite_and_mapping(
    dev_server: DevServer, sink: Sink
) -> None:
    status, body = await post(
        f"{dev_server.url}/integration/{SHOPIFY_ID}", json.dumps(ORDER).encode()
    )
    assert (status, body) == (200, OK)
    await sink.wait_for(1, "/orders")
    assert sink.bodies("/orders") == [
        {"order_id": 123456, "customer_email": "customer@example.com", "total": 99.99}
    ]


async def test_xml_order_is_delivered_with_field_mapping(dev_server: DevServer, sink: Sink) -> None:
    status, body = await post(
        f"{dev_server.url}/integration/ABC123/xml", XML_ORDER, content_type="application/xml"
    )
    assert (status, body) == (200, OK)
    await sink.wait_for(1, "/erp/orders")
    assert sink.bodies("/erp/orders") == [
        {
            "event": "order.created",
            "order_id": 123456,
            "order_number": "#1001",
            "customer_email": "customer@example.com",
            "total": 99.99,
            "skus": ["TSHIRT-001", "MUG-002"],
        }
    ]


async def test_form_encoded_body_is_accepted_as_an_object(
    dev_server: DevServer, sink: Sink
) -> None:
    status, body = await post(
        f"{dev_server.url}/integration/{SHOPIFY_ID}",
        b"id=7&email=form%40example.com&total_price=5.50",
        content_type="application/x-www-form-urlencoded",
    )
    assert (status, body) == (200, OK)
    await sink.wait_for(1, "/orders")
    assert sink.bodies("/orders") == [
        {"order_id": "7", "customer_email": "form@example.com", "total": 5.5}
    ]


@pytest.mark.parametrize(
    ("path", "payload", "content_type", "method", "status", "error"),
    [
        (
            "/integration/NOPE42",
            b"{}",
            "application/json",
            "POST",
            404,
            "Integration NOPE42 not found",
        ),
        (
            "/integration/PAUSED1",
            b"{}",
            "application/json",
            "POST",
            409,
            "Integration PAUSED1 is disabled",
        ),
        (
            f"/integration/{SHOPIFY_ID}",
            b"{nope",
            "application/json",
            "POST",
            400,
            "Invalid JSON payload: ",
        ),
        (
            "/integration/ABC123/xml",
            b"<a><b></a>",
            "application/xml",
            "POST",
            400,
            "Invalid XML payload: ",
        ),
        (
            f"/integration/{SHOPIFY_ID}",
            b"x" * (1024 * 1024 + 1),
            "application/json",
            "POST",
            413,
            "Payload too large (limit 1048576 bytes)",
        ),
        (
            f"/integration/{SHOPIFY_ID}",
            b"",
            "application/json",
            "GET",
            405,
            "Method GET not allowed",
        ),
        (
            "/integration/GITHUB1",
            b'{"zen": "hi"}',
            "application/json",
            "POST",
            401,
            "Invalid webhook signature",
        ),
    ],
)
async def test_each_error_row_of_the_contract_answers_its_json(
    dev_server: DevServer,
    path: str,
    payload: bytes,
    content_type: str,
    method: str,
    status: int,
    error: str,
) -> None:
    got_status, body = await post(dev_server.url + path, payload, content_type, method=method)
    assert got_status == status
    assert body["result"] is False
    assert body["error"].startswith(error) if error.endswith(": ") else body["error"] == error


async def test_signed_github_delivery_is_accepted(dev_server: DevServer, sink: Sink) -> None:
    payload = b'{"zen": "Keep it logically awesome."}'
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    status, body = await post(
        f"{dev_server.url}/integration/GITHUB1",
        payload,
        headers={
            "X-Hub-Signature-256": signature,
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        },
    )
    assert (status, body) == (200, OK)
    await sink.wait_for(1, "/github")
    assert sink.bodies("/github") == [{"zen": "Keep it logically awesome."}]


async def test_sender_outside_the_whitelist_is_refused_by_ip(
    dev_server: DevServer, sink: Sink
) -> None:
    url = f"{dev_server.url}/integration/PARTNER1"
    assert await post(url, b'{"n": 1}', source="127.0.0.2") == (200, OK)
    assert await post(url, b'{"n": 2}', source="127.0.0.3") == (
        403,
        {"result": False, "error": "This domain/IP (127.0.0.3) isn't authorized on Retrieve"},
    )
    # An unauthorized sender learns nothing about integrations: 403 before 404.
    status, _ = await post(f"{dev_server.url}/integration/NOPE42", b"{}", source="127.0.0.3")
    assert status == 403
    await sink.wait_for(1, "/partner")
    assert sink.bodies("/partner") == [{"n": 1}]


async def test_redis_down_answers_503_and_recovers_when_it_is_back(
    dev_server: DevServer, private_redis_server: RedisServer, sink: Sink
) -> None:
    url = f"{dev_server.url}/integration/{SHOPIFY_ID}"
    private_redis_server.stop()
    try:
        status, body = await post(url, json.dumps(ORDER).encode())
        assert (status, body) == (503, {"result": False, "error": "Queue unavailable, retry later"})
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{dev_server.admin_port}/readyz") as ready,
        ):
            assert ready.status == 503
    finally:
        private_redis_server.start()
    status, body = await post(url, json.dumps(ORDER).encode())
    assert (status, body) == (200, OK)
    await sink.wait_for(1, "/orders")


async def test_failing_destination_is_retried_then_dead_lettered_then_replayed(
    dev_server: DevServer, sink: Sink
) -> None:
    sink.status = 500
    payload = {"zen": "retry me"}
    raw = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert await post(
        f"{dev_server.url}/integration/GITHUB1", raw, headers={"X-Hub-Signature-256": signature}
    ) == (200, OK)

    async def dead_lettered() -> list[dict[str, Any]]:
        out = run_cli(
            "logs",
            "--config-dir",
            str(dev_server.config_dir),
            "--redis-url",
            dev_server.redis_url,
            "--integration",
            "github-push",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    import asyncio

    for _ in range(200):
        records = await dead_lettered()
        if records and records[0]["status"] == "dead_letter":
            break
        await asyncio.sleep(0.1)
    assert records[0]["status"] == "dead_letter"
    assert records[0]["attempts"] == 3
    assert sink.received == []

    sink.status = 200
    replay = run_cli(
        "replay",
        "github-push",
        "--config-dir",
        str(dev_server.config_dir),
        "--redis-url",
        dev_server.redis_url,
    )
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout.strip().splitlines()[-1])["replayed"] == 1
    await sink.wait_for(1, "/github")
    assert sink.bodies("/github") == [payload]


async def test_logs_show_accepted_and_rejected_requests_newest_first(dev_server: DevServer) -> None:
    await post(f"{dev_server.url}/integration/{SHOPIFY_ID}", b"{broken")
    await post(f"{dev_server.url}/integration/{SHOPIFY_ID}", json.dumps(ORDER).encode())
    out = run_cli(
        "logs",
        "--config-dir",
        str(dev_server.config_dir),
        "--redis-url",
        dev_server.redis_url,
        "--integration",
        "shopify-orders",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["http_status"] for r in records] == [200, 400]
    assert records[1]["error"].startswith("Invalid JSON payload: ")
    assert records[0]["source_ip"] == "127.0.0.1"
    assert records[1]["payload"] == "{broken"
    table = run_cli(
        "logs",
        "--config-dir",
        str(dev_server.config_dir),
        "--redis-url",
        dev_server.redis_url,
        "--status",
        "rejected",
    )
    assert table.returncode == 0, table.stderr
    assert "Invalid JSON payload" in table.stdout
    assert "507f1f77bcf86cd799439011" in table.stdout


@pytest.mark.parametrize(
    ("source", "admitted"),
    [
        ("127.0.0.4", True),  # PTR hook.partner.test, which resolves back to 127.0.0.4
        ("127.0.0.5", False),  # PTR names another domain
        ("127.0.0.6", False),  # PTR spoof.partner.test, but it resolves to another address
    ],
)
async def test_domain_entry_admits_only_forward_confirmed_reverse_dns(
    dev_server: DevServer, sink: Sink, source: str, admitted: bool
) -> None:
    status, body = await post(f"{dev_server.url}/integration/PARTNER1", b'{"n": 1}', source=source)
    if admitted:
        assert (status, body) == (200, OK)
        await sink.wait_for(1, "/partner")
    else:
        assert (status, body) == (
            403,
            {"result": False, "error": f"This domain/IP ({source}) isn't authorized on Retrieve"},
        )


async def test_worker_killed_mid_job_loses_nothing(dev_server: DevServer, sink: Sink) -> None:
    import asyncio

    sink.delay = 3.0  # the destination stalls, so the kill lands while the job is in flight
    status, _ = await post(f"{dev_server.url}/integration/{SHOPIFY_ID}", json.dumps(ORDER).encode())
    assert status == 200
    await asyncio.wait_for(sink.arrived.wait(), 15)
    dev_server.process.kill()  # SIGKILL: no ack, no cleanup
    sink.delay = 0.0
    await sink.wait_answered(1)  # the stalled request ends; its sender is gone: no delivery
    assert sink.received == []
    dev_server.restart()  # the job is reclaimed from the dead consumer and delivered
    await sink.wait_for(1, "/orders", timeout=30)
    # Every job has had its outcome: a late duplicate would have arrived by now.
    await wait_quiescent(dev_server.redis_url, AppKeys("shop", "yourapp"))
    keys = [r.headers.get("Idempotency-Key") for r in sink.received]
    assert len(keys) == 1, keys
    assert sink.bodies("/orders") == [
        {"order_id": 123456, "customer_email": "customer@example.com", "total": 99.99}
    ]
