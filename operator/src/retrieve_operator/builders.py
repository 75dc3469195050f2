"""Desired state of an application's children, built by pure functions (no I/O, no kopf).

Each builder takes one validated model, :class:`DeployedApplication` (`deployed`: the
application's runtime config plus what the operator knows about the object: its uid and the
operator-wide runtime defaults), and returns the manifest the operator server-side-applies.
Tests call them directly. The Deployments' pod spec is `pod_spec.runtime_pod_spec`, which the
`<integration>-poll` CronJobs (`schedule_cronjobs`) share.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

from retrieve_core.config import CONFIG_MAP_KEY, ApplicationConfig
from retrieve_core.constants import (
    API_GROUP,
    API_GROUP_VERSION,
    KIND_APPLICATION,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    PRODUCT_NAME,
)
from retrieve_core.models import ComponentSpec

from .deployed import (
    DeployedApplication,
    RuntimeDefaults,
    check_resources,
    config_map_name,
    http_route_name,
    ingress_name,
    receiver_name,
    worker_name,
)
from .gateway import GATEWAY_API_VERSION, GATEWAY_GROUP, GATEWAY_KIND, HTTPROUTE_KIND
from .pod_spec import admin_probes, runtime_pod_spec

# The model and the names live in `deployed`; the operator's modules and tests import them
# from here too.
__all__ = [
    "DeployedApplication",
    "RuntimeDefaults",
    "check_resources",
    "config_map_name",
    "http_route_name",
    "ingress_name",
    "receiver_name",
    "worker_name",
]

Manifest = dict[str, Any]
Component = Literal["receiver", "worker", "config", "ingress", "httproute", "poll"]

HTTP_PORT: Final = 8080
ADMIN_PORT: Final = 8081
SERVICE_PORT: Final = 80
INGRESS_PATH: Final = "/integration"
ANNOTATION_CONFIG_HASH: Final = f"{API_GROUP}/config-hash"
ANNOTATION_CLUSTER_ISSUER: Final = "cert-manager.io/cluster-issuer"

ENV_CONSOLE_TOKEN: Final = "RETRIEVE_CONSOLE_TOKEN"
PRE_STOP_SECONDS: Final = 5


# ------------------------------------------------------------------------------- helpers


def selector_labels(app: str, component: Component) -> dict[str, str]:
    return {LABEL_NAME: PRODUCT_NAME, LABEL_INSTANCE: app, LABEL_COMPONENT: component}


def labels(app: str, component: Component) -> dict[str, str]:
    return {**selector_labels(app, component), LABEL_MANAGED_BY: MANAGED_BY}


def owner_reference(app: DeployedApplication) -> dict[str, Any]:
    return {
        "apiVersion": API_GROUP_VERSION,
        "kind": KIND_APPLICATION,
        "name": app.name,
        "uid": app.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(app: DeployedApplication, name: str, component: Component) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": app.namespace,
        "labels": labels(app.name, component),
        "ownerReferences": [owner_reference(app)],
    }


def config_hash(config: ApplicationConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def _deployment(
    app: DeployedApplication,
    component: Literal["receiver", "worker"],
    name: str,
    spec: ComponentSpec,
    pod: dict[str, Any],
    *,
    max_unavailable: int,
) -> Manifest:
    # No config hash in the pod template: receivers and workers watch the ConfigMap, so a
    # whitelist or integration change must not restart pods. Only image/env/args changes do.
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(app, name, component),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(app.name, component)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels(app.name, component),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ADMIN_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


# ------------------------------------------------------------------------------- builders


def build_config_map(app: DeployedApplication) -> Manifest:
    """`<app>-config`: whitelist, trusted proxies and integration table; no secret values."""
    metadata = _metadata(app, config_map_name(app.name), "config")
    metadata["annotations"] = {ANNOTATION_CONFIG_HASH: config_hash(app.config)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_MAP_KEY: app.config.to_json()},
    }


def console_secret_name(app_name: str) -> str:
    """The optional Secret whose `token` turns the receiver's admin console on."""
    return f"{app_name}-console"


def _receiver_resources(resources: dict[str, Any], processes: int) -> dict[str, Any]:
    """With several processes and no CPU request of the user's, one CPU per process: the
    scheduler then places the pod where its processes get the cores they are there to use."""
    if processes <= 1 or "cpu" in resources.get("requests", {}):
        return resources
    return {**resources, "requests": {**resources.get("requests", {}), "cpu": str(processes)}}


def build_receiver_deployment(app: DeployedApplication) -> Manifest:
    spec = app.config.spec.receiver
    args = [f"--port={HTTP_PORT}", f"--admin-port={ADMIN_PORT}"]
    if spec.processes > 1:  # only then: one process changes no existing pod template
        args.append(f"--processes={spec.processes}")
    pod = runtime_pod_spec(
        app,
        spec,
        subcommand="receiver",
        args=args,
        service_account="receiver",
        # The admin console is off unless the optional Secret <app>-console holds a `token`.
        extra_env=[
            {
                "name": ENV_CONSOLE_TOKEN,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": console_secret_name(app.name),
                        "key": "token",
                        "optional": True,
                    }
                },
            }
        ],
        resources=_receiver_resources(spec.resources, spec.processes),
        ports=[
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        probes=admin_probes(),
        # On SIGTERM keep answering while the endpoint is removed from the Service and the
        # Ingress controller's upstreams, so no webhook in flight meets a closed port.
        lifecycle={"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}},
    )
    # Never fewer ready receivers than asked for during a rollout: webhooks keep being answered.
    return _deployment(app, "receiver", receiver_name(app.name), spec, pod, max_unavailable=0)


def build_receiver_service(app: DeployedApplication) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(app, receiver_name(app.name), "receiver"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(app.name, "receiver"),
            # `admin` (never behind the Ingress) is what the chart's ServiceMonitor scrapes.
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"},
            ],
        },
    }


def build_worker_deployment(app: DeployedApplication) -> Manifest:
    spec = app.config.spec.worker
    pod = runtime_pod_spec(
        app,
        spec,
        subcommand="worker",
        args=[f"--admin-port={ADMIN_PORT}", f"--concurrency={spec.concurrency}"],
        service_account="worker",
        ports=[{"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        probes=admin_probes(),
    )
    return _deployment(app, "worker", worker_name(app.name), spec, pod, max_unavailable=1)


def build_ingress(app: DeployedApplication) -> Manifest:
    """`<app>-webhook`: host webhook-<app>.<domain>, path /integration to the receiver."""
    webhook = app.config.spec.webhook
    host = app.config.host
    if host is None:
        raise ValueError("build_ingress: the webhook is disabled")
    metadata = _metadata(app, ingress_name(app.name), "ingress")
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": INGRESS_PATH,
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": receiver_name(app.name),
                                    "port": {"name": "http"},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if webhook.ingress_class_name:
        spec["ingressClassName"] = webhook.ingress_class_name
    if webhook.tls is not None:
        spec["tls"] = [{"hosts": [host], "secretName": webhook.tls.secret_name}]
        if webhook.tls.cluster_issuer:
            metadata["annotations"] = {ANNOTATION_CLUSTER_ISSUER: webhook.tls.cluster_issuer}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def build_http_route(app: DeployedApplication) -> Manifest:
    """`<app>-webhook` HTTPRoute: the webhook host(s), path /integration to the receiver,
    attached to the Gateways of spec.webhook.gateway (TLS is the Gateway listener's)."""
    gateway = app.config.spec.webhook.gateway
    if gateway is None or not app.config.hosts:
        raise ValueError("build_http_route: the webhook is disabled or not Gateway-routed")
    parents: list[dict[str, Any]] = []
    for ref in gateway.parent_refs:
        parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": GATEWAY_KIND, "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": HTTPROUTE_KIND,
        "metadata": _metadata(app, http_route_name(app.name), "httproute"),
        "spec": {
            "parentRefs": parents,
            "hostnames": list(app.config.hosts),
            "rules": [
                {
                    # Path elements: /integration, /integration/<id>, /integration/<id>/xml.
                    "matches": [{"path": {"type": "PathPrefix", "value": INGRESS_PATH}}],
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": receiver_name(app.name),
                            "port": SERVICE_PORT,
                        }
                    ],
                }
            ],
        },
    }


def build_children(app: DeployedApplication) -> list[Manifest]:
    """Every child the application should have, in the order they are applied.

    The route comes last, after the Service it points at. With spec.webhook.gateway it is an
    HTTPRoute, when the operator may manage them (else no route, and the Ready condition says
    why); otherwise an Ingress.
    """
    children = [build_config_map(app), build_worker_deployment(app)]
    if app.webhook_enabled:
        children += [build_receiver_service(app), build_receiver_deployment(app)]
        if not app.gateway_routed:
            children.append(build_ingress(app))
        elif app.runtime.gateway_api:
            children.append(build_http_route(app))
    return children


def absent_children(app: DeployedApplication) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of children that must not exist: disabling the webhook removes
    the route and the receiver (workers keep draining the queue); switching between Ingress and
    Gateway routing removes the other route. HTTPRoutes are only looked at when the operator
    may manage them."""
    ingress = ("networking.k8s.io/v1", "Ingress", ingress_name(app.name))
    route = (GATEWAY_API_VERSION, HTTPROUTE_KIND, http_route_name(app.name))
    routes = [ingress, route] if app.runtime.gateway_api else [ingress]
    if not app.webhook_enabled:
        return [
            *routes,
            ("apps/v1", "Deployment", receiver_name(app.name)),
            ("v1", "Service", receiver_name(app.name)),
        ]
    if app.gateway_routed:
        return [ingress]
    return [r for r in routes if r is not ingress]
