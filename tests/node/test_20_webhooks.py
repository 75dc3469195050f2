"""Webhooks through Traefik to the receiver pods, and on to the sink pod through the workers."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import node

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]

OK = {"result": True, "error": ""}


def _delivered(path: str, predicate: Callable[[Any], bool]) -> list[Any]:
    def probe() -> list[Any] | None:
        found = [body for p, body in node.sink_records() if p == path and predicate(body)]
        return found or None

    return node.eventually(f"a delivery to {path}", probe, timeout=60)


def test_the_readme_curl_examples_are_accepted_and_delivered_mapped() -> None:
    order_id = 100_000 + secrets.randbelow(800_000)
    json_body = json.dumps(
        {
            "event": "order.created",
            "order": {"id": order_id, "email": "customer@example.com", "total_price": "99.99"},
        }
    )
    answer = node.post(f"/integration/{node.JSON_ID}", json_body)
    assert (answer.status, answer.json()) == (200, OK)

    xml_body = (
        '<?xml version="1.0"?><webhook><event>order.created</event><order>'
        f"<id>{order_id}</id><order_number>#1001</order_number>"
        "<email>customer@example.com</email><total_price>99.99</total_price>"
        "<items><item><sku>TSHIRT-001</sku><quantity>2</quantity></item></items>"
        "</order></webhook>"
    )
    answer = node.post(f"/integration/{node.XML_ID}/xml", xml_body, content_type="application/xml")
    assert (answer.status, answer.json()) == (200, OK)

    orders = _delivered("/orders", lambda b: b.get("order_id") == order_id)
    assert orders == [
        {"order_id": order_id, "customer_email": "customer@example.com", "total": 99.99}
    ]
    erp = _delivered("/erp/orders", lambda b: b.get("order_id") == order_id)
    assert erp == [
        {
            "event": "order.created",
            "order_id": order_id,
            "order_number": "#1001",
            "customer_email": "customer@example.com",
            "total": 99.99,
            "skus": ["TSHIRT-001"],
        }
    ]


def test_a_sender_off_the_whitelist_is_refused_and_logged_with_its_own_address() -> None:
    sender = "127.0.0.7"
    answer = node.post(f"/integration/{node.XML_ID}", "{}", sender=sender)
    assert answer.status == 403
    assert answer.json() == {
        "result": False,
        "error": f"This domain/IP ({sender}) isn't authorized on Retrieve",
    }

    # The receiver saw Traefik's address, believed its X-Forwarded-For (trustedProxies), and the
    # webhook log record names the real sender.
    def logged() -> list[dict[str, Any]]:
        records = [r for r in node.log_records("legacy-xml-orders") if r["source_ip"] == sender]
        if not records:  # a refusal's record is best-effort (0.5 s for Redis): refuse again
            node.post(f"/integration/{node.XML_ID}", "{}", sender=sender)
        return records

    records = node.eventually("the 403 log record", logged)
    assert records[0]["http_status"] == 403


def test_a_whitelist_edit_is_enforced_within_seconds_without_restarting_a_pod() -> None:
    sender = "127.0.0.9"
    selector = "app.kubernetes.io/component=receiver"
    before = {p["metadata"]["uid"] for p in node.ready_pods(node.APP_NAMESPACE, selector)}
    assert node.post(f"/integration/{node.XML_ID}", "{}", sender=sender).status == 403

    app = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "retrieveapplication", "yourapp")
    allowed = [*app["spec"]["allowedList"], sender]
    node.kubectl(
        "-n",
        node.APP_NAMESPACE,
        "patch",
        "retrieveapplication",
        "yourapp",
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"allowedList": allowed}}),
    )
    try:
        # Every receiver replica must enforce it: several answers in a row (Traefik balances).
        def admitted() -> bool:
            return all(
                node.post(f"/integration/{node.JSON_ID}", '{"ok": 1}', sender=sender).status == 200
                for _ in range(6)
            )

        node.eventually("the new whitelist entry to be enforced", admitted, timeout=90)
        after = {p["metadata"]["uid"] for p in node.ready_pods(node.APP_NAMESPACE, selector)}
        assert after == before, "the receivers were restarted to pick up a whitelist change"
    finally:
        node.kubectl(
            "-n",
            node.APP_NAMESPACE,
            "patch",
            "retrieveapplication",
            "yourapp",
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"allowedList": allowed[:-1]}}),
        )
    node.eventually(
        "the removed entry to be refused again",
        lambda: node.post(f"/integration/{node.XML_ID}", "{}", sender=sender).status == 403,
        timeout=90,
    )
