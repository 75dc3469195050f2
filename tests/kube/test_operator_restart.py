"""A restarted operator converges without rewriting what is already as desired.

The operator is started, stopped and started again in this module (not the shared `operator`
fixture): after the restart, a new Integration makes the application's pass run; the objects
that pass leaves as they were (Deployments, Service, Ingress, the namespace's runtime RBAC, the
other Integrations and kopf's own annotations on them) keep their resourceVersion, and none of
them was even sent a server-side apply (a no-op apply keeps the resourceVersion, so the API
server's request counter tells: only the operator uses apply). The same holds for an HTTPRoute
(Gateway API support on), also one attached to two listeners of one Gateway.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes.config import kube_config

from harness.kube_control_plane import KubeTestCluster
from tests.kube.test_gateway import GATEWAY_REF, gateway_app, gateway_crds, gateway_crds_dir
from tests.support.kube_operator import (
    OPERATOR_ENV,
    Cluster,
    application,
    chart_operator_rbac,
    eventually,
    integration,
)

pytestmark = pytest.mark.kube
# Fixtures of the Gateway API tests: their CRDs, installed.
__all__ = ["gateway_crds", "gateway_crds_dir"]

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


def applies(cluster: KubeTestCluster, kinds: tuple[str, ...] = UNCHANGED_KINDS) -> dict[str, float]:
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
        if accepted and labels.get("verb") == "APPLY" and labels.get("resource") in kinds:
            counts[labels["resource"]] = counts.get(labels["resource"], 0) + float(match.group(2))
    return counts


def versions(world: Cluster, names: list[str]) -> dict[str, str]:
    """kind/name -> resourceVersion of the objects in the test's namespace; for Deployments
    their generation, which only a spec change moves (kube-controller-manager keeps writing
    their status, and so their resourceVersion, for a while after they are made)."""
    found: dict[str, str] = {}
    for kind in UNCHANGED_KINDS:
        listed: dict[str, Any] = json.loads(world.kubectl("get", kind, "-o", "json"))
        for item in listed["items"]:
            meta = item["metadata"]
            if kind == "deployments":
                found[f"{kind}/{meta['name']}"] = f"generation {meta['generation']}"
            elif kind != "serviceaccounts" or meta["name"].startswith("retrieve-"):
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


@contextmanager
def gateway_operator(rbac: dict[str, str], log_path: Path) -> Iterator[None]:
    """The operator with Gateway API support, as its own process: handlers.py reads
    RETRIEVE_GATEWAY_API at import. It must not log a traceback."""
    env = {
        **os.environ,
        "KUBECONFIG": rbac["kubeconfig"],
        **OPERATOR_ENV,
        "RETRIEVE_RESYNC_SECONDS": "3600",
        "RETRIEVE_GATEWAY_API": "true",
    }
    command = [sys.executable, "-m", "kopf", "run", "-A", f"--peering={rbac['peering']}",
               "-m", "retrieve_operator.handlers"]  # fmt: skip
    with (
        log_path.open("ab") as log,
        subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as process,
    ):
        try:
            yield
            assert process.poll() is None, log_path.read_text(errors="replace")[-5000:]
        finally:
            process.terminate()
            process.wait(timeout=30)
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output[-5000:]


def test_a_restarted_operator_does_not_apply_an_unchanged_http_route_again(
    kube_cluster: KubeTestCluster,
    kube_namespace: str,
    gateway_crds: Path,
    tmp_path: Path,
) -> None:
    # Both listeners of one Gateway (HTTP and HTTPS): two parentRefs of the same name.
    listeners = [{**GATEWAY_REF, "sectionName": s} for s in ("web", "websecure")]
    world = Cluster(kube_cluster, kube_namespace)
    log_path = tmp_path / "operator.log"
    with chart_operator_rbac(kube_cluster, "gatewayApi.enabled=true") as rbac:
        world.apply(gateway_app(parentRefs=listeners), integration("orders"))
        with gateway_operator(rbac, log_path):
            world.wait_ready("retrieveapplication", "yourapp", "RoutePending", timeout=60)
            world.wait_ready("integration", "orders", "Reconciled")
        route = world.get("httproute", "yourapp-webhook")
        assert route is not None
        assert [p["sectionName"] for p in route["spec"]["parentRefs"]] == ["web", "websecure"]
        applied = applies(kube_cluster, ("httproutes",))
        assert applied.get("httproutes", 0) >= 1

        with gateway_operator(rbac, log_path):
            world.apply(integration("shipments"))
            world.wait_ready("integration", "shipments", "Reconciled", timeout=60)

            def counted() -> dict[str, Any] | None:
                app = world.get("retrieveapplication", "yourapp") or {}
                return app if (app.get("status") or {}).get("integrations") == 2 else None

            eventually(counted, "yourapp counting 2 integrations")
        after = world.get("httproute", "yourapp-webhook")
        assert after is not None
    assert after["metadata"]["resourceVersion"] == route["metadata"]["resourceVersion"]
    assert applies(kube_cluster, ("httproutes",)) == applied
