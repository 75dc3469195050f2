"""The Helm charts: lint, render with default and other values, server-side dry-run, real RBAC."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube_control_plane import KubeTestCluster
from retrieve_operator import rbac
from tests.support.ports import free_port

pytestmark = pytest.mark.kube

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "retrieve"
CRD_CHART = REPO_ROOT / "charts" / "retrieve-crds"

# The Prometheus Operator is not installed on the test server: a stand-in CRD lets the
# ServiceMonitor be dry-run (its schema is checked by the real CRD where it exists).
SERVICE_MONITOR_STUB = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def _stub_crd(kind: str, plural: str) -> dict[str, Any]:
    """A monitoring.coreos.com CRD that accepts anything (the real one checks the schema)."""
    crd: dict[str, Any] = json.loads(json.dumps(SERVICE_MONITOR_STUB))
    crd["metadata"]["name"] = f"{plural}.monitoring.coreos.com"
    crd["spec"]["names"] = {"kind": kind, "plural": plural}
    return crd


PROMETHEUS_RULE_STUB = _stub_crd("PrometheusRule", "prometheusrules")

NON_DEFAULT_VALUES: dict[str, Any] = {
    "redis": {"enabled": False, "external": {"url": "rediss://redis.example:6380/2"}},
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "metrics": {
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Retrieve"}},
    },
    "operator": {
        "watchNamespaces": ["__NS__"],
        "manageRuntimeRbac": False,
        "extraArgs": ["--log-level=DEBUG"],
    },
    "runtimeRbac": {"namespaces": ["__NS__"]},
    "image": {"repository": "registry.example/retrieve-operator", "tag": "1.2.3"},
    "runtimeImage": {"repository": "registry.example/retrieve-runtime", "tag": "1.2.3"},
}


@pytest.fixture(scope="module")
def cluster_with_crds(kube_cluster: KubeTestCluster) -> KubeTestCluster:
    kube_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds")
    )
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_STUB))
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(PROMETHEUS_RULE_STUB))
    for name in (
        "retrieveapplications.retrievetl.com",
        "integrations.retrievetl.com",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ):
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return kube_cluster


def _values_file(cluster: KubeTestCluster, values: dict[str, Any], namespace: str) -> Path:
    text = json.dumps(values).replace("__NS__", namespace)
    path = cluster.workdir / f"values-{secrets.token_hex(4)}.json"
    path.write_text(text, encoding="utf-8")
    return path


def _template(
    cluster: KubeTestCluster, namespace: str, values: dict[str, Any] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    args = ["template", "retrieve", str(CHART), "--namespace", namespace]
    if values:
        args += ["--values", str(_values_file(cluster, values, namespace))]
    rendered = cluster.helm(*args).stdout
    return rendered, [d for d in yaml.safe_load_all(rendered) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
    ]


@pytest.mark.parametrize("chart", [CHART, CRD_CHART], ids=lambda p: p.name)
def test_helm_lint_is_clean(kube_cluster: KubeTestCluster, chart: Path) -> None:
    result = kube_cluster.helm("lint", "--strict", str(chart))
    assert "0 chart(s) failed" in result.stdout, result.stdout
    assert "[WARNING]" not in result.stdout, result.stdout


def test_crd_chart_renders_the_committed_crds_unchanged(
    kube_cluster: KubeTestCluster,
) -> None:
    rendered = kube_cluster.helm("template", "retrieve-crds", str(CRD_CHART)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    committed = [
        d
        for path in sorted((REPO_ROOT / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if d
    ]
    key = lambda d: d["metadata"]["name"]  # noqa: E731
    assert sorted(docs, key=key) == sorted(committed, key=key)
    for doc in docs:
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    without_kopf = kube_cluster.helm(
        "template", "retrieve-crds", str(CRD_CHART), "--set", "kopfPeering=false"
    ).stdout
    kinds = {d["spec"]["names"]["kind"] for d in yaml.safe_load_all(without_kopf) if d}
    assert kinds == {"RetrieveApplication", "Integration"}


def test_default_values_render_and_pass_server_side_dry_run(
    cluster_with_crds: KubeTestCluster,
    kube_namespace: str,
) -> None:
    rendered, docs = _template(cluster_with_crds, kube_namespace)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "StatefulSet",
            "ClusterKopfPeering",
        ]
    )
    cluster_with_crds.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)

    operator = _by_kind(docs, "Deployment")[0]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["operator", "--all-namespaces"]
    assert "--peering=retrieve-operator" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RETRIEVE_RUNTIME_IMAGE"] == "ghcr.io/retrievetl/retrieve-runtime:0.1.0"
    assert env["RETRIEVE_REDIS_URL"] == f"redis://retrieve-redis.{kube_namespace}.svc:6379/0"
    assert operator["spec"]["strategy"]["type"] == "Recreate"

    redis = _by_kind(docs, "StatefulSet")[0]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"

    cluster_role = _by_kind(docs, "ClusterRole")[0]
    assert cluster_role["rules"] == rbac.operator_rules() + rbac.operator_runtime_rbac_rules()


def test_every_pod_runs_non_root_read_only_without_capabilities(
    kube_cluster: KubeTestCluster,
) -> None:
    _, docs = _template(kube_cluster, "retrieve-system")
    pods = _pod_specs(docs)
    assert len(pods) == 2
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"], name


def test_non_default_values_render_and_pass_server_side_dry_run(
    cluster_with_crds: KubeTestCluster,
    kube_namespace: str,
) -> None:
    rendered, docs = _template(cluster_with_crds, kube_namespace, NON_DEFAULT_VALUES)
    cluster_with_crds.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)

    assert not _by_kind(docs, "StatefulSet"), "no Redis with an external URL"
    assert {p["metadata"]["name"] for p in _by_kind(docs, "NetworkPolicy")} == {"retrieve-operator"}
    monitor = _by_kind(docs, "ServiceMonitor")[0]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "retrieve-operator",
        "app.kubernetes.io/component": "receiver",
    }
    (rule,) = _by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "RetrieveRejectedRequestsSpike",
        "RetrieveQueueGrowing",
        "RetrieveProcessingDelayHigh",
        "RetrieveDeadLetters",
    } <= alerts
    dashboards = [
        c
        for c in _by_kind(docs, "ConfigMap")
        if c["metadata"]["name"].endswith("grafana-dashboard")
    ]
    assert len(dashboards) == 1
    assert dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards[0]["metadata"]["annotations"] == {"grafana_folder": "Retrieve"}
    dashboard = json.loads(dashboards[0]["data"]["retrieve-webhooks.json"])
    assert dashboard["uid"] == "retrieve-webhooks"
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "retrieve_receiver_requests_total",
        "retrieve_receiver_request_seconds_bucket",
        "retrieve_worker_queue_depth",
        "retrieve_worker_processing_delay_seconds",
        "retrieve_worker_dead_letters_total",
        "retrieve_worker_destination_latency_seconds_bucket",
        "retrieve_operator_status_poll_duration_seconds_bucket",
    ):
        assert metric in queries, metric
    peering = _by_kind(docs, "KopfPeering")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peering] == [
        (kube_namespace, "retrieve-operator")
    ]
    container = _by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/retrieve-operator:1.2.3"
    assert f"--namespace={kube_namespace}" in container["args"]
    assert container["args"][-1] == "--log-level=DEBUG"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RETRIEVE_REDIS_URL"] == "rediss://redis.example:6380/2"
    assert env["RETRIEVE_RUNTIME_IMAGE"] == "registry.example/retrieve-runtime:1.2.3"
    assert env["RETRIEVE_MANAGE_RUNTIME_RBAC"] == "false"
    assert env["RETRIEVE_STATUS_INTERVAL_SECONDS"] == "15"
    assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in container["ports"]

    assert _by_kind(docs, "ClusterRole")[0]["rules"] == rbac.operator_rules()
    roles = {r["metadata"]["name"]: r for r in _by_kind(docs, "Role")}
    for component in rbac.RUNTIME_COMPONENTS:
        assert roles[rbac.runtime_name(component)]["rules"] == rbac.runtime_rules(component)


def test_redis_network_policy_admits_only_retrieve_pods(
    kube_cluster: KubeTestCluster,
) -> None:
    _, docs = _template(kube_cluster, "retrieve-system", {"networkPolicy": {"enabled": True}})
    policies = {p["metadata"]["name"]: p for p in _by_kind(docs, "NetworkPolicy")}
    sources = policies["retrieve-redis"]["spec"]["ingress"][0]["from"]
    assert sources[0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "retrieve-operator"
    }
    assert sources[1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert policies["retrieve-operator"]["spec"]["ingress"] == []


def test_the_operator_policy_admits_only_the_named_scrapers_to_its_metrics_port(
    kube_cluster: KubeTestCluster,
) -> None:
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]
    values = {"networkPolicy": {"enabled": True, "metricsFrom": scrapers}}
    _, docs = _template(kube_cluster, "retrieve-system", values)
    policy = _operator_policy(docs)
    assert policy["spec"]["ingress"] == [
        {"from": scrapers, "ports": [{"port": "metrics", "protocol": "TCP"}]}
    ]
    # The port it names is the container's (a policy naming an unknown port admits nothing).
    operator = _by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "metrics" in {port["name"] for port in operator["ports"]}

    values["operator"] = {"metricsPort": 0}  # no metrics port: nothing to admit
    _, docs = _template(kube_cluster, "retrieve-system", values)
    assert _operator_policy(docs)["spec"]["ingress"] == []


def _operator_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    policies = _by_kind(docs, "NetworkPolicy")
    return next(p for p in policies if p["metadata"]["name"] == "retrieve-operator")


def test_external_redis_without_url_is_a_clear_error(
    kube_cluster: KubeTestCluster,
) -> None:
    result = kube_cluster.helm(
        "template", "retrieve", str(CHART), "--set", "redis.enabled=false", check=False
    )
    assert result.returncode != 0
    assert "redis.external.url is required" in result.stderr


@pytest.mark.parametrize("enabled", [False, True], ids=["default", "gatewayApi.enabled"])
def test_the_operator_may_manage_http_routes_only_with_gateway_api_enabled(
    kube_cluster: KubeTestCluster, kube_namespace: str, enabled: bool
) -> None:
    values = {"gatewayApi": {"enabled": True}} if enabled else None
    _, docs = _template(kube_cluster, kube_namespace, values)
    (role,) = [
        r for r in _by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("operator")
    ]
    routes = [r for r in role["rules"] if "gateway.networking.k8s.io" in r["apiGroups"]]
    if enabled:
        assert routes == rbac.operator_gateway_api_rules()
        assert routes[0]["resources"] == ["httproutes"]  # no Gateways, no ReferenceGrants
    else:
        assert routes == []
    (deployment,) = _by_kind(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RETRIEVE_GATEWAY_API"] == ("true" if enabled else "false")


def test_installed_chart_rbac_lets_the_operator_provision_runtime_rbac_and_no_more(
    cluster_with_crds: KubeTestCluster,
    kube_namespace: str,
) -> None:
    """Real install: the operator's ServiceAccount creates the runtime Roles (no escalation
    error), and the receiver's ServiceAccount reads only its own namespace."""
    cluster = cluster_with_crds
    release = f"r{secrets.token_hex(3)}"
    app_ns = f"{kube_namespace}-app"
    cluster.kubectl("create", "namespace", app_ns)
    try:
        cluster.helm("install", release, str(CHART), "--namespace", kube_namespace)
        operator_sa = f"{release}-retrieve-operator"
        as_operator = cluster.kubeconfig_for_service_account(kube_namespace, operator_sa)

        def can(verb: str, resource: str, namespace: str, kubeconfig: Path) -> str:
            return cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", namespace,
                kubeconfig=kubeconfig, check=False,
            ).stdout.strip()  # fmt: skip

        def granted(verb: str, resource: str, namespace: str, kubeconfig: Path) -> str:
            """`can`, asked again until "yes" for up to 30 s: the API server's authorizer learns
            of new bindings from a watch, a moment after they are made (a "no" cannot come
            from that lag the other way, so those are asked once)."""
            deadline = time.monotonic() + 30
            while (answer := can(verb, resource, namespace, kubeconfig)) != "yes":
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            return answer

        assert granted("create", "deployments.apps", app_ns, as_operator) == "yes"
        assert granted("patch", "integrations.retrievetl.com/status", app_ns, as_operator) == "yes"
        assert granted("delete", "ingresses.networking.k8s.io", app_ns, as_operator) == "yes"
        assert granted("watch", "secrets", app_ns, as_operator) == "yes"
        assert can("create", "secrets", app_ns, as_operator) == "no"
        assert can("delete", "secrets", app_ns, as_operator) == "no"
        assert can("create", "pods", app_ns, as_operator) == "no"
        assert granted("patch", "clusterkopfpeerings.kopf.dev", "", as_operator) == "yes"

        objects = rbac.runtime_rbac_objects(app_ns)
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": objects}),
            kubeconfig=as_operator,
        )  # fmt: skip

        as_receiver = cluster.kubeconfig_for_service_account(app_ns, rbac.runtime_name("receiver"))
        assert granted("list", "configmaps", app_ns, as_receiver) == "yes"
        assert granted("watch", "secrets", app_ns, as_receiver) == "yes"
        assert can("create", "configmaps", app_ns, as_receiver) == "no"
        assert can("get", "secrets", kube_namespace, as_receiver) == "no"
        assert can("list", "integrations.retrievetl.com", app_ns, as_receiver) == "no"
    finally:
        cluster.helm("uninstall", release, "--namespace", kube_namespace, check=False)
        cluster.kubectl("delete", "namespace", app_ns, "--wait=false", check=False)


def test_the_real_operator_reconciles_an_application_with_only_the_charts_rbac(
    cluster_with_crds: KubeTestCluster,
    kube_namespace: str,
) -> None:
    """`retrieve operator` authenticated as the chart's ServiceAccount (not admin) creates the
    children and the runtime RBAC of an application, and never meets a 403."""
    cluster = cluster_with_crds
    release = f"r{secrets.token_hex(3)}"
    app_ns = f"{kube_namespace}-op"
    peering = f"{release}-retrieve-operator"
    cluster.kubectl("create", "namespace", app_ns)
    log_path = cluster.workdir / f"operator-{release}.log"
    operator: subprocess.Popen[bytes] | None = None
    try:
        cluster.helm(
            "install", release, str(CHART), "--namespace", kube_namespace,
            "--set", f"operator.watchNamespaces={{{app_ns}}}",
        )  # fmt: skip
        kubeconfig = cluster.kubeconfig_for_service_account(kube_namespace, peering)
        app = {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "RetrieveApplication",
            "metadata": {"name": "rbacapp", "namespace": app_ns},
            "spec": {"webhook": {"domain": "retrievetl.com"}, "allowedList": ["127.0.0.1"]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(app))
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "RETRIEVE_RUNTIME_IMAGE": "registry.example/retrieve-runtime:test",
            "RETRIEVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        }
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable, "-m", "retrieve_cli.main", "operator",
                    f"--namespace={app_ns}", f"--peering={peering}",
                    f"--liveness=http://127.0.0.1:{free_port()}/healthz",
                ],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        expected = {
            "deployment.apps/rbacapp-receiver",
            "deployment.apps/rbacapp-worker",
            "service/rbacapp-receiver",
            "configmap/rbacapp-config",
            "ingress.networking.k8s.io/rbacapp-webhook",
            "serviceaccount/retrieve-receiver",
            "role.rbac.authorization.k8s.io/retrieve-worker",
            "rolebinding.rbac.authorization.k8s.io/retrieve-receiver",
        }
        deadline = time.monotonic() + 90
        found: set[str] = set()
        while time.monotonic() < deadline and not expected <= found:
            assert operator.poll() is None, log_path.read_text(errors="replace")[-4000:]
            found = set(
                cluster.kubectl(
                    "get", "deploy,svc,cm,ingress,sa,role,rolebinding", "-n", app_ns, "-o", "name"
                ).stdout.split()
            )
            time.sleep(1)
        log_text = log_path.read_text(errors="replace")
        assert expected <= found, f"missing {expected - found}\n{log_text[-4000:]}"
        assert "forbidden" not in log_text.lower(), log_text[-4000:]
    finally:
        if operator is not None:
            # Deleted while the operator runs, so its finalizer is removed and nothing is left
            # behind for operators that later tests start.
            cluster.kubectl(
                "delete", "retrieveapplication", "rbacapp", "-n", app_ns, "--timeout=60s",
                check=False,
            )  # fmt: skip
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait(timeout=10)
        cluster.kubectl("delete", "namespace", app_ns, "--wait=false", check=False)
        cluster.helm("uninstall", release, "--namespace", kube_namespace, check=False)


REDIS_MODES: dict[str, tuple[dict[str, Any], str | None]] = {
    "standalone": ({}, None),
    "sentinel": (
        {"mode": "sentinel", "sentinel": {"hosts": ["s1:26379", "s2:26379", "s3"],
                                          "service": "mymaster", "db": 2}},
        "redis+sentinel://s1:26379,s2:26379,s3/mymaster/2",
    ),
    "sentinel-tls": (
        {"mode": "sentinel", "sentinel": {"hosts": ["s1:26379"], "service": "m", "tls": True}},
        "rediss+sentinel://s1:26379/m/0",
    ),
    "cluster": (
        {"mode": "cluster", "cluster": {"nodes": ["n1:6379", "n2:6379"]}},
        "redis+cluster://n1:6379,n2:6379",
    ),
    "cluster-tls": (
        {"mode": "cluster", "cluster": {"nodes": ["n1:6380"], "tls": True}},
        "rediss+cluster://n1:6380",
    ),
    "external": (
        {"mode": "external", "external": {"url": "rediss://managed.example:6380/1"}},
        "rediss://managed.example:6380/1",
    ),
    "enabled-false": (
        {"enabled": False, "external": {"url": "redis+cluster://c.example:6379"}},
        "redis+cluster://c.example:6379",
    ),
}  # fmt: skip


@pytest.mark.parametrize("mode", list(REDIS_MODES))
def test_redis_mode_sets_the_operators_url_and_only_standalone_installs_a_redis(
    kube_cluster: KubeTestCluster, mode: str
) -> None:
    from retrieve_core.redisclient import parse_redis_url

    redis_values, expected_url = REDIS_MODES[mode]
    values = {"redis": redis_values, "networkPolicy": {"enabled": True}}
    _, docs = _template(kube_cluster, "retrieve-system", values)
    (deployment,) = _by_kind(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    url = env["RETRIEVE_REDIS_URL"]
    in_chart = [d["metadata"]["name"] for d in docs if d["metadata"]["name"] == "retrieve-redis"]
    if mode == "standalone":
        assert url == "redis://retrieve-redis.retrieve-system.svc:6379/0"
        assert sorted(in_chart) == ["retrieve-redis"] * 3  # Service, StatefulSet, NetworkPolicy
    else:
        assert url == expected_url
        assert in_chart == []
    parse_redis_url(url)  # what the operator, receivers and workers accept (the CRD's pattern)


@pytest.mark.parametrize(
    ("redis_values", "message"),
    [
        ({"mode": "replicated"}, "redis.mode must be standalone, sentinel, cluster or external"),
        ({"mode": "sentinel", "sentinel": {"service": "m"}}, "redis.sentinel.hosts is required"),
        ({"mode": "sentinel", "sentinel": {"hosts": ["s1"]}}, "redis.sentinel.service is required"),
        ({"mode": "cluster"}, "redis.cluster.nodes is required"),
        ({"mode": "external"}, "redis.external.url is required"),
    ],
    ids=["unknown-mode", "sentinel-no-hosts", "sentinel-no-service", "cluster-no-nodes",
         "external-no-url"],
)  # fmt: skip
def test_a_redis_mode_without_its_settings_is_a_clear_error(
    kube_cluster: KubeTestCluster, redis_values: dict[str, Any], message: str
) -> None:
    path = _values_file(kube_cluster, {"redis": redis_values}, "retrieve-system")
    result = kube_cluster.helm(
        "template", "retrieve", str(CHART), "--values", str(path), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
