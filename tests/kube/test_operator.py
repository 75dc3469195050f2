"""The operator against a real API server, as the chart's operator ServiceAccount.

One operator (kopf's KopfRunner, in-process, with mandatory peering as the chart runs it) serves
every test of this module; each test works in its own namespace with unique integration ids.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes.config import kube_config

from tests.support.kube_cluster import KubeTestCluster

pytestmark = pytest.mark.kube

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "retrieve"
GROUP_VERSION = "retrievetl.com/v1alpha1"
RUNTIME_IMAGE = "registry.example/retrieve-runtime:test"
DEFAULT_REDIS = "redis://retrieve-redis.retrieve-system:6379/0"
OPERATOR_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
T = TypeVar("T")


# ------------------------------------------------------------------------------- helpers


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll until `probe` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


class Cluster:
    def __init__(self, cluster: KubeTestCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def apply(self, *objects: dict[str, Any]) -> None:
        documents = [
            {**o, "metadata": {"namespace": self.namespace, **o["metadata"]}} for o in objects
        ]
        self.cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        result = self.cluster.kubectl(
            "get", kind, name, "-n", namespace or self.namespace, "-o", "json", "--ignore-not-found"
        )
        return json.loads(result.stdout) if result.stdout.strip() else None

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, input=input).stdout

    def ready(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object's Ready condition once its status describes its current generation."""
        obj = self.get(kind, name, namespace)
        if obj is None:
            return None
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        for condition in status.get("conditions") or []:
            if condition["type"] == "Ready":
                return {**condition, "_object": obj}
        return None

    def wait_ready(
        self, kind: str, name: str, reason: str, namespace: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            condition = self.ready(kind, name, namespace)
            return condition if condition and condition["reason"] == reason else None

        return eventually(probe, f"{kind} {name}: Ready reason {reason}", timeout)


def application(name: str = "yourapp", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "RetrieveApplication",
        "metadata": {"name": name},
        "spec": {
            "webhook": {"enabled": True, "domain": "retrievetl.com"},
            "allowedList": ["shopify.com", "203.0.113.0"],
            "receiver": {"replicas": 2},
            "worker": {"replicas": 1, "concurrency": 8},
            **spec,
        },
    }


def integration(name: str, app: str = "yourapp", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Integration",
        "metadata": {"name": name},
        "spec": {"application": app, **spec},
    }


def unique_id() -> str:
    return secrets.token_hex(12)


# ------------------------------------------------------------------------------- fixtures


@contextmanager
def chart_operator_rbac(kube_cluster: KubeTestCluster, *values: str) -> Iterator[dict[str, str]]:
    """CRDs applied; the chart's operator ServiceAccount, ClusterRole(Binding) and peering,
    rendered with `values` (helm --set NAME=VALUE) on top of an external default Redis."""
    kube_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds")
    )
    for crd in (
        "retrieveapplications.retrievetl.com",
        "integrations.retrievetl.com",
        "clusterkopfpeerings.kopf.dev",
    ):
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    namespace = f"retrieve-op-{secrets.token_hex(3)}"
    release = f"op{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "namespace", namespace)
    sets = ["redis.enabled=false", f"redis.external.url={DEFAULT_REDIS}", *values]
    rendered = kube_cluster.helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        *(arg for value in sets for arg in ("--set", value)),
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in OPERATOR_KINDS]
    assert {d["kind"] for d in documents} == OPERATOR_KINDS
    kube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
    )
    account = next(d for d in documents if d["kind"] == "ServiceAccount")["metadata"]["name"]
    peering = next(d for d in documents if d["kind"] == "ClusterKopfPeering")["metadata"]["name"]
    kubeconfig = kube_cluster.kubeconfig_for_service_account(namespace, account)
    try:
        yield {"kubeconfig": str(kubeconfig), "peering": peering, "namespace": namespace}
    finally:
        cluster_scoped = [d for d in documents if d["kind"] != "ServiceAccount"]
        kube_cluster.kubectl(
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            "--wait=false",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster_scoped}),
            check=False,
        )
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_rbac(kube_cluster: KubeTestCluster) -> Iterator[dict[str, str]]:
    with chart_operator_rbac(kube_cluster) as rbac:
        yield rbac


@pytest.fixture(scope="module")
def operator(
    operator_rbac: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KopfRunner]:
    env = {
        "KUBECONFIG": operator_rbac["kubeconfig"],
        "RETRIEVE_RUNTIME_IMAGE": RUNTIME_IMAGE,
        "RETRIEVE_REDIS_URL": DEFAULT_REDIS,
        "RETRIEVE_RESYNC_SECONDS": "5",
        "RETRIEVE_MANAGE_RUNTIME_RBAC": "true",
        "RETRIEVE_PEERING_PRIORITY": "100",
    }
    args = [
        "run",
        "-A",
        f"--peering={operator_rbac['peering']}",
        "-m",
        "retrieve_operator.handlers",
    ]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        # The kubernetes client reads $KUBECONFIG once, at import: point it at the operator's.
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", operator_rbac["kubeconfig"])
        with KopfRunner(args, timeout=60) as runner:
            yield runner
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    log.write_text(runner.output)
    print(f"operator log: {log}")
    assert runner.exception is None, runner.output[-5000:]


@pytest.fixture
def world(operator: KopfRunner, kube_cluster: KubeTestCluster, kube_namespace: str) -> Cluster:
    return Cluster(kube_cluster, kube_namespace)


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

    events = json.loads(world.kubectl("get", "events", "-o", "json"))["items"]
    assert any(
        e["reason"] == "Created" and e["involvedObject"]["name"] == "yourapp" for e in events
    )


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


def test_a_second_operator_with_a_lower_priority_stays_paused(
    operator: KopfRunner,
    operator_rbac: dict[str, str],
    world: Cluster,
    tmp_path: Path,
) -> None:
    """Peering: a second replica (lower priority) keeps alive in the peering object but handles
    nothing while the active one (priority 100) keeps alive."""
    world.apply(application(), integration("orders", integrationId=unique_id()))
    world.wait_ready("integration", "orders", "Reconciled")
    command = [
        sys.executable,
        "-m",
        "kopf",
        "run",
        "-A",
        f"--peering={operator_rbac['peering']}",
        "--priority=1",
        "-m",
        "retrieve_operator.handlers",
    ]
    env = {
        **os.environ,
        "KUBECONFIG": operator_rbac["kubeconfig"],
        "RETRIEVE_RUNTIME_IMAGE": RUNTIME_IMAGE,
    }
    log_path = tmp_path / "second-operator.log"

    def peer_priorities() -> list[int] | None:
        peering = world.get("clusterkopfpeering", operator_rbac["peering"], namespace="default")
        priorities = sorted(p["priority"] for p in ((peering or {}).get("status") or {}).values())
        return priorities if priorities == [1, 100] else None

    with (
        log_path.open("wb") as log,
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as second,
    ):
        try:
            eventually(peer_priorities, "both operators in the peering object", timeout=30)
            # An active operator would resume (reconcile) every existing object at once; give
            # it the time it takes the first one to do so, then check it did nothing.
            time.sleep(10)
            world.apply(integration("late", integrationId=unique_id()))
            world.wait_ready("integration", "late", "Reconciled")
            output = log_path.read_text(errors="replace")
            assert "Resuming operations" not in output, output
            assert "Handler 'reconcile'" not in output, output
        finally:
            second.terminate()
            second.wait(timeout=30)
