"""Smoke tests of the real test control plane: version, controllers, GC, RBAC, helm."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from harness.kube_control_plane import HELM_VERSION, K8S_VERSION, KubeTestCluster

pytestmark = pytest.mark.kube


def _eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _get_json(cluster: KubeTestCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_server_reports_pinned_version(kube_cluster: KubeTestCluster) -> None:
    info = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == K8S_VERSION
    assert info["clientVersion"]["gitVersion"] == K8S_VERSION


def test_deployment_gets_replicaset_from_controller_manager(
    kube_cluster: KubeTestCluster,
    kube_namespace: str,
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke", "namespace": kube_namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
            },
        },
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))

    def has_replicaset() -> bool:
        items = _get_json(kube_cluster, "replicasets", "-n", kube_namespace, "-l", "app=smoke")
        return any(
            ref["kind"] == "Deployment" and ref["name"] == "smoke"
            for rs in items["items"]
            for ref in rs["metadata"].get("ownerReferences", [])
        )

    _eventually(has_replicaset, what="a ReplicaSet owned by Deployment smoke")


def test_garbage_collector_deletes_owned_object(
    kube_cluster: KubeTestCluster,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "configmap", "owner", "-n", ns, "--from-literal=a=1")
    owner_uid = _get_json(kube_cluster, "configmap", "owner", "-n", ns)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": ns,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
        "data": {"b": "2"},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(owned))
    kube_cluster.kubectl("delete", "configmap", "owner", "-n", ns)

    def owned_gone() -> bool:
        out = kube_cluster.kubectl(
            "get", "configmap", "owned", "-n", ns, "--ignore-not-found", "-o", "name"
        ).stdout
        return out.strip() == ""

    _eventually(owned_gone, what="garbage collection of ConfigMap owned")


def test_service_account_kubeconfig_is_subject_to_rbac(
    kube_cluster: KubeTestCluster,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    kubeconfig = kube_cluster.kubeconfig_for_service_account(ns, "reader")

    def can_list() -> str:
        return kube_cluster.kubectl(
            "auth", "can-i", "list", "configmaps", "-n", ns, kubeconfig=kubeconfig, check=False
        ).stdout.strip()

    assert can_list() == "no"
    denied = kube_cluster.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    kube_cluster.kubectl(
        "create", "role", "cm-reader", "-n", ns, "--verb=list,get", "--resource=configmaps"
    )
    kube_cluster.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        ns,
        "--role=cm-reader",
        f"--serviceaccount={ns}:reader",
    )
    _eventually(lambda: can_list() == "yes", timeout=30, what="RBAC to allow the ServiceAccount")
    kube_cluster.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig)


def test_helm_is_the_pinned_version(kube_cluster: KubeTestCluster) -> None:
    out = kube_cluster.helm("version", "--short").stdout.strip()
    assert out.startswith(HELM_VERSION), out
