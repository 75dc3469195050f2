"""The operator under test on a real API server: the chart's RBAC for it, and helpers to apply
objects and wait for what the operator makes of them (shared by the tests in tests/kube)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from harness.kube_control_plane import KubeTestCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "retrieve"
GROUP_VERSION = "retrievetl.com/v1alpha1"
RUNTIME_IMAGE = "registry.example/retrieve-runtime:test"
DEFAULT_REDIS = "redis://retrieve-redis.retrieve-system:6379/0"
OPERATOR_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
# What every operator under test is started with (its environment, on top of KUBECONFIG).
OPERATOR_ENV = {
    "RETRIEVE_RUNTIME_IMAGE": RUNTIME_IMAGE,
    "RETRIEVE_REDIS_URL": DEFAULT_REDIS,
    "RETRIEVE_RESYNC_SECONDS": "5",
    "RETRIEVE_MANAGE_RUNTIME_RBAC": "true",
    "RETRIEVE_PEERING_PRIORITY": "100",
    "RETRIEVE_OPERATOR_METRICS_PORT": "0",
}
T = TypeVar("T")


# ------------------------------------------------------------------------------- helpers


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 90.0) -> T:
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
        self, kind: str, name: str, reason: str, namespace: str | None = None, timeout: float = 90
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


# ------------------------------------------------------------------------------- RBAC


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
