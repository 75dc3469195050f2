"""Desired state of an application's children, built by pure functions (no I/O, no kopf).

Each builder takes one validated model, :class:`DeployedApplication` (the application's runtime
config plus what the operator knows about the object: its uid and the operator-wide runtime
defaults), and returns the manifest the operator server-side-applies. Tests call them directly.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from retrieve_core.config import CONFIG_MAP_KEY, ApplicationConfig
from retrieve_core.constants import (
    API_GROUP,
    API_GROUP_VERSION,
    ENV_REDIS_URL,
    KIND_APPLICATION,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    PRODUCT_NAME,
)
from retrieve_core.models import ComponentSpec

from .gateway import GATEWAY_API_VERSION, GATEWAY_GROUP, GATEWAY_KIND, HTTPROUTE_KIND
from .rbac import runtime_name

Manifest = dict[str, Any]
Component = Literal["receiver", "worker", "config", "ingress", "httproute"]

HTTP_PORT: Final = 8080
ADMIN_PORT: Final = 8081
SERVICE_PORT: Final = 80
RUNTIME_UID: Final = 65532  # the "nonroot" user of distroless-style images
INGRESS_PATH: Final = "/integration"
ANNOTATION_CONFIG_HASH: Final = f"{API_GROUP}/config-hash"
ANNOTATION_CLUSTER_ISSUER: Final = "cert-manager.io/cluster-issuer"

ENV_NAMESPACE: Final = "RETRIEVE_NAMESPACE"
ENV_APPLICATION: Final = "RETRIEVE_APPLICATION"
ENV_CONFIG_MAP: Final = "RETRIEVE_CONFIG_MAP"
ENV_POD_NAME: Final = "POD_NAME"
ENV_CONSOLE_TOKEN: Final = "RETRIEVE_CONSOLE_TOKEN"
PRE_STOP_SECONDS: Final = 5


# ------------------------------------------------------------------------------- names


def config_map_name(app: str) -> str:
    return f"{app}-config"


def receiver_name(app: str) -> str:
    return f"{app}-receiver"


def worker_name(app: str) -> str:
    return f"{app}-worker"


def ingress_name(app: str) -> str:
    return f"{app}-webhook"


def http_route_name(app: str) -> str:
    """The HTTPRoute has the Ingress's name: one of the two exists, never both."""
    return f"{app}-webhook"


# ------------------------------------------------------------------------------- models

# Kubernetes' resource.Quantity syntax (apimachinery/pkg/api/resource).
_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
_RESOURCE_SECTIONS = ("limits", "requests")


def check_resources(resources: dict[str, Any], where: str) -> None:
    """A container's `resources`: limits/requests of valid quantities (the API server would
    otherwise refuse the Deployment, on apply, with a conversion error)."""
    for section, values in resources.items():
        if section == "claims":
            continue
        if section not in _RESOURCE_SECTIONS or not isinstance(values, dict):
            raise ValueError(f"{where}.{section}: expected limits or requests (a mapping)")
        for name, quantity in values.items():
            text = str(quantity) if isinstance(quantity, int | float) else quantity
            if not isinstance(text, str) or not _QUANTITY.match(text):
                raise ValueError(f"{where}.{section}.{name}: {quantity!r} is not a quantity")


class RuntimeDefaults(BaseModel):
    """Operator-wide defaults for the runtime pods and the routing (from the operator's
    environment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    redis_url: str | None = None
    """Used when an application sets neither `spec.redis.url` nor `spec.redis.secretKeyRef`."""
    gateway_api: bool = False
    """The operator may manage HTTPRoutes (chart value gatewayApi.enabled: RBAC granted)."""


class DeployedApplication(BaseModel):
    """One RetrieveApplication as the operator deploys it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: ApplicationConfig
    uid: str
    runtime: RuntimeDefaults

    @model_validator(mode="after")
    def _valid_resources(self) -> DeployedApplication:
        for component in ("receiver", "worker"):
            spec: ComponentSpec = getattr(self.config.spec, component)
            check_resources(spec.resources, f"spec.{component}.resources")
        return self

    @model_validator(mode="after")
    def _has_redis(self) -> DeployedApplication:
        redis = self.config.spec.redis
        if not (redis.url or redis.secret_key_ref or self.runtime.redis_url):
            raise ValueError(
                "spec.redis: set url or secretKeyRef (the operator has no default Redis URL)"
            )
        return self

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def webhook_enabled(self) -> bool:
        return self.config.spec.webhook.enabled

    @property
    def gateway_routed(self) -> bool:
        """The webhook is routed by an HTTPRoute (spec.webhook.gateway), not an Ingress."""
        return self.config.spec.webhook.gateway is not None


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


def _redis_env(app: DeployedApplication) -> dict[str, Any]:
    redis = app.config.spec.redis
    if redis.secret_key_ref is not None:
        ref = redis.secret_key_ref
        return {
            "name": ENV_REDIS_URL,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    # DeployedApplication's validator guarantees one of the two.
    return {"name": ENV_REDIS_URL, "value": redis.url or app.runtime.redis_url}


def console_secret_name(app_name: str) -> str:
    return f"{app_name}-console"


def _env(app: DeployedApplication) -> list[dict[str, Any]]:
    return [
        {"name": ENV_NAMESPACE, "value": app.namespace},
        {"name": ENV_APPLICATION, "value": app.name},
        {"name": ENV_CONFIG_MAP, "value": config_map_name(app.name)},
        _redis_env(app),
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


def _container_security_context() -> dict[str, Any]:
    """The "restricted" Pod Security Standard, per container."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probes() -> dict[str, Any]:
    return {
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
    }


def _container(
    app: DeployedApplication,
    component: Literal["receiver", "worker"],
    spec: ComponentSpec,
    args: list[str],
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": component,
        "image": spec.image or app.runtime.image,
        "command": ["retrieve", component],
        "args": args,
        "env": _env(app),
        "ports": ports,
        **_probes(),
        "resources": spec.resources,
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if app.runtime.image_pull_policy:
        container["imagePullPolicy"] = app.runtime.image_pull_policy
    return container


def _pod_spec(
    component: Literal["receiver", "worker"], spec: ComponentSpec, container: dict[str, Any]
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # Namespace-wide ServiceAccount: get/list/watch ConfigMaps and Secrets (rbac.py).
        "serviceAccountName": runtime_name(component),
        "automountServiceAccountToken": True,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    if spec.affinity:
        pod["affinity"] = spec.affinity
    return pod


def _deployment(
    app: DeployedApplication,
    *,
    component: Literal["receiver", "worker"],
    name: str,
    spec: ComponentSpec,
    container: dict[str, Any],
    strategy: dict[str, Any],
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
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": labels(app.name, component),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ADMIN_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": _pod_spec(component, spec, container),
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


def build_receiver_deployment(app: DeployedApplication) -> Manifest:
    spec = app.config.spec.receiver
    container = _container(
        app,
        "receiver",
        spec,
        args=[f"--port={HTTP_PORT}", f"--admin-port={ADMIN_PORT}"],
        ports=[
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
    )
    # The admin console is off unless the optional Secret <app>-console holds a `token`.
    container["env"].append(
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
    )
    # On SIGTERM keep answering while the endpoint is removed from the Service and the Ingress
    # controller's upstreams, so no webhook in flight meets a closed port.
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}}
    # Never fewer ready receivers than asked for during a rollout: webhooks keep being answered.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return _deployment(
        app,
        component="receiver",
        name=receiver_name(app.name),
        spec=spec,
        container=container,
        strategy=strategy,
    )


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
    container = _container(
        app,
        "worker",
        spec,
        args=[f"--admin-port={ADMIN_PORT}", f"--concurrency={spec.concurrency}"],
        ports=[{"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
    )
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}
    return _deployment(
        app,
        component="worker",
        name=worker_name(app.name),
        spec=spec,
        container=container,
        strategy=strategy,
    )


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
