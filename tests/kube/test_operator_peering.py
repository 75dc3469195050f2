"""`retrieve operator` run by hand (the CLI as a subprocess, admin credentials) on a real API
server: without the chart's peering object it either runs (by default, or --standalone) or, with
a mandatory --peering, says at once which object it waits for and how to fix that; and between
two operators of one peering, only the higher priority acts until it leaves.

This module starts no in-process operator (no `operator` fixture): the ones here are its only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.kube_control_plane import KubeTestCluster
from tests.support.kube_operator import (
    OPERATOR_ENV,
    REPO_ROOT,
    Cluster,
    application,
    eventually,
    integration,
    unique_id,
)
from tests.support.processes import RetrieveProcess

pytestmark = pytest.mark.kube

SAYS_WITHIN = 40.0  # the CLI's start on a busy machine, then one API call
RECONCILED = "Handler 'reconcile' succeeded"
RESUMING = "Resuming operations"


@pytest.fixture
def world(kube_cluster: KubeTestCluster, kube_namespace: str) -> Cluster:
    """The test's namespace, with the CRDs (kopf's peering CRDs included) installed."""
    kube_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds")
    )
    kube_cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
        "crd/retrieveapplications.retrievetl.com",
        "crd/integrations.retrievetl.com",
    )
    return Cluster(kube_cluster, kube_namespace)


@contextmanager
def by_hand(world: Cluster, *args: str, priority: int = 100) -> Iterator[RetrieveProcess]:
    """`retrieve operator ARGS` as a person runs it: admin kubeconfig, no liveness port."""
    env = {
        **OPERATOR_ENV,
        "KUBECONFIG": str(world.cluster.kubeconfig),
        "RETRIEVE_PEERING_PRIORITY": str(priority),
    }
    process = RetrieveProcess(["operator", *args, "--liveness", ""], env=env).start()
    try:
        yield process
    finally:
        process.stop(timeout=30)
        print(f"operator {' '.join(args)} log: {process.log_path}")


def logged(process: RetrieveProcess, text: str, timeout: float = SAYS_WITHIN) -> str:
    """Waits until the operator's log contains `text`; the log so far."""

    def probe() -> str | None:
        output = process.output()
        assert process.process is not None
        if text not in output and process.process.poll() is not None:
            pytest.fail(f"the operator exited without logging {text!r}:\n{output[-5000:]}")
        return output if text in output else None

    return eventually(probe, f"{text!r} in the operator's log", timeout)


def test_run_by_hand_without_a_peering_object_the_operator_reconciles(world: Cluster) -> None:
    world.apply(application(), integration("orders", integrationId=unique_id()))
    with by_hand(world, "-n", world.namespace) as operator:
        logged(operator, "peering: joins KopfPeering 'retrieve-operator' if it exists")
        world.wait_ready("integration", "orders", "Reconciled", timeout=120)
        assert "waiting for the kopf peering object" not in operator.output()


def test_run_by_hand_standalone_the_operator_reconciles(world: Cluster) -> None:
    world.apply(application(), integration("orders", integrationId=unique_id()))
    with by_hand(world, "-n", world.namespace, "--standalone") as operator:
        logged(operator, "peering: none (--standalone)")
        world.wait_ready("integration", "orders", "Reconciled", timeout=120)


def test_cluster_wide_mandatory_peering_without_its_object_says_what_it_waits_for(
    world: Cluster,
) -> None:
    name = f"absent-{secrets.token_hex(3)}"
    with by_hand(world, "-A", f"--peering={name}") as operator:
        output = logged(
            operator, f"waiting for the kopf peering object ClusterKopfPeering {name!r}"
        )
        assert "kind: ClusterKopfPeering" in output  # the object to create
        assert "--standalone" in output  # or how to do without


def test_mandatory_peering_resumes_once_the_object_it_named_is_created(world: Cluster) -> None:
    name = f"peers-{secrets.token_hex(3)}"
    world.apply(application(), integration("orders", integrationId=unique_id()))
    with by_hand(world, "-n", world.namespace, f"--peering={name}") as operator:
        logged(
            operator, f"waiting for the kopf peering object KopfPeering '{world.namespace}/{name}'"
        )
        assert RECONCILED not in operator.output()  # it waits: nothing was reconciled before
        world.apply(
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name}}
        )
        world.wait_ready("integration", "orders", "Reconciled", timeout=120)


def test_a_second_operator_with_a_lower_priority_acts_only_after_the_first_leaves(
    world: Cluster,
) -> None:
    """The second replica (priority 1) stays paused while the first (100) keeps alive, through
    a create it would otherwise handle; it resumes, and reconciles, once the first stops."""
    name = f"peers-{secrets.token_hex(3)}"
    world.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name}})
    world.apply(application(), integration("orders", integrationId=unique_id()))
    scope = ("-n", world.namespace, f"--peering={name}")

    def peer_priorities() -> list[int] | None:
        peering = world.get("kopfpeering", name)
        priorities = sorted(p["priority"] for p in ((peering or {}).get("status") or {}).values())
        return priorities if priorities == [1, 100] else None

    with by_hand(world, *scope, priority=100) as first:
        world.wait_ready("integration", "orders", "Reconciled", timeout=120)
        with by_hand(world, *scope, priority=1) as second:
            eventually(peer_priorities, "both operators in the peering object", timeout=30)
            world.apply(integration("late", integrationId=unique_id()))
            world.wait_ready("integration", "late", "Reconciled")  # by the first
            first.stop(timeout=30)  # it leaves the peering object on its way out
            # The marker: the second resumes and reconciles what exists. Before it resumed, it
            # had handled nothing, neither the objects it found nor "late".
            output = logged(second, RECONCILED, timeout=120)
            assert RESUMING in output, output
            before_resuming = output.split(RESUMING, 1)[0]
            assert RECONCILED not in before_resuming, output
