"""The pod spec of every runtime pod, built by one pure function.

The receiver and worker Deployments (`builders`) and the `<integration>-poll` CronJobs
(`schedule_cronjobs`) run the runtime image as `retrieve <subcommand>` with the same
ServiceAccount kind, "restricted" security context, environment (namespace, application,
ConfigMap, Redis URL, pod name) and writable /tmp; :func:`runtime_pod_spec` builds that once,
and each caller adds only what is its own (ports, probes, a preStop hook, a restart policy).
The key order of the result is part of the contract: a changed pod template rolls every pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from retrieve_core.constants import ENV_REDIS_URL
from retrieve_core.models import ComponentSpec

from .deployed import DeployedApplication, config_map_name
from .rbac import Component, runtime_name

RUNTIME_UID: Final = 65532  # the "nonroot" user of distroless-style images
TMP_VOLUME: Final = "tmp"

ENV_NAMESPACE: Final = "RETRIEVE_NAMESPACE"
ENV_APPLICATION: Final = "RETRIEVE_APPLICATION"
ENV_CONFIG_MAP: Final = "RETRIEVE_CONFIG_MAP"
ENV_POD_NAME: Final = "POD_NAME"


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


def runtime_env(app: DeployedApplication) -> list[dict[str, Any]]:
    """What every runtime process reads its application and Redis from."""
    return [
        {"name": ENV_NAMESPACE, "value": app.namespace},
        {"name": ENV_APPLICATION, "value": app.name},
        {"name": ENV_CONFIG_MAP, "value": config_map_name(app.name)},
        _redis_env(app),
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


def container_security_context() -> dict[str, Any]:
    """The "restricted" Pod Security Standard, per container."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def admin_probes() -> dict[str, Any]:
    """Startup, liveness and readiness probes on the admin port (`/healthz`, `/readyz`)."""
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


def runtime_pod_spec(
    app: DeployedApplication,
    spec: ComponentSpec,
    *,
    subcommand: str,
    args: list[str],
    service_account: Component,
    extra_env: Sequence[dict[str, Any]] = (),
    resources: dict[str, Any] | None = None,
    ports: list[dict[str, Any]] | None = None,
    probes: dict[str, Any] | None = None,
    lifecycle: dict[str, Any] | None = None,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    """The pod spec of one runtime container running `retrieve <subcommand> <args>`.

    `spec` is the component whose image, resources and scheduling constraints (nodeSelector,
    tolerations, affinity) the pod takes; `resources` overrides its resources. The container is
    named after the subcommand; `service_account` names the component whose namespace-wide
    ServiceAccount the pod runs as. The optional parts appear only when given.
    """
    container: dict[str, Any] = {
        "name": subcommand,
        "image": spec.image or app.runtime.image,
        "command": ["retrieve", subcommand],
        "args": args,
        "env": [*runtime_env(app), *extra_env],
    }
    if ports is not None:
        container["ports"] = ports
    if probes is not None:
        container.update(probes)
    container["resources"] = spec.resources if resources is None else resources
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if app.runtime.image_pull_policy:
        container["imagePullPolicy"] = app.runtime.image_pull_policy
    if lifecycle is not None:
        container["lifecycle"] = lifecycle
    pod: dict[str, Any] = {
        # Namespace-wide ServiceAccount: get/list/watch ConfigMaps and Secrets (rbac.py).
        "serviceAccountName": runtime_name(service_account),
        "automountServiceAccountToken": True,
        "securityContext": pod_security_context(),
    }
    if restart_policy is not None:
        pod["restartPolicy"] = restart_policy
    pod["containers"] = [container]
    pod["volumes"] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    if spec.affinity:
        pod["affinity"] = spec.affinity
    return pod
