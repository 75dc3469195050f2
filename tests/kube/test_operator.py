"""The operator against a real API server, as the chart's operator ServiceAccount.

One operator (the `operator` fixture of tests/kube/conftest.py: kopf's KopfRunner, in-process,
with mandatory peering as the chart runs it) serves every test of this module; each test works
in its own namespace with unique integration ids. Peering between operators is in
test_operator_peering.py.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest

from harness.kube_control_plane import KubeTestCluster
from tests.support.kube_operator import (
    DEFAULT_REDIS,
    RUNTIME_IMAGE,
    Cluster,
    application,
    eventually,
    integration,
    unique_id,
)

pytestmark = pytest.mark.kube


# ------------------------------------------------------------------------------- tests


def test_an_application_gets_every_child_owned_labelled_and_as_specified(world: Cluster) -> None:
    orders_id = unique_id()
    world.apply(
        application(),
        integration("orders", integrationId=orders_id),
        integration("refunds"),
    )

    # The application may turn Ready before the second Integration is indexed: wait for both.
    def both_counted() -> dict[str, Any] | None:
        condition = world.ready("retrieveapplication", "yourapp")
        if condition and condition["reason"] == "Reconciled":
            counted = condition["_object"].get("status", {}).get("integrations")
            return condition if counted == 2 else None
        return None

    app_ready = eventually(both_counted, "yourapp Ready with 2 integrations")
    app = app_ready["_object"]
    assert app_ready["status"] == "True"
    assert app_ready["observedGeneration"] == app["metadata"]["generation"]
    assert app_ready["lastTransitionTime"]
    assert app["status"]["webhookHost"] == "webhook-yourapp.retrievetl.com"
    assert app["status"]["integrations"] == 2

    children = {
        ("configmap", "yourapp-config"): "config",
        ("deployment", "yourapp-receiver"): "receiver",
        ("service", "yourapp-receiver"): "receiver",
        ("deployment", "yourapp-worker"): "worker",
        ("ingress", "yourapp-webhook"): "ingress",
    }
    for (kind, name), component in children.items():
        child = eventually(partial(world.get, kind, name), f"{kind} {name}")
        meta = child["metadata"]
        assert meta["labels"] == {
            "app.kubernetes.io/name": "retrieve",
            "app.kubernetes.io/instance": "yourapp",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "retrieve-operator",
        }
        (owner,) = meta["ownerReferences"]
        assert owner["uid"] == app["metadata"]["uid"]
        assert owner["kind"] == "RetrieveApplication"
        assert owner["controller"] is True
        assert not any("kopf" in key for key in meta.get("annotations") or {})

    ingress = world.get("ingress", "yourapp-webhook")
    assert ingress is not None
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "webhook-yourapp.retrievetl.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "yourapp-receiver",
        "port": {"name": "http"},
    }
    receiver = world.get("deployment", "yourapp-receiver")
    assert receiver is not None
    container = receiver["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == RUNTIME_IMAGE
    env = {e["name"]: e for e in container["env"]}
    assert env["RETRIEVE_REDIS_URL"]["value"] == DEFAULT_REDIS
    assert env["RETRIEVE_CONFIG_MAP"]["value"] == "yourapp-config"
    assert receiver["spec"]["replicas"] == 2

    orders = world.wait_ready("integration", "orders", "Reconciled")
    url = f"https://webhook-yourapp.retrievetl.com/integration/{orders_id}"
    assert orders["_object"]["status"]["webhookURL"] == url
    assert orders["_object"]["status"]["xmlWebhookURL"] == url + "/xml"
    refunds = world.wait_ready("integration", "refunds", "Reconciled")
    refunds_id = refunds["_object"]["status"]["integrationId"]
    assert len(refunds_id) == 24

    def config_ids() -> set[str] | None:
        config_map = world.get("configmap", "yourapp-config")
        if config_map is None:
            return None
        ids = {i["id"] for i in json.loads(config_map["data"]["config.json"])["integrations"]}
        return ids if ids == {orders_id, refunds_id} else None

    eventually(config_ids, "both integrations in the ConfigMap")

    # The runtime RBAC of the namespace, and kopf's storage under the project's group.
    for name in ("retrieve-receiver", "retrieve-worker"):
        assert world.get("serviceaccount", name) is not None
        assert world.get("rolebinding", name) is not None

    def kopf_storage() -> dict[str, Any] | None:
        meta = (world.get("retrieveapplication", "yourapp") or {})["metadata"]
        keys = set(meta.get("annotations") or {})
        return meta if "retrievetl.com/last-handled-configuration" in keys else None

    meta = eventually(kopf_storage, "kopf's diff-base annotation under retrievetl.com/")
    # kopf's storage lives under the project's group (kopf adds its unremovable marker there).
    prefixes = {key.split("/")[0] for key in meta["annotations"]}
    assert prefixes <= {"retrievetl.com", "kubectl.kubernetes.io"}, list(meta["annotations"])
    assert meta["finalizers"] == ["retrievetl.com/finalizer"]

    def created() -> bool:  # Events are posted in the background, after the status patch
        events = json.loads(world.kubectl("get", "events", "-o", "json"))["items"]
        return any(
            e["reason"] == "Created" and e["involvedObject"]["name"] == "yourapp" for e in events
        )

    eventually(created, "a Created event on yourapp")


def test_an_integration_created_before_its_application_recovers_when_it_appears(
    world: Cluster,
) -> None:
    world.apply(integration("early", integrationId=unique_id()))
    condition = world.wait_ready("integration", "early", "ApplicationNotFound")
    assert condition["status"] == "False"
    assert f"{world.namespace}/yourapp not found" in condition["message"]

    world.apply(application())
    condition = world.wait_ready("integration", "early", "Reconciled")
    assert condition["status"] == "True"


def test_the_newer_of_two_integrations_with_the_same_id_is_refused(
    world: Cluster,
    kube_cluster: KubeTestCluster,
) -> None:
    shared = unique_id()
    world.apply(application(), integration("first", integrationId=shared))
    world.wait_ready("integration", "first", "Reconciled")
    # Same id in another namespace: ids are unique in the cluster.
    other = Cluster(kube_cluster, f"{world.namespace}-b")
    kube_cluster.kubectl("create", "namespace", other.namespace)
    try:
        other.apply(application(), integration("second", integrationId=shared))
        condition = other.wait_ready("integration", "second", "DuplicateIntegrationId")
        assert condition["status"] == "False"
        assert f"{world.namespace}/first" in condition["message"]
        assert "webhookURL" not in condition["_object"]["status"]
        config = other.get("configmap", "yourapp-config")
        assert config is not None
        assert json.loads(config["data"]["config.json"])["integrations"] == []
        assert world.ready("integration", "first")["reason"] == "Reconciled"  # type: ignore[index]

        # When the older one goes, the newer one takes the id over.
        world.kubectl("delete", "integration", "first")
        other.wait_ready("integration", "second", "Reconciled")
    finally:
        kube_cluster.kubectl("delete", "namespace", other.namespace, "--wait=false", check=False)


def test_drift_in_children_is_repaired(world: Cluster) -> None:
    world.apply(application(), integration("orders", integrationId=unique_id()))
    world.wait_ready("retrieveapplication", "yourapp", "Reconciled")
    eventually(lambda: world.get("ingress", "yourapp-webhook"), "the Ingress")

    world.kubectl("scale", "deployment", "yourapp-receiver", "--replicas=5")
    eventually(
        lambda: (world.get("deployment", "yourapp-receiver") or {})["spec"]["replicas"] == 2,
        "receiver replicas restored to 2",
    )

    world.kubectl(
        "patch",
        "configmap",
        "yourapp-config",
        "--type=merge",
        "-p",
        '{"data": {"config.json": "{}"}}',
    )
    eventually(
        lambda: (
            json.loads(world.get("configmap", "yourapp-config")["data"]["config.json"]).get("name")  # type: ignore[index]
            == "yourapp"
        ),
        "ConfigMap content restored",
    )

    world.kubectl("delete", "service", "yourapp-receiver")
    eventually(lambda: world.get("service", "yourapp-receiver"), "receiver Service recreated")
    world.kubectl("delete", "ingress", "yourapp-webhook")
    eventually(lambda: world.get("ingress", "yourapp-webhook"), "Ingress recreated")


def test_disabling_the_webhook_removes_ingress_and_receiver(world: Cluster) -> None:
    world.apply(application(), integration("orders", integrationId=unique_id()))
    world.wait_ready("retrieveapplication", "yourapp", "Reconciled")
    eventually(lambda: world.get("ingress", "yourapp-webhook"), "the Ingress")

    world.apply(application(webhook={"enabled": False, "domain": "retrievetl.com"}))
    condition = world.wait_ready("retrieveapplication", "yourapp", "WebhookDisabled")
    assert condition["status"] == "True"
    assert "webhookHost" not in condition["_object"]["status"]
    eventually(
        lambda: all(
            world.get(kind, name) is None
            for kind, name in [
                ("ingress", "yourapp-webhook"),
                ("deployment", "yourapp-receiver"),
                ("service", "yourapp-receiver"),
            ]
        ),
        "Ingress and receiver removed",
    )
    assert world.get("deployment", "yourapp-worker") is not None
    assert world.get("configmap", "yourapp-config") is not None
    orders = world.wait_ready("integration", "orders", "WebhookDisabled")
    assert "webhookURL" not in orders["_object"]["status"]

    world.apply(application())
    world.wait_ready("retrieveapplication", "yourapp", "Reconciled")
    eventually(lambda: world.get("ingress", "yourapp-webhook"), "the Ingress back")


def test_a_gateway_route_without_the_operators_gateway_api_support_is_reported(
    world: Cluster,
) -> None:
    """This operator runs as the chart installs it by default (gatewayApi.enabled=false)."""
    gateway = {"parentRefs": [{"name": "shared-gw", "namespace": "infra"}]}
    world.apply(
        application(webhook={"enabled": True, "domain": "retrievetl.com", "gateway": gateway}),
        integration("orders", integrationId=unique_id()),
    )
    condition = world.wait_ready("retrieveapplication", "yourapp", "GatewayAPIDisabled")
    assert condition["status"] == "False"
    assert "gatewayApi.enabled=true" in condition["message"]
    eventually(lambda: world.get("service", "yourapp-receiver"), "the receiver Service")
    assert world.get("ingress", "yourapp-webhook") is None


def test_a_missing_secret_is_reported_until_it_exists(world: Cluster) -> None:
    verify = {"preset": "shopify", "secretRefs": [{"name": "shop-hmac", "key": "secret"}]}
    world.apply(application(), integration("signed", integrationId=unique_id(), verify=verify))
    condition = world.wait_ready("integration", "signed", "SecretNotFound")
    assert "Secret shop-hmac not found" in condition["message"]
    world.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-hmac"},
            "stringData": {"secret": "s3cr3t"},
        }
    )
    world.wait_ready("integration", "signed", "Reconciled", timeout=30)
    # The value never appears in the ConfigMap, a status or an event.
    assert "s3cr3t" not in json.dumps(world.get("configmap", "yourapp-config"))
    assert "s3cr3t" not in json.dumps(world.get("integration", "signed"))
    assert "s3cr3t" not in world.kubectl("get", "events", "-o", "json")


def test_a_failing_rewrite_test_keeps_the_last_version_that_passed(world: Cluster) -> None:
    def rewrite(javascript: str) -> dict[str, Any]:
        return {
            "javascript": javascript,
            "tests": [
                {"name": "doubles", "input": {"n": 2}, "expect": {"jobStatus": 1, "data": {"n": 4}}}
            ],
        }

    good = "return {jobStatus: 1, data: {n: jobData.job.data.data.n * 2}};"
    bad = "return {jobStatus: 1, data: {n: jobData.job.data.data.n * 3}};"
    mapped_id = unique_id()
    world.apply(
        application(), integration("mapped", integrationId=mapped_id, rewrite=rewrite(good))
    )
    world.wait_ready("integration", "mapped", "Reconciled")

    world.apply(integration("mapped", integrationId=mapped_id, rewrite=rewrite(bad)))
    condition = world.wait_ready("integration", "mapped", "RewriteTestFailed")
    assert "doubles" in condition["message"]
    config = world.get("configmap", "yourapp-config")
    assert config is not None
    (served,) = json.loads(config["data"]["config.json"])["integrations"]
    assert served["spec"]["rewrite"]["javascript"] == good


def test_an_application_with_invalid_resources_is_invalid_until_fixed(world: Cluster) -> None:
    world.apply(
        application(receiver={"replicas": 1, "resources": {"limits": {"cpu": "lots"}}}),
        integration("orders", integrationId=unique_id()),
    )
    condition = world.wait_ready("retrieveapplication", "yourapp", "InvalidSpec")
    assert condition["status"] == "False"
    assert "spec.receiver.resources.limits.cpu" in condition["message"]
    assert world.wait_ready("integration", "orders", "ApplicationNotReady")["status"] == "False"

    world.apply(application(receiver={"replicas": 1, "resources": {"limits": {"cpu": "1"}}}))
    world.wait_ready("retrieveapplication", "yourapp", "Reconciled")
    world.wait_ready("integration", "orders", "Reconciled")


def test_deleting_the_application_collects_its_children(world: Cluster) -> None:
    world.apply(application(), integration("orders", integrationId=unique_id()))
    world.wait_ready("retrieveapplication", "yourapp", "Reconciled")
    eventually(lambda: world.get("ingress", "yourapp-webhook"), "the Ingress")

    world.kubectl("delete", "retrieveapplication", "yourapp", "--wait=false")
    eventually(
        lambda: all(
            world.get(kind, name) is None
            for kind, name in [
                ("configmap", "yourapp-config"),
                ("deployment", "yourapp-receiver"),
                ("deployment", "yourapp-worker"),
                ("service", "yourapp-receiver"),
                ("ingress", "yourapp-webhook"),
            ]
        ),
        "children garbage-collected",
        timeout=45,
    )
    world.wait_ready("integration", "orders", "ApplicationNotFound")
