"""helm upgrade and helm uninstall of the installed product (the last tests of the tier)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.support import node

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]

OPERATOR = "app.kubernetes.io/component=operator"
CHART = str(node.REPO_ROOT / "charts" / "retrieve")


def _upgrade(*values: str) -> None:
    args = ["upgrade", "retrieve", CHART, "-n", node.RELEASE_NAMESPACE, "--reuse-values"]
    for value in values:
        args += ["--set", value]
    node.helm(*args, "--wait", "--timeout", "5m")


def _webhook_flows() -> None:
    order_id = 5_000_000 + secrets.randbelow(1_000_000)
    body = f'{{"order": {{"id": {order_id}, "email": "n@example.com", "total_price": "1"}}}}'
    answer = node.post_accepted(f"/integration/{node.JSON_ID}", body)
    assert answer.json() == {"result": True, "error": ""}
    node.eventually(
        f"order {order_id} at the sink",
        lambda: any(b.get("order_id") == order_id for _, b in node.sink_records()),
    )


def test_network_policies_on_keep_the_product_working() -> None:
    """The chart's NetworkPolicy option; the node's bridge CNI does not enforce policies
    (docs/node.md), so this proves the objects are valid and that nothing else changes."""
    _upgrade("networkPolicy.enabled=true")
    policies = node.kubectl_json("-n", node.RELEASE_NAMESPACE, "get", "networkpolicies")["items"]
    assert {p["metadata"]["name"] for p in policies} == {"retrieve-redis", "retrieve-operator"}
    _webhook_flows()


def test_helm_upgrade_with_a_changed_value_rolls_out() -> None:
    old = {p["metadata"]["uid"] for p in node.pods(node.RELEASE_NAMESPACE, OPERATOR)}
    _upgrade("operator.logLevel=DEBUG")

    def rolled() -> list[dict[str, Any]] | None:
        ready = node.ready_pods(node.RELEASE_NAMESPACE, OPERATOR)
        fresh = [p for p in ready if p["metadata"]["uid"] not in old]
        return fresh if len(fresh) == 1 and len(ready) == 1 else None

    (pod,) = node.eventually("the operator to roll out", rolled, timeout=120)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["RETRIEVE_LOG_LEVEL"] == "DEBUG"
    _webhook_flows()


def test_helm_uninstall_removes_the_product_and_keeps_crds_and_user_resources() -> None:
    node.helm("uninstall", "retrieve", "-n", node.RELEASE_NAMESPACE, "--wait")
    node.eventually(
        "the operator and Redis pods to be gone",
        lambda: not node.pods(node.RELEASE_NAMESPACE, "app.kubernetes.io/instance=retrieve"),
        timeout=120,
    )
    left = node.kubectl_json("-n", node.RELEASE_NAMESPACE, "get", "deploy,statefulset,svc,sa")
    names = [f"{i['kind']}/{i['metadata']['name']}" for i in left["items"]]
    assert names == ["ServiceAccount/default"]  # the namespace's own
    cluster_wide = node.kubectl(
        "get",
        "clusterrole,clusterrolebinding",
        "-l",
        "app.kubernetes.io/instance=retrieve",
        "-o",
        "name",
    )
    assert cluster_wide.split() == []
    crds = node.kubectl("get", "crd", "-o", "name").split()
    assert "customresourcedefinition.apiextensions.k8s.io/integrations.retrievetl.com" in crds
    assert (
        "customresourcedefinition.apiextensions.k8s.io/retrieveapplications.retrievetl.com" in crds
    )
    apps = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "retrieveapplications")["items"]
    assert [a["metadata"]["name"] for a in apps] == ["yourapp"]
    integrations = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "integrations")["items"]
    assert len(integrations) == 2
