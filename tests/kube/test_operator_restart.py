"""A restarted operator converges without rewriting what is already as desired.

The operator is started, stopped and started again in this module (not the shared `operator`
fixture): after the restart, a new Integration makes the application's pass run; the objects
that pass leaves as they were (Deployments, Service, Ingress, the namespace's runtime RBAC, the
other Integrations and kopf's own annotations on them) keep their resourceVersion, and none of
them was even sent a server-side apply (a no-op apply keeps the resourceVersion, so the API
server's request counter tells: only the operator uses apply).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes.config import kube_config

from harness.kube_control_plane import KubeTestCluster
from tests.support.kube_operator import (
    OPERATOR_ENV,
    Cluster,
    application,
    eventually,
    integration,
)

pytestmark = pytest.mark.kube

UNCHANGED_KINDS = (
    "deployments",
    "services",
    "ingresses",
    "serviceaccounts",
    "roles",
    "rolebindings",
)


@contextmanager
def running_operator(rbac: dict[str, str]) -> Iterator[KopfRunner]:
    # No resync during the test: only the restart and the new Integration make passes.
    env = {"KUBECONFIG": rbac["kubeconfig"], **OPERATOR_ENV, "RETRIEVE_RESYNC_SECONDS": "3600"}
    args = ["run", "-A", f"--peering={rbac['peering']}", "-m", "retrieve_operator.handlers"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", rbac["kubeconfig"])
        with KopfRunner(args, timeout=60) as runner:
            yield runner
    assert runner.exception is None, runner.output[-5000:]


APPLY_COUNTER = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def applies(cluster: KubeTestCluster) -> dict[str, float]:
    """resource -> server-side apply requests the API server has accepted, for the kinds a
    pass leaves unchanged here."""
    counts: dict[str, float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        match = APPLY_COUNTER.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        # Accepted ones: an application left in another test's terminating namespace is
        # refused (403) whatever the operator sends there.
        accepted = labels.get("code", "").startswith("2")
        if accepted and labels.get("verb") == "APPLY" and labels.get("resource") in UNCHANGED_KINDS:
            counts[labels["resource"]] = counts.get(labels["resource"], 0) + float(match.group(2))
    return counts


def versions(world: Cluster, names: list[str]) -> dict[str, str]:
    """kind/name -> resourceVersion of the objects in the test's namespace."""
    found: dict[str, str] = {}
    for kind in UNCHANGED_KINDS:
        listed: dict[str, Any] = json.loads(world.kubectl("get", kind, "-o", "json"))
        for item in listed["items"]:
            meta = item["metadata"]
            if kind != "serviceaccounts" or meta["name"].startswith("retrieve-"):
                found[f"{kind}/{meta['name']}"] = meta["resourceVersion"]
    for name in names:
        obj = world.get("integration", name)
        assert obj is not None
        found[f"integrations/{name}"] = obj["metadata"]["resourceVersion"]
    return found


def test_a_restarted_operator_rewrites_nothing_that_is_unchanged(
    operator_rbac: dict[str, str], kube_cluster: KubeTestCluster, kube_namespace: str
) -> None:
    world = Cluster(kube_cluster, kube_namespace)
    world.apply(application(), integration("orders"), integration("refunds"))
    with running_operator(operator_rbac):
        for name in ("orders", "refunds"):
            world.wait_ready("integration", name, "Reconciled")
        eventually(
            lambda: world.get("ingress", "yourapp-webhook"), "the Ingress of yourapp", timeout=30
        )
        # kopf's own annotations are written once the create handlers have succeeded.
        eventually(
            lambda: all(
                "retrievetl.com/last-handled-configuration"
                in ((world.get("integration", n) or {})["metadata"].get("annotations") or {})
                for n in ("orders", "refunds")
            ),
            "kopf's diff-base on both Integrations",
        )
        before = versions(world, ["orders", "refunds"])
    applied = applies(kube_cluster)
    assert applied.get("deployments", 0) >= 2
    assert "deployments/yourapp-receiver" in before
    assert "rolebindings/retrieve-receiver" in before

    with running_operator(operator_rbac):
        world.apply(integration("shipments"))
        world.wait_ready("integration", "shipments", "Reconciled")

        def counted() -> dict[str, Any] | None:
            app = world.get("retrieveapplication", "yourapp") or {}
            return app if (app.get("status") or {}).get("integrations") == 3 else None

        eventually(counted, "yourapp counting 3 integrations")
        after = versions(world, ["orders", "refunds"])
    assert after == before
    assert applies(kube_cluster) == applied
