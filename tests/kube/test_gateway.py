"""Gateway API routing against a real API server: the operator (chart RBAC with
gatewayApi.enabled) and the standard-channel CRDs of the pinned sigs.k8s.io/gateway-api module.

No Gateway controller runs on the test API server: the tests write an HTTPRoute's
`status.parents` themselves, as a controller (Traefik: `traefik.io/gateway-controller`) would.
The Gateway API CRDs are cluster-wide: a test that needs them installs them (`gateway_crds`),
the test of their absence removes them first, so each test stands alone in any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from harness.kube_control_plane import KubeTestCluster
from tests.support.kube_operator import (
    DEFAULT_REDIS,
    REPO_ROOT,
    RUNTIME_IMAGE,
    Cluster,
    application,
    chart_operator_rbac,
    eventually,
    integration,
    unique_id,
)

pytestmark = pytest.mark.kube

CRDS_SCRIPT = REPO_ROOT / "hack" / "gateway-api" / "crds.sh"
CONTROLLER = "traefik.io/gateway-controller"
HOST = "webhook-yourapp.retrievetl.com"
GATEWAY_REF = {"name": "shared-gw", "namespace": "infra", "sectionName": "web"}
T0 = "2026-01-01T00:00:00Z"


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gateway_crds_dir() -> Path:
    """config/crd/standard of the pinned module (downloaded once into the test cache)."""
    result = subprocess.run(
        [str(CRDS_SCRIPT)], check=True, capture_output=True, text=True, timeout=600
    )
    directory = Path(result.stdout.strip().splitlines()[-1])
    assert (directory / "gateway.networking.k8s.io_httproutes.yaml").is_file()
    return directory


def _crd_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("gateway.networking.k8s.io_*.yaml"))


def _crd_names(directory: Path) -> list[str]:
    return [
        f"crd/{p.name.removeprefix('gateway.networking.k8s.io_').removesuffix('.yaml')}"
        f".gateway.networking.k8s.io"
        for p in _crd_files(directory)
        if not p.name.endswith("_vap_safeupgrades.yaml")
    ]


@pytest.fixture
def gateway_crds(kube_cluster: KubeTestCluster, gateway_crds_dir: Path) -> Path:
    """The standard-channel CRDs installed and established."""
    for path in _crd_files(gateway_crds_dir):
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *_crd_names(gateway_crds_dir)
    )
    return gateway_crds_dir


@pytest.fixture(scope="module")
def gateway_operator(
    kube_cluster: KubeTestCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The operator with Gateway API support, as the chart runs it with gatewayApi.enabled: its
    RBAC, and RETRIEVE_GATEWAY_API=true. A process of its own: handlers.py reads the setting
    at import. Yields its log; it must neither exit nor log a traceback."""
    log_path = tmp_path_factory.mktemp("gateway-operator") / "operator.log"
    with chart_operator_rbac(kube_cluster, "gatewayApi.enabled=true") as rbac:
        command = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "-A",
            f"--peering={rbac['peering']}",
            "--priority=100",
            "-m",
            "retrieve_operator.handlers",
        ]
        env = {
            **os.environ,
            "KUBECONFIG": rbac["kubeconfig"],
            "RETRIEVE_RUNTIME_IMAGE": RUNTIME_IMAGE,
            "RETRIEVE_REDIS_URL": DEFAULT_REDIS,
            "RETRIEVE_RESYNC_SECONDS": "5",
            "RETRIEVE_MANAGE_RUNTIME_RBAC": "true",
            "RETRIEVE_OPERATOR_METRICS_PORT": "0",
            "RETRIEVE_GATEWAY_API": "true",
        }
        with (
            log_path.open("wb") as log,
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as process,
        ):
            try:
                yield log_path
                assert process.poll() is None, log_path.read_text(errors="replace")[-5000:]
            finally:
                process.terminate()
                process.wait(timeout=30)
    print(f"operator log: {log_path}")
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output[-5000:]


@pytest.fixture
def world(gateway_operator: Path, kube_cluster: KubeTestCluster, kube_namespace: str) -> Cluster:
    return Cluster(kube_cluster, kube_namespace)


# ------------------------------------------------------------------------------- helpers


def gateway_app(name: str = "yourapp", **gateway: Any) -> dict[str, Any]:
    return application(
        name,
        webhook={
            "enabled": True,
            "domain": "retrievetl.com",
            "gateway": {"parentRefs": [GATEWAY_REF], **gateway},
        },
    )


def report(
    world: Cluster,
    route: dict[str, Any],
    accepted: tuple[str, str, str],
    resolved: tuple[str, str, str] = ("True", "ResolvedRefs", "backend resolved"),
) -> None:
    """Write the route's status.parents as the Gateway's controller would."""

    def condition(kind: str, verdict: tuple[str, str, str]) -> dict[str, Any]:
        status, reason, message = verdict
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": T0,
            "observedGeneration": route["metadata"]["generation"],
        }

    status = {
        "parents": [
            {
                "parentRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    **GATEWAY_REF,
                },
                "controllerName": CONTROLLER,
                "conditions": [
                    condition("Accepted", accepted),
                    condition("ResolvedRefs", resolved),
                ],
            }
        ]
    }
    world.kubectl(
        "patch",
        "httproute",
        route["metadata"]["name"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def ready_with(world: Cluster, reason: str) -> dict[str, Any]:
    return world.wait_ready("retrieveapplication", "yourapp", reason)


# ------------------------------------------------------------------------------- tests


def test_without_the_gateway_api_crds_the_application_says_so_and_ingress_keeps_working(
    world: Cluster, kube_cluster: KubeTestCluster, gateway_crds_dir: Path
) -> None:
    kube_cluster.kubectl(
        "delete",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=60s",
        *_crd_names(gateway_crds_dir),
    )
    routed, plain = unique_id(), unique_id()
    world.apply(
        gateway_app(),
        integration("orders", integrationId=routed),
        application("plain"),
        integration("refunds", app="plain", integrationId=plain),
    )

    condition = ready_with(world, "GatewayAPINotInstalled")
    assert condition["status"] == "False"
    assert "Gateway API" in condition["message"]
    assert "not installed" in condition["message"]
    # The rest of the application is there; no Ingress stands in for the missing route.
    assert eventually(partial(world.get, "service", "yourapp-receiver"), "receiver Service")
    assert eventually(partial(world.get, "deployment", "yourapp-receiver"), "receiver")
    assert world.get("ingress", "yourapp-webhook") is None

    # An Ingress-routed application next to it is served as always.
    assert world.wait_ready("retrieveapplication", "plain", "Reconciled")["status"] == "True"
    ingress = eventually(partial(world.get, "ingress", "plain-webhook"), "the Ingress of plain")
    assert ingress["spec"]["rules"][0]["host"] == "webhook-plain.retrievetl.com"
    world.wait_ready("integration", "refunds", "Reconciled")

    # Installing the CRDs later is enough: the next resync creates the route (no restart).
    for path in _crd_files(gateway_crds_dir):
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    ready_with(world, "RoutePending")
    assert world.get("httproute", "yourapp-webhook") is not None


def test_a_gateway_routed_application_gets_an_owned_labelled_http_route_and_no_ingress(
    world: Cluster, gateway_crds: Path
) -> None:
    orders_id = unique_id()
    world.apply(gateway_app(), integration("orders", integrationId=orders_id))

    route = eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute")
    app = world.get("retrieveapplication", "yourapp")
    assert app is not None
    meta = route["metadata"]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "retrieve",
        "app.kubernetes.io/instance": "yourapp",
        "app.kubernetes.io/component": "httproute",
        "app.kubernetes.io/managed-by": "retrieve-operator",
    }
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "RetrieveApplication",
        app["metadata"]["uid"],
        True,
    )
    spec = route["spec"]
    (parent,) = spec["parentRefs"]
    assert parent == {"group": "gateway.networking.k8s.io", "kind": "Gateway", **GATEWAY_REF}
    assert spec["hostnames"] == [HOST]
    (rule,) = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/integration"}}]
    (backend,) = rule["backendRefs"]
    assert (backend["kind"], backend["name"], backend["port"]) == (
        "Service",
        "yourapp-receiver",
        80,
    )
    assert world.get("ingress", "yourapp-webhook") is None

    # No controller has reported on it yet.
    pending = ready_with(world, "RoutePending")
    assert pending["status"] == "False"
    assert "Gateway infra/shared-gw listener web" in pending["message"]
    orders = world.wait_ready("integration", "orders", "Reconciled")
    assert orders["_object"]["status"]["webhookURL"] == f"https://{HOST}/integration/{orders_id}"

    # The Gateway accepts it and resolves the receiver Service.
    report(world, route, ("True", "Accepted", "accepted"))
    accepted = ready_with(world, "Reconciled")
    assert accepted["status"] == "True"
    assert f"serving https://{HOST} through Gateway infra/shared-gw" in accepted["message"]


def test_a_gateway_that_does_not_allow_the_route_is_named_in_the_ready_condition(
    world: Cluster, gateway_crds: Path
) -> None:
    world.apply(gateway_app(), integration("orders", integrationId=unique_id()))
    route = eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute")
    refusal = "no listener of shared-gw admits routes from namespace " + world.namespace
    report(world, route, ("False", "NotAllowedByListeners", refusal))

    condition = ready_with(world, "RouteNotAccepted")
    assert condition["status"] == "False"
    assert "Gateway infra/shared-gw listener web refused it" in condition["message"]
    assert f"NotAllowedByListeners: {refusal}" in condition["message"]

    def warned() -> bool:  # Events are posted in the background, after the status patch
        events = json.loads(world.kubectl("get", "events", "-o", "json"))["items"]
        return any(e["reason"] == "RouteNotAccepted" and e["type"] == "Warning" for e in events)

    eventually(warned, "a RouteNotAccepted Warning event")

    # Accepted, but the backend does not resolve (e.g. a ReferenceGrant is missing).
    report(
        world,
        route,
        ("True", "Accepted", "accepted"),
        ("False", "RefNotPermitted", "backendRef yourapp-receiver not permitted"),
    )
    condition = ready_with(world, "RouteRefsNotResolved")
    assert "RefNotPermitted: backendRef yourapp-receiver not permitted" in condition["message"]

    report(world, route, ("True", "Accepted", "accepted"))
    ready_with(world, "Reconciled")


def test_drift_in_the_http_route_is_repaired(world: Cluster, gateway_crds: Path) -> None:
    world.apply(gateway_app(), integration("orders", integrationId=unique_id()))
    eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute")

    world.kubectl(
        "patch",
        "httproute",
        "yourapp-webhook",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"hostnames": ["evil.example.com"]}}),
    )
    eventually(
        lambda: (
            (world.get("httproute", "yourapp-webhook") or {}).get("spec", {}).get("hostnames")
            == [HOST]
        ),
        "hostnames restored",
    )
    world.kubectl("delete", "httproute", "yourapp-webhook")
    eventually(partial(world.get, "httproute", "yourapp-webhook"), "HTTPRoute recreated")


def test_the_http_route_goes_when_the_webhook_is_disabled_or_routed_by_an_ingress_again(
    world: Cluster, gateway_crds: Path
) -> None:
    world.apply(gateway_app(), integration("orders", integrationId=unique_id()))
    eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute")

    disabled = gateway_app()
    disabled["spec"]["webhook"]["enabled"] = False
    world.apply(disabled)
    ready_with(world, "WebhookDisabled")
    eventually(
        lambda: all(
            world.get(kind, name) is None
            for kind, name in [
                ("httproute", "yourapp-webhook"),
                ("deployment", "yourapp-receiver"),
                ("service", "yourapp-receiver"),
            ]
        ),
        "HTTPRoute and receiver removed",
    )

    world.apply(gateway_app())
    eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute back")

    # Back to an Ingress: the route goes, the Ingress comes.
    world.kubectl(
        "patch",
        "retrieveapplication",
        "yourapp",
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/webhook/gateway"}]),
    )
    ready_with(world, "Reconciled")
    eventually(lambda: world.get("httproute", "yourapp-webhook") is None, "the HTTPRoute removed")
    eventually(partial(world.get, "ingress", "yourapp-webhook"), "the Ingress")

    # And to the Gateway again: the Ingress goes.
    world.apply(gateway_app())
    eventually(partial(world.get, "httproute", "yourapp-webhook"), "the HTTPRoute")
    eventually(lambda: world.get("ingress", "yourapp-webhook") is None, "the Ingress removed")


def test_route_hostnames_replace_the_webhook_host_in_the_route_and_the_urls(
    world: Cluster, gateway_crds: Path
) -> None:
    orders_id = unique_id()
    world.apply(
        gateway_app(hostnames=["hooks.shop.example", "webhooks.shop.example"]),
        integration("orders", integrationId=orders_id),
    )

    def hostnames() -> list[str] | None:
        return ((world.get("httproute", "yourapp-webhook") or {}).get("spec") or {}).get(
            "hostnames"
        )

    assert eventually(hostnames, "the HTTPRoute") == ["hooks.shop.example", "webhooks.shop.example"]
    orders = world.wait_ready("integration", "orders", "Reconciled")
    assert orders["_object"]["status"]["webhookURL"] == (
        f"https://hooks.shop.example/integration/{orders_id}"
    )
    pending = ready_with(world, "RoutePending")
    assert pending["_object"]["status"]["webhookHost"] == "hooks.shop.example"
