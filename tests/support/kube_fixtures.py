"""pytest fixtures for tests against a real Kubernetes control plane (harness/kube_control_plane).

Import them into a conftest (or a test module) with::

    from tests.support.kube_fixtures import kube_cluster, kube_namespace  # noqa: F401

There is deliberately no skip: if the binaries cannot be built or the control plane does not
start, every test using ``kube_cluster`` fails (also in CI, where CI=true).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from harness.kube_control_plane import KubeClusterError, KubeTestCluster


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeTestCluster]:
    """One etcd + kube-apiserver + kube-controller-manager for the whole test session."""
    cluster = KubeTestCluster()
    try:
        cluster.start()  # stops whatever it started if it fails
    except KubeClusterError as exc:
        where = "in CI" if os.environ.get("CI") == "true" else "locally"
        pytest.fail(f"test Kubernetes control plane unavailable {where}: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kube_namespace(kube_cluster: KubeTestCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    kube_cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
