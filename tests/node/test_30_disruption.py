"""Pods deleted under a bounded stream of webhooks: nothing accepted is lost or delivered twice.

The stream (tests/support/node_stream.py) retries connection errors and 5xx with the same
``X-Shopify-Webhook-Id``, as Shopify does, and the integration dedupes on that header, so a retry of
a webhook that was in fact stored is answered 200 without a second job.
"""

from __future__ import annotations

import collections
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import node

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]

RECEIVER = "app.kubernetes.io/component=receiver"
WORKER = "app.kubernetes.io/component=worker"
REDIS = "app.kubernetes.io/component=redis"
OPERATOR = "app.kubernetes.io/component=operator"


@pytest.fixture(scope="module", autouse=True)
def dedupe_on_the_delivery_id() -> Iterator[None]:
    patch = {"spec": {"dedupe": {"header": "X-Shopify-Webhook-Id", "ttlSeconds": 3600}}}
    node.kubectl(
        "-n",
        node.APP_NAMESPACE,
        "patch",
        "integration",
        "shopify-orders",
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
    )
    probe_id = f"probe-{secrets.token_hex(4)}"

    def second_is_duplicate() -> bool:
        headers = [f"X-Shopify-Webhook-Id: {probe_id}"]
        answers = [
            node.post(f"/integration/{node.JSON_ID}", '{"probe": 1}', headers=headers).status
            for _ in range(2)
        ]
        out = node.kubectl(
            "-n",
            node.APP_NAMESPACE,
            "get",
            "integration",
            "shopify-orders",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )
        return answers == [200, 200] and out == "True" and _duplicates_logged() > 0

    node.eventually("dedupe on X-Shopify-Webhook-Id to be in force", second_is_duplicate, 60)
    yield
    node.kubectl(
        "-n",
        node.APP_NAMESPACE,
        "patch",
        "integration",
        "shopify-orders",
        "--type",
        "json",
        "-p",
        '[{"op": "remove", "path": "/spec/dedupe"}]',
    )


def _duplicates_logged() -> int:
    return len(node.log_records("shopify-orders", status="duplicate"))


def _order_id(body: Any) -> int:
    """The order id a sink record carries (0 for records of other tests, e.g. probes)."""
    value = body.get("order_id") if isinstance(body, dict) else None
    return value if isinstance(value, int) else 0


def _first_id() -> int:
    return 1_000_000 + secrets.randbelow(1_000) * 10_000


def _assert_each_accepted_delivered_once(result: dict[str, Any], first: int, count: int) -> None:
    assert result["failed"] == [], result
    accepted = set(result["accepted"])
    assert accepted, result
    assert accepted <= set(range(first, first + count))

    def delivered() -> collections.Counter[int] | None:
        seen = collections.Counter(
            _order_id(body)
            for path, body in node.sink_records()
            if path == "/orders" and first <= _order_id(body) < first + count
        )
        return seen if set(seen) == accepted else None

    seen = node.eventually("every accepted webhook at the sink", delivered, timeout=120)
    twice = {order_id: n for order_id, n in seen.items() if n > 1}
    assert twice == {}, f"delivered more than once: {twice}"


def _wait_replaced(namespace: str, selector: str, gone: dict[str, Any], replicas: int) -> None:
    """`replicas` ready pods, none of them `gone` (told by UID: a StatefulSet's replacement
    has the same name)."""

    def replaced() -> bool:
        ready = node.ready_pods(namespace, selector)
        uids = {p["metadata"]["uid"] for p in ready}
        return len(ready) == replicas and gone["metadata"]["uid"] not in uids

    node.eventually(f"{gone['metadata']['name']} to be replaced", replaced, timeout=120)


def _started(stream: node.Stream, first: int) -> None:
    """Wait until the stream's webhooks are reaching the sink (the pipeline is flowing)."""
    node.eventually(
        "the stream to reach the sink",
        lambda: any(
            path == "/orders" and _order_id(body) >= first for path, body in node.sink_records()
        ),
        timeout=60,
    )
    assert stream.proc.poll() is None, "the stream ended before the pod was deleted: make it longer"


STREAM_BOUNDS = ("--duration", "150", "--deadline", "300")
"""Caps only: a stream sends until the test has seen the replacement serve (`stop_sending`)."""
SENT_AFTER_RECOVERY = 3.0


def _stop_after_recovery(stream: node.Stream) -> None:
    """A few more seconds of webhooks through the replaced pod, then no new ones."""
    time.sleep(SENT_AFTER_RECOVERY)
    assert stream.proc.poll() is None, "the stream ended before the replacement was ready"
    stream.stop_sending()


def _delete_while_streaming(stream: node.Stream, namespace: str, victim: str) -> None:
    """Delete the pod and wait until it is gone (its preStop hook and SIGTERM drain included),
    while the stream is still sending: the pod really stopped under load."""
    node.kubectl("-n", namespace, "delete", "pod", victim, "--wait=true", timeout=120)
    assert stream.proc.poll() is None, "the stream ended before the pod was gone: make it longer"


@pytest.mark.parametrize("component", [RECEIVER, WORKER], ids=["receiver", "worker"])
def test_a_pod_deleted_under_load_loses_nothing(component: str) -> None:
    first, count = _first_id(), 5000
    victim = node.ready_pods(node.APP_NAMESPACE, component)[0]
    stream = node.Stream(
        "--count", str(count), "--first-id", str(first), "--interval", "0.02",
        *STREAM_BOUNDS,
    )  # fmt: skip
    _started(stream, first)
    _delete_while_streaming(stream, node.APP_NAMESPACE, victim["metadata"]["name"])
    _wait_replaced(node.APP_NAMESPACE, component, victim, replicas=2)
    _stop_after_recovery(stream)
    result = stream.result()
    _assert_each_accepted_delivered_once(result, first, count)


def test_redis_deleted_answers_503_then_recovers_from_its_volume() -> None:
    first, count = _first_id(), 5000
    victim = node.ready_pods(node.RELEASE_NAMESPACE, REDIS)[0]
    claim_before = node.kubectl_json("-n", node.RELEASE_NAMESPACE, "get", "pvc")["items"][0]
    stream = node.Stream(
        "--count", str(count), "--first-id", str(first), "--interval", "0.05",
        "--concurrency", "2", *STREAM_BOUNDS,
    )  # fmt: skip
    _started(stream, first)
    _delete_while_streaming(stream, node.RELEASE_NAMESPACE, victim["metadata"]["name"])
    _wait_replaced(node.RELEASE_NAMESPACE, REDIS, victim, replicas=1)
    _stop_after_recovery(stream)
    result = stream.result()
    assert result["answers"].get("503", 0) > 0, result["answers"]
    # While Redis is away every receiver may be unready at once: Traefik then answers 503
    # (allowEmptyServices, hack/node/up.sh), which senders retry, never 404.
    assert "404" not in result["answers"], result["answers"]
    _assert_each_accepted_delivered_once(result, first, count)
    # The same claim (and so the same volume and AOF) served the new Redis pod.
    claim_after = node.kubectl_json("-n", node.RELEASE_NAMESPACE, "get", "pvc")["items"][0]
    assert claim_after["metadata"]["uid"] == claim_before["metadata"]["uid"]
    assert claim_after["spec"]["volumeName"] == claim_before["spec"]["volumeName"]


def test_a_new_operator_pod_takes_over_and_repairs_drift() -> None:
    victim = node.ready_pods(node.RELEASE_NAMESPACE, OPERATOR)[0]
    node.kubectl(
        "-n", node.RELEASE_NAMESPACE, "delete", "pod", victim["metadata"]["name"], "--wait=true"
    )
    _wait_replaced(node.RELEASE_NAMESPACE, OPERATOR, victim, replicas=1)

    before = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "ingress", "yourapp-webhook")
    node.kubectl("-n", node.APP_NAMESPACE, "delete", "ingress", "yourapp-webhook")

    def recreated() -> bool:
        out = node.kubectl(
            "-n",
            node.APP_NAMESPACE,
            "get",
            "ingress",
            "yourapp-webhook",
            "-o",
            "jsonpath={.metadata.uid}",
            check=False,
        )
        return bool(out) and out != before["metadata"]["uid"]

    node.eventually("the operator to recreate the deleted Ingress", recreated, timeout=60)
    answer = node.post_accepted(f"/integration/{node.JSON_ID}", '{"after": "drift"}')
    assert answer.json() == {"result": True, "error": ""}
