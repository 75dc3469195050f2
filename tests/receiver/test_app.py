"""The public HTTP contract against the real app factory and a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_core.config import SecretStore
from retrieve_core.job import Job
from retrieve_core.keys import COUNTER_RECEIVED, COUNTER_REJECTED, AppKeys
from retrieve_core.logstore import LogStore
from tests.receiver.conftest import (
    ORDER_ID,
    ClientFactory,
    make_app,
    make_integration,
    make_provider,
)
from tests.receiver.vectors import shopify_signature
from tests.support.counters import counter_total

pytestmark = pytest.mark.redis

OK = {"result": True, "error": ""}


def error(message: str) -> dict[str, Any]:
    return {"result": False, "error": message}


async def jobs(redis: Redis, keys: AppKeys) -> list[Job]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(keys.jobs)  # type: ignore[assignment]
    return [Job.decode(fields) for _, fields in entries]


async def test_accepted_json_webhook_is_in_the_stream_with_a_log_record(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(make_provider(app))
    start = time.time()

    response = await client.post(
        f"/integration/{ORDER_ID}",
        json={"event": "order.created", "order": {"id": 123456}},
        headers={
            "X-Shopify-Topic": "orders/create",
            "Authorization": "Bearer secret-token",
            "User-Agent": "Shopify-Captain-Hook",
        },
    )

    assert response.status == 200
    assert await response.json() == OK
    [job] = await jobs(redis_client, app.keys)
    assert job.integration_id == ORDER_ID
    assert (job.namespace, job.application) == (app.namespace, "yourapp")
    assert job.source_ip == "127.0.0.1"
    assert job.format == "json"
    assert job.payload == {"event": "order.created", "order": {"id": 123456}}
    assert job.headers["x-shopify-topic"] == "orders/create"
    assert job.headers["user-agent"] == "Shopify-Captain-Hook"
    assert "authorization" not in job.headers
    assert abs(job.received_at - time.time()) < 5

    [record] = await LogStore(redis_client, app.keys).query()
    assert record.id == job.id
    assert (record.status, record.http_status) == ("queued", 200)
    assert record.source_ip == "127.0.0.1"
    assert json.loads(record.payload) == job.payload
    assert await counter_total(redis_client, app.keys, ORDER_ID, COUNTER_RECEIVED, since=start) == 1
    assert await redis_client.hget(app.keys.last_received, ORDER_ID) is not None


async def test_xml_route_parses_with_xmltodict(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><webhook><event>order.created</event>'
        "<order><id>123456</id><items><item><sku>A</sku></item><item><sku>B</sku></item>"
        "</items></order></webhook>"
    )
    response = await client.post(
        "/integration/ABC123/xml", data=body, headers={"Content-Type": "application/xml"}
    )
    assert (response.status, await response.json()) == (200, OK)
    [job] = await jobs(redis_client, app.keys)
    assert job.format == "xml"
    assert job.payload["webhook"]["order"]["id"] == "123456"
    assert [i["sku"] for i in job.payload["webhook"]["order"]["items"]["item"]] == ["A", "B"]


async def test_form_body_on_the_json_route_becomes_an_object(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.post(
        "/integration/ABC123", data={"order_id": "17", "email": "a@example.com"}
    )
    assert (response.status, await response.json()) == (200, OK)
    [job] = await jobs(redis_client, app.keys)
    assert job.format == "form"
    assert job.payload == {"order_id": "17", "email": "a@example.com"}


async def test_unauthorized_sender_gets_403_with_its_address(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(allowed=["203.0.113.0"], integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(make_provider(app), source="127.0.0.3")
    start = time.time()

    response = await client.post(f"/integration/{ORDER_ID}", json={"a": 1})

    assert response.status == 403
    assert await response.json() == error("This domain/IP (127.0.0.3) isn't authorized on Retrieve")
    assert await redis_client.xlen(app.keys.jobs) == 0
    [record] = await LogStore(redis_client, app.keys).query()
    assert (record.status, record.http_status, record.source_ip) == ("rejected", 403, "127.0.0.3")
    assert record.error.startswith("This domain/IP")
    assert await counter_total(redis_client, app.keys, ORDER_ID, COUNTER_REJECTED, since=start) == 1


async def test_unauthorized_sender_with_unknown_id_gets_403_not_404(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(allowed=["203.0.113.0"], integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(make_provider(app), source="127.0.0.3")

    response = await client.post("/integration/nope", json={"a": 1})

    assert response.status == 403
    assert await response.json() == error("This domain/IP (127.0.0.3) isn't authorized on Retrieve")
    [record] = await LogStore(redis_client, app.keys).query()
    assert record.integration_id == "nope"


async def test_unknown_integration_gets_404(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(make_provider(app))
    response = await client.post("/integration/doesnotexist", json={})
    assert response.status == 404
    assert await response.json() == error("Integration doesnotexist not found")
    [record] = await LogStore(redis_client, app.keys).query()
    assert (record.http_status, record.integration_id) == (404, "doesnotexist")


async def test_disabled_integration_gets_409(receiver_client: ClientFactory) -> None:
    app = make_app(integrations=[make_integration("ABC123", enabled=False)])
    client = await receiver_client(make_provider(app))
    response = await client.post("/integration/ABC123", json={})
    assert response.status == 409
    assert await response.json() == error("Integration ABC123 is disabled")


@pytest.mark.parametrize(
    ("path", "body", "content_type", "expected"),
    [
        ("/integration/ABC123", b'{"a": ', "application/json", "Invalid JSON payload: "),
        ("/integration/ABC123", b"\xff\xfe{}", "application/json", "Invalid JSON payload: "),
        ("/integration/ABC123", b"", "application/json", "Invalid JSON payload: "),
        ("/integration/ABC123/xml", b"<a><b></a>", "application/xml", "Invalid XML payload: "),
        ("/integration/ABC123/xml", b"{}", "application/json", "Invalid XML payload: "),
    ],
)
async def test_body_that_does_not_parse_gets_400(
    receiver_client: ClientFactory,
    redis_client: Redis,
    path: str,
    body: bytes,
    content_type: str,
    expected: str,
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status == 400
    answer = await response.json()
    assert answer["result"] is False
    assert answer["error"].startswith(expected)
    assert len(answer["error"]) > len(expected)
    assert "Traceback" not in answer["error"]
    assert await redis_client.xlen(app.keys.jobs) == 0


async def test_xml_bomb_and_external_entity_get_400_without_expansion(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    lol = "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    )  # 10^9 expansions if entities were expanded
    bomb = f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]><lolz>&lol9;</lolz>'
    xxe = (
        '<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<foo>&xxe;</foo>"
    )
    for body in (bomb, xxe):
        # Expanding the bomb would take minutes and gigabytes: the bound only stops a hang.
        response = await asyncio.wait_for(client.post("/integration/ABC123/xml", data=body), 30)
        assert response.status == 400
        answer = await response.json()
        assert answer["error"].startswith("Invalid XML payload: ")
        assert "root:" not in answer["error"]
    assert await redis_client.xlen(app.keys.jobs) == 0


async def test_deeply_nested_json_is_refused_not_a_500(receiver_client: ClientFactory) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    for depth in (400, 100_000):
        body = "[" * depth + "]" * depth
        response = await client.post("/integration/ABC123", data=body)
        assert response.status == 400, depth
        assert (await response.json())["error"].startswith("Invalid JSON payload: ")


async def test_a_json_number_past_a_doubles_range_gets_400_and_no_job(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """Before: accepted and delivered as `Infinity`, which is not JSON (issue 12, defect 6)."""
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    for number in ("1e400", "-2.5E+308", "1" + "0" * 400 + ".5"):
        body = f'{{"order": {{"id": 1, "total": {number}}}}}'
        response = await client.post("/integration/ABC123", data=body)
        shown = number if len(number) <= 40 else number[:40] + "..."
        assert response.status == 400
        assert await response.json() == error(
            f"Invalid JSON payload: number {shown} is out of range"
        )
    fine = await client.post(
        "/integration/ABC123", data='{"total": 1.5e308, "big": 1' + "0" * 400 + "}"
    )
    assert fine.status == 200
    assert await redis_client.xlen(app.keys.jobs) == 1


async def test_body_over_the_limit_gets_413(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")], receiver={"maxBodyBytes": 2048})
    client = await receiver_client(make_provider(app))

    response = await client.post("/integration/ABC123", data=b"x" * 2049)
    assert response.status == 413
    assert await response.json() == error("Payload too large (limit 2048 bytes)")

    body = json.dumps({"pad": "y" * 1900}).encode()
    assert len(body) <= 2048
    ok = await client.post("/integration/ABC123", data=body)
    assert ok.status == 200
    assert await redis_client.xlen(app.keys.jobs) == 1


async def test_chunked_body_over_the_limit_is_refused_while_reading(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")], receiver={"maxBodyBytes": 4096})
    client = await receiver_client(make_provider(app))
    sent = 0

    async def chunks() -> Any:
        nonlocal sent
        for _ in range(10_000):  # up to 10 MB if the server kept reading
            sent += 1024
            yield b"z" * 1024
            await asyncio.sleep(0)

    response = await client.post("/integration/ABC123", data=chunks())
    assert response.status == 413
    assert await response.json() == error("Payload too large (limit 4096 bytes)")
    assert response.headers.get("Content-Length") is not None
    assert sent < 10_000 * 1024  # answered before the whole body was sent
    assert await redis_client.xlen(app.keys.jobs) == 0


async def test_default_limit_is_one_mebibyte(receiver_client: ClientFactory) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.post("/integration/ABC123", data=b"[" + b" " * (1024 * 1024) + b"]")
    assert response.status == 413
    assert await response.json() == error("Payload too large (limit 1048576 bytes)")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_get_405_json(receiver_client: ClientFactory, method: str) -> None:
    app = make_app(integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.request(method, "/integration/ABC123")
    assert response.status == 405
    assert await response.json() == error(f"Method {method} not allowed")
    assert response.headers["Allow"] == "POST"


async def test_unknown_path_gets_404_json(receiver_client: ClientFactory) -> None:
    client = await receiver_client(make_provider(make_app()))
    response = await client.get("/admin.php")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert (await response.json())["result"] is False


async def test_invalid_signature_gets_401_and_valid_one_200(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[
            make_integration(
                "SHOP1", verify={"preset": "shopify", "secretRefs": [{"name": "s", "key": "k"}]}
            )
        ]
    )
    secrets = SecretStore()
    secrets.put_secret(app.namespace, "s", {"k": b"shpss_secret"})
    client = await receiver_client(make_provider(app, secrets=secrets))
    body = b'{"id": 820982911946154508}'

    missing = await client.post("/integration/SHOP1", data=body)
    wrong = await client.post(
        "/integration/SHOP1",
        data=body,
        headers={"X-Shopify-Hmac-Sha256": shopify_signature(b"other", body)},
    )
    good = await client.post(
        "/integration/SHOP1",
        data=body,
        headers={
            "X-Shopify-Hmac-Sha256": shopify_signature(b"shpss_secret", body),
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        },
    )

    for response in (missing, wrong):
        assert response.status == 401
        assert await response.json() == error("Invalid webhook signature")
    assert (good.status, await good.json()) == (200, OK)
    [job] = await jobs(redis_client, app.keys)
    assert "x-shopify-hmac-sha256" not in job.headers
    assert job.payload == {"id": 820982911946154508}


async def test_duplicate_delivery_is_answered_200_and_not_enqueued_again(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[
            make_integration(
                "SHOP1", verify={"preset": "shopify", "secretRefs": [{"name": "s", "key": "k"}]}
            )
        ]
    )
    secrets = SecretStore()
    secrets.put_secret(app.namespace, "s", {"k": b"shpss_secret"})
    client = await receiver_client(make_provider(app, secrets=secrets))
    body = b'{"id": 1}'
    headers = {
        "X-Shopify-Hmac-Sha256": shopify_signature(b"shpss_secret", body),
        "X-Shopify-Webhook-Id": "delivery-1",
    }
    first = await client.post("/integration/SHOP1", data=body, headers=headers)
    second = await client.post("/integration/SHOP1", data=body, headers=headers)
    other = await client.post(
        "/integration/SHOP1", data=body, headers={**headers, "X-Shopify-Webhook-Id": "delivery-2"}
    )

    for response in (first, second, other):
        assert (response.status, await response.json()) == (200, OK)
    assert await redis_client.xlen(app.keys.jobs) == 2
    statuses = [r.status for r in await LogStore(redis_client, app.keys).query()]
    assert sorted(statuses) == ["duplicate", "queued", "queued"]


async def test_custom_dedupe_on_a_json_field(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[make_integration("EV1", dedupe={"jsonField": "event.id", "ttlSeconds": 60})]
    )
    client = await receiver_client(make_provider(app))
    for event_id in ("e1", "e1", "e2"):
        response = await client.post("/integration/EV1", json={"event": {"id": event_id}})
        assert response.status == 200
    assert [j.payload["event"]["id"] for j in await jobs(redis_client, app.keys)] == ["e1", "e2"]
    ttl = await redis_client.ttl(app.keys.dedupe("EV1", "e1"))
    assert 0 < ttl <= 60


async def test_woocommerce_creation_ping_is_200_without_a_job(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        integrations=[
            make_integration(
                "WOO1", verify={"preset": "woocommerce", "secretRefs": [{"name": "w", "key": "k"}]}
            )
        ]
    )
    secrets = SecretStore()
    secrets.put_secret(app.namespace, "w", {"k": b"woo-secret"})
    client = await receiver_client(make_provider(app, secrets=secrets))

    ping = await client.post(
        "/integration/WOO1",
        data=b"webhook_id=42",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    unsigned_order = await client.post("/integration/WOO1", json={"id": 42})

    assert (ping.status, await ping.json()) == (200, OK)
    assert unsigned_order.status == 401
    assert await redis_client.xlen(app.keys.jobs) == 0
    records = await LogStore(redis_client, app.keys).query()
    assert sorted(r.status for r in records) == ["ignored", "rejected"]


async def test_trusted_proxy_forwarded_sender_is_checked_not_the_proxy(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(
        allowed=["203.0.113.7"],
        trusted=["127.0.0.0/8"],
        integrations=[make_integration("ABC123")],
    )
    client = await receiver_client(make_provider(app))

    allowed = await client.post(
        "/integration/ABC123", json={}, headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"}
    )
    spoofed = await client.post(
        "/integration/ABC123", json={}, headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.9"}
    )

    assert allowed.status == 200
    assert spoofed.status == 403
    assert await spoofed.json() == error(
        "This domain/IP (198.51.100.9) isn't authorized on Retrieve"
    )
    [job] = await jobs(redis_client, app.keys)
    assert job.source_ip == "203.0.113.7"


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    receiver_client: ClientFactory,
) -> None:
    app = make_app(allowed=["203.0.113.7"], integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.post(
        "/integration/ABC123", json={}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert response.status == 403
    assert await response.json() == error("This domain/IP (127.0.0.1) isn't authorized on Retrieve")


async def test_allowed_list_from_the_environment_adds_to_every_app(
    receiver_client: ClientFactory,
) -> None:
    app = make_app(allowed=[], integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app), extra_allowed=("127.0.0.0/30",))
    response = await client.post("/integration/ABC123", json={})
    assert response.status == 200


async def test_empty_allowed_list_admits_nobody(receiver_client: ClientFactory) -> None:
    app = make_app(allowed=[], integrations=[make_integration("ABC123")])
    client = await receiver_client(make_provider(app))
    response = await client.post("/integration/ABC123", json={})
    assert response.status == 403


async def test_dev_mode_selects_the_app_from_the_host_header(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    shop = make_app("shop", integrations=[make_integration("S1", app="shop")])
    blog = make_app(
        "blog", allowed=["203.0.113.0/24"], integrations=[make_integration("B1", app="blog")]
    )
    client = await receiver_client(make_provider(shop, blog), dev_mode=True)

    by_id = await client.post("/integration/S1", json={})
    by_host = await client.post(
        "/integration/S1", json={}, headers={"Host": "webhook-shop.retrievetl.com"}
    )
    local_host = await client.post(
        "/integration/S1", json={}, headers={"Host": "webhook-shop.localhost:8080"}
    )
    other_app = await client.post(
        "/integration/B1", json={}, headers={"Host": "webhook-shop.retrievetl.com"}
    )
    blog_denied = await client.post("/integration/B1", json={})
    unknown = await client.post("/integration/zzz", json={})

    assert [r.status for r in (by_id, by_host, local_host)] == [200, 200, 200]
    assert other_app.status == 404
    assert await other_app.json() == error("Integration B1 not found")
    # The sender passes shop's whitelist, not blog's: blog's id is as unknown to it as any.
    assert blog_denied.status == 404
    assert unknown.status == 404
    assert await redis_client.xlen(shop.keys.jobs) == 3
    assert await redis_client.xlen(blog.keys.jobs) == 0


@pytest.mark.parametrize("dev_mode", [False, True])
async def test_a_sender_cannot_tell_another_applications_ids_from_unknown_ones(
    receiver_client: ClientFactory, redis_client: Redis, dev_mode: bool
) -> None:
    """Before: 403 for another application's id, 404 for an unknown one (issue 12, defect 8)."""
    shop = make_app("shop", integrations=[make_integration("S1", app="shop")])
    blog = make_app(
        "blog", allowed=["127.0.0.2"], integrations=[make_integration("B1", app="blog")]
    )
    provider = make_provider(shop, blog)
    shop_sender = await receiver_client(provider, dev_mode=dev_mode)
    nobodys_sender = await receiver_client(provider, source="127.0.0.3", dev_mode=dev_mode)

    answers = {}
    for name, client in (("shop's sender", shop_sender), ("nobody's sender", nobodys_sender)):
        for target in ("B1", "NOPE"):
            response = await client.post(f"/integration/{target}", json={})
            answers[name, target] = (response.status, (await response.json())["error"])

    assert answers["shop's sender", "B1"] == (404, "Integration B1 not found")
    assert answers["shop's sender", "NOPE"] == (404, "Integration NOPE not found")
    refused = "This domain/IP (127.0.0.3) isn't authorized on Retrieve"
    assert answers["nobody's sender", "B1"] == (403, refused)
    assert answers["nobody's sender", "NOPE"] == (403, refused)
    assert await redis_client.xlen(blog.keys.jobs) == 0


async def test_a_host_naming_another_application_gets_404_on_a_single_app_receiver(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """DESIGN.md: "unknown integration id, or host names another app: 404" (issue 12, 8)."""
    shop = make_app("shop", integrations=[make_integration("S1", app="shop")])
    client = await receiver_client(make_provider(shop))
    statuses = {}
    for host in (
        "webhook-blog.retrievetl.com",
        "webhook-blog.retrievetl.com:443",
        "webhook-shop.retrievetl.com",
        "shop-receiver.ns.svc:8080",
        "10.0.0.5:8080",
    ):
        response = await client.post("/integration/S1", json={}, headers={"Host": host})
        statuses[host] = response.status
        if response.status == 404:
            assert await response.json() == error("Integration S1 not found")
    assert statuses == {
        "webhook-blog.retrievetl.com": 404,
        "webhook-blog.retrievetl.com:443": 404,
        "webhook-shop.retrievetl.com": 200,
        "shop-receiver.ns.svc:8080": 200,
        "10.0.0.5:8080": 200,
    }
    assert await redis_client.xlen(shop.keys.jobs) == 3


async def test_dev_mode_unknown_id_from_a_sender_no_app_admits_is_403(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    shop = make_app("shop", allowed=["203.0.113.1"])
    blog = make_app("blog", allowed=["203.0.113.2"])
    client = await receiver_client(make_provider(shop, blog), dev_mode=True)
    response = await client.post("/integration/zzz", json={})
    assert response.status == 403
    [record] = await LogStore(redis_client, shop.keys).query()  # attributed to the first app
    assert record.http_status == 403


async def test_config_change_is_picked_up_without_restart(receiver_client: ClientFactory) -> None:
    app = make_app(allowed=["203.0.113.0"], integrations=[make_integration("ABC123")])
    provider = make_provider(app)
    client = await receiver_client(provider)
    assert (await client.post("/integration/ABC123", json={})).status == 403

    updated = app.model_copy(
        update={"spec": app.spec.model_copy(update={"allowed_list": ["127.0.0.1"]})}
    )
    provider.update((updated,), provider.current.secrets)
    assert (await client.post("/integration/ABC123", json={})).status == 200


async def test_an_admitted_sender_is_refused_as_soon_as_the_whitelist_drops_it(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    """Admissions are remembered per (peer, X-Forwarded-For) only for one config version."""
    app = make_app(
        allowed=["127.0.0.1", "203.0.113.7"],
        trusted=["127.0.0.0/8"],
        integrations=[make_integration("ABC123")],
    )
    provider = make_provider(app)
    client = await receiver_client(provider)
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        assert (await client.post("/integration/ABC123", json={}, headers=forwarded)).status == 200
    other = {"X-Forwarded-For": "198.51.100.9"}  # same peer, another sender: not remembered
    assert (await client.post("/integration/ABC123", json={}, headers=other)).status == 403

    updated = app.model_copy(
        update={"spec": app.spec.model_copy(update={"allowed_list": ["127.0.0.1"]})}
    )
    provider.update((updated,), provider.current.secrets)
    refused = await client.post("/integration/ABC123", json={}, headers=forwarded)
    assert refused.status == 403
    assert await refused.json() == error(
        "This domain/IP (203.0.113.7) isn't authorized on Retrieve"
    )
    assert {job.source_ip for job in await jobs(redis_client, app.keys)} == {"203.0.113.7"}


@pytest.mark.parametrize("payload_bytes", [0, 100])
async def test_payload_bytes_bounds_what_accepted_and_refused_requests_leave_in_the_logs(
    receiver_client: ClientFactory, redis_client: Redis, payload_bytes: int
) -> None:
    """SECURITY.md: a refused request stores "at most `RETRIEVE_REJECTED_PAYLOAD_BYTES` (default
    1024, never more than `webhookLogs.payloadBytes`)"; "lower `spec.webhookLogs.payloadBytes`
    (0 stores none in the logs; jobs still carry their payload until processed)"."""
    app = make_app(
        integrations=[make_integration("ABC123")], webhookLogs={"payloadBytes": payload_bytes}
    )
    client = await receiver_client(make_provider(app))
    body = {"long": "x" * 5000}
    accepted = await client.post("/integration/ABC123", json=body)
    refused = await client.post("/integration/ABC123", data=b"{not json" + b"x" * 5000)
    assert (accepted.status, refused.status) == (200, 400)
    records = await LogStore(redis_client, app.keys).query()
    assert sorted(r.http_status for r in records) == [200, 400]
    for record in records:
        assert len(record.payload.encode()) == payload_bytes, record.http_status
        assert record.payload_truncated is True
    [job] = await jobs(redis_client, app.keys)
    assert job.payload == body


async def test_log_payload_is_truncated_to_the_configured_size(
    receiver_client: ClientFactory, redis_client: Redis
) -> None:
    app = make_app(integrations=[make_integration("ABC123")], webhookLogs={"payloadBytes": 10})
    client = await receiver_client(make_provider(app))
    response = await client.post("/integration/ABC123", json={"long": "x" * 100})
    assert response.status == 200
    [record] = await LogStore(redis_client, app.keys).query()
    assert record.payload == '{"long": "'
    assert record.payload_truncated is True
    [job] = await jobs(redis_client, app.keys)
    assert job.payload == {"long": "x" * 100}
