"""What `helm install` + `kubectl apply -f examples/` produce on a real node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import node

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]


def test_operator_and_application_pods_run_through_their_probes() -> None:
    operator = node.ready_pods(node.RELEASE_NAMESPACE, "app.kubernetes.io/component=operator")
    assert len(operator) == 1
    receivers = node.ready_pods(node.APP_NAMESPACE, "app.kubernetes.io/component=receiver")
    workers = node.ready_pods(node.APP_NAMESPACE, "app.kubernetes.io/component=worker")
    # examples/10-application.yaml asks for two of each.
    assert len(receivers) == 2, [p["metadata"]["name"] for p in receivers]
    assert len(workers) == 2, [p["metadata"]["name"] for p in workers]
    for pod in [*operator, *receivers, *workers]:
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"], (pod["metadata"]["name"], status)
            assert status["restartCount"] == 0, (pod["metadata"]["name"], status)


def test_the_redis_statefulset_holds_its_claim_on_a_local_volume() -> None:
    claims = node.kubectl_json("-n", node.RELEASE_NAMESPACE, "get", "pvc")["items"]
    assert claims, "the chart's Redis has no PersistentVolumeClaim"
    for claim in claims:
        assert claim["status"]["phase"] == "Bound", claim["metadata"]["name"]
        assert claim["spec"]["storageClassName"] == "local"
    assert node.ready_pods(node.RELEASE_NAMESPACE, "app.kubernetes.io/component=redis")


def test_integrations_are_ready_with_their_urls() -> None:
    items = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "integrations")["items"]
    by_id = {i["spec"]["integrationId"]: i for i in items}
    assert set(by_id) == {node.JSON_ID, node.XML_ID}
    for integration_id, item in by_id.items():
        conditions = {c["type"]: c for c in item["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "True", conditions
        url = f"https://{node.HOST}/integration/{integration_id}"
        assert (item["status"]["webhookURL"], item["status"]["xmlWebhookURL"]) == (
            url,
            f"{url}/xml",
        )


def test_the_ingress_is_admitted_by_traefik() -> None:
    ingress = node.kubectl_json("-n", node.APP_NAMESPACE, "get", "ingress", "yourapp-webhook")
    assert ingress["spec"]["rules"][0]["host"] == node.HOST
    # The default IngressClass of the node is Traefik's; Traefik publishes the address it serves on.
    assert ingress["spec"].get("ingressClassName") == "traefik"
    balancer = ingress.get("status", {}).get("loadBalancer", {}).get("ingress", [])
    assert [b.get("ip") for b in balancer] == [node.NODE_IP]


def test_traefik_reads_its_api_token_from_a_file_never_from_its_command_line() -> None:
    state = Path(os.environ.get("RETRIEVE_NODE_STATE", "/var/lib/retrieve-node"))
    token_file = state / "config" / "traefik.token"
    token = token_file.read_text(encoding="utf-8")
    assert len(token) == 32, "the token file holds the bare token, no newline"
    pid = (state / "run" / "traefik.pid").read_text(encoding="utf-8").strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"traefik" in arg for arg in argv[:1]), argv[:1]
    assert not [arg for arg in argv if token.encode() in arg]  # not visible in `ps`
    assert f"--providers.kubernetesingress.token={token_file}".encode() in argv


def test_nothing_was_pulled_from_a_registry() -> None:
    """Every image came from the node's own import; IfNotPresent is honoured everywhere."""
    for namespace in (node.RELEASE_NAMESPACE, node.APP_NAMESPACE):
        for pod in node.pods(namespace, ""):
            for container in pod["spec"]["containers"]:
                assert container["imagePullPolicy"] == "IfNotPresent", container["name"]
                assert container["image"].startswith("localhost/"), container["image"]
    events = node.kubectl_json("get", "events", "-A", "--field-selector", "reason=Pulling")
    assert events["items"] == []
