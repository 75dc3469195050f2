"""Tests against a real API server share one control plane for the whole session, and get the
operator from one fixture: `operator` (kopf's KopfRunner, in-process, with mandatory peering and
the chart's RBAC, as the chart runs it), shared by the tests of a module. A module changes the
operator's environment by overriding `operator_settings`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes.config import kube_config

from harness.kube_control_plane import KubeTestCluster
from tests.support.kube_fixtures import kube_cluster, kube_namespace
from tests.support.kube_operator import OPERATOR_ENV, Cluster, chart_operator_rbac

__all__ = ["kube_cluster", "kube_namespace"]


@pytest.fixture(scope="module")
def operator_rbac(kube_cluster: KubeTestCluster) -> Iterator[dict[str, str]]:
    """CRDs, and the chart's operator ServiceAccount, ClusterRole(Binding) and peering object."""
    with chart_operator_rbac(kube_cluster) as rbac:
        yield rbac


@pytest.fixture(scope="module")
def operator_settings() -> dict[str, str]:
    """The module operator's environment on top of OPERATOR_ENV (override it in a module)."""
    return {}


@pytest.fixture(scope="module")
def operator(
    operator_rbac: dict[str, str],
    operator_settings: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KopfRunner]:
    """The operator of a module's tests; its log is kept and shown; it must not have failed."""
    env = {"KUBECONFIG": operator_rbac["kubeconfig"], **OPERATOR_ENV, **operator_settings}
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
    """The test's namespace, with the module's operator running."""
    return Cluster(kube_cluster, kube_namespace)
