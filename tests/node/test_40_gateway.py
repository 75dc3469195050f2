"""Gateway API routing end to end: Traefik, as the node's Gateway controller, routes a webhook
through the HTTPRoute the operator made for an application with ``spec.webhook.gateway``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import node

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]

NAMESPACE = "gw"
HOST = "webhook-gwapp.retrievetl.com"
INTEGRATION_ID = "gw-orders-1"
CHART = str(node.REPO_ROOT / "charts" / "retrieve")


def _manifests(parent: dict[str, str]) -> str:
    app = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "RetrieveApplication",
        "metadata": {"name": "gwapp", "namespace": NAMESPACE},
        "spec": {
            "webhook": {
                "enabled": True,
                "domain": "retrievetl.com",
                "gateway": {"parentRefs": [parent]},
            },
            "allowedList": ["127.0.0.1"],
            # Traefik runs on the node and reaches pods from the bridge's gateway address.
            "trustedProxies": ["10.244.0.1"],
            "receiver": {"replicas": 1},
            "worker": {"replicas": 1},
        },
    }
    integration = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "gw-orders", "namespace": NAMESPACE},
        "spec": {
            "application": "gwapp",
            "integrationId": INTEGRATION_ID,
            "fieldMapping": {"order_id": "order.id"},
            "destinations": [
                {"name": "sink", "http": {"url": "http://sink.shop:9099/gateway", "method": "POST"}}
            ],
        },
    }
    return "\n---\n".join(json.dumps(m) for m in (app, integration))


@pytest.fixture(scope="module")
def gateway_app() -> Iterator[None]:
    node.helm(
        "upgrade", "retrieve", CHART, "-n", node.RELEASE_NAMESPACE, "--reuse-values",
        "--set", "gatewayApi.enabled=true", "--wait", "--timeout", "5m",
    )  # fmt: skip
    node.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=180)
    node.kubectl("create", "namespace", NAMESPACE)
    node.kubectl(
        "apply", "-f", "-", input=_manifests({"name": "node-gateway", "namespace": "default"})
    )
    try:
        yield
    finally:
        node.kubectl("delete", "namespace", NAMESPACE, "--wait=true", timeout=180)


def _ready(app: dict[str, Any]) -> dict[str, Any]:
    conditions = {c["type"]: c for c in app.get("status", {}).get("conditions", [])}
    ready: dict[str, Any] = conditions.get("Ready", {})
    return ready


@pytest.mark.usefixtures("gateway_app")
def test_a_webhook_goes_through_the_gateway_and_its_http_route() -> None:
    def ready() -> dict[str, Any] | None:
        app = node.kubectl_json("-n", NAMESPACE, "get", "retrieveapplication", "gwapp")
        condition = _ready(app)
        return condition if condition.get("status") == "True" else None

    condition = node.eventually("gwapp Ready (its route accepted by the Gateway)", ready, 180)
    assert "node-gateway" in condition["message"], condition

    route = node.kubectl_json("-n", NAMESPACE, "get", "httproute", "gwapp-webhook")
    assert route["spec"]["hostnames"] == [HOST]
    (parent,) = route["status"]["parents"]
    assert parent["controllerName"] == "traefik.io/gateway-controller"
    accepted = {c["type"]: c["status"] for c in parent["conditions"]}
    assert accepted["Accepted"] == "True"
    assert accepted["ResolvedRefs"] == "True"
    assert node.kubectl("-n", NAMESPACE, "get", "ingress", "-o", "name") == ""
    node.eventually(
        "the receiver to be Ready",
        lambda: node.ready_pods(NAMESPACE, "app.kubernetes.io/component=receiver"),
        timeout=180,
    )

    answer = node.post_accepted(
        f"/integration/{INTEGRATION_ID}", '{"order": {"id": 4242}}', host=HOST
    )
    assert answer.json() == {"result": True, "error": ""}
    node.eventually(
        "the gateway-routed order at the sink",
        lambda: [b for p, b in node.sink_records() if p == "/gateway" and b == {"order_id": 4242}],
    )
    # Behind the Gateway the receiver still names the real sender from X-Forwarded-For.
    refused = node.post(f"/integration/{INTEGRATION_ID}", "{}", host=HOST, sender="127.0.0.5")
    assert refused.status == 403
    assert refused.json()["error"] == "This domain/IP (127.0.0.5) isn't authorized on Retrieve"


@pytest.mark.usefixtures("gateway_app")
def test_a_route_the_gateway_refuses_is_named_in_the_application_condition() -> None:
    patch = {"spec": {"webhook": {"gateway": {"parentRefs": [
        {"name": "node-gateway", "namespace": "default", "sectionName": "no-such-listener"}
    ]}}}}  # fmt: skip
    node.kubectl(
        "-n", NAMESPACE, "patch", "retrieveapplication", "gwapp", "--type", "merge",
        "-p", json.dumps(patch),
    )  # fmt: skip

    def refused() -> dict[str, Any] | None:
        app = node.kubectl_json("-n", NAMESPACE, "get", "retrieveapplication", "gwapp")
        condition = _ready(app)
        return condition if condition.get("reason") == "RouteNotAccepted" else None

    condition = node.eventually("the refusal in gwapp's Ready condition", refused, 120)
    assert condition["status"] == "False"
    assert "node-gateway" in condition["message"], condition
