"""RBAC of the operator and of the receiver/worker pods, defined once.

The operator creates a ServiceAccount, Role and RoleBinding per component in each namespace that
holds a RetrieveApplication (``runtime_rbac_objects``). The Helm chart renders the same rules
from ``charts/retrieve/files/rbac-rules.yaml``, which ``python -m retrieve_operator.crds``
generates from ``rules_document()``: the operator's ClusterRole and, for namespaces prepared by
the chart, the runtime Roles.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from retrieve_core.constants import (
    API_GROUP,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    MANAGED_BY,
    PLURAL_APPLICATION,
    PLURAL_INTEGRATION,
    PRODUCT_NAME,
)

from .gateway import GATEWAY_GROUP, HTTPROUTE_PLURAL

Component = Literal["receiver", "worker"]
Rule = dict[str, list[str]]

RUNTIME_COMPONENTS: Final[tuple[Component, ...]] = ("receiver", "worker")
READ: Final = ["get", "list", "watch"]
MANAGE: Final = ["get", "list", "watch", "create", "update", "patch", "delete"]

# Receivers and workers read their application's <app>-config ConfigMap and the Secrets it
# references (signature keys); they never write to the API server.
_RUNTIME_RULES: Final[dict[Component, list[Rule]]] = {
    "receiver": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": READ}],
    "worker": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": READ}],
}


def runtime_name(component: Component) -> str:
    """Name of the component's ServiceAccount, Role and RoleBinding in an app namespace."""
    return f"{PRODUCT_NAME}-{component}"


def runtime_rules(component: Component) -> list[Rule]:
    return [{k: list(v) for k, v in rule.items()} for rule in _RUNTIME_RULES[component]]


def runtime_labels(component: Component) -> dict[str, str]:
    return {
        LABEL_NAME: PRODUCT_NAME,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PRODUCT_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def _metadata(namespace: str, component: Component) -> dict[str, Any]:
    return {
        "name": runtime_name(component),
        "namespace": namespace,
        "labels": runtime_labels(component),
    }


def runtime_service_account(namespace: str, component: Component) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(namespace, component),
        # Pods that mount a token get it projected; nothing else needs a long-lived secret.
        "automountServiceAccountToken": True,
    }


def runtime_role(namespace: str, component: Component) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(namespace, component),
        "rules": runtime_rules(component),
    }


def runtime_role_binding(namespace: str, component: Component) -> dict[str, Any]:
    name = runtime_name(component)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(namespace, component),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def runtime_rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of every runtime component, in apply order."""
    objects: list[dict[str, Any]] = []
    for component in RUNTIME_COMPONENTS:
        objects += [
            runtime_service_account(namespace, component),
            runtime_role(namespace, component),
            runtime_role_binding(namespace, component),
        ]
    return objects


def operator_rules() -> list[Rule]:
    """The operator's ClusterRole: its CRDs, the children it owns, and what kopf needs."""
    return [
        # Its own resources: watch, patch (kopf's finalizer and progress annotations), status.
        {
            "apiGroups": [API_GROUP],
            "resources": [PLURAL_APPLICATION, PLURAL_INTEGRATION],
            "verbs": ["get", "list", "watch", "patch", "update"],
        },
        {
            "apiGroups": [API_GROUP],
            "resources": [f"{PLURAL_APPLICATION}/status", f"{PLURAL_INTEGRATION}/status"],
            "verbs": ["get", "patch", "update"],
        },
        # blockOwnerDeletion on children's ownerReferences needs update on the owner's finalizers.
        {
            "apiGroups": [API_GROUP],
            "resources": [f"{PLURAL_APPLICATION}/finalizers", f"{PLURAL_INTEGRATION}/finalizers"],
            "verbs": ["update"],
        },
        # Children of an application: created, reconciled on drift, removed when disabled.
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": MANAGE},
        {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": MANAGE},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": MANAGE},
        # `<integration>-poll` CronJobs of Integrations with a spec.schedule.
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": MANAGE},
        # Secrets are only checked for existence (SecretNotFound) and never written.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},
        # kopf: events about handlers, resource discovery, namespace scanning, peering.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": READ,
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    ]


def operator_runtime_rbac_rules() -> list[Rule]:
    """Extra rules when the operator provisions the runtime RBAC of app namespaces itself.

    Creating a Role that grants get/list/watch on configmaps and secrets needs no
    ``escalate``/``bind``: the operator already holds those permissions cluster-wide.
    """
    return [
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": MANAGE},
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles", "rolebindings"],
            "verbs": MANAGE,
        },
    ]


def operator_gateway_api_rules() -> list[Rule]:
    """Extra rules with Gateway API routing (chart value gatewayApi.enabled): the `<app>-webhook`
    HTTPRoutes of applications with spec.webhook.gateway. Gateways, ReferenceGrants and the
    routes' status belong to the platform and its Gateway controller: not even read."""
    return [{"apiGroups": [GATEWAY_GROUP], "resources": [HTTPROUTE_PLURAL], "verbs": MANAGE}]


def rules_document() -> dict[str, Any]:
    """What the chart renders (charts/retrieve/files/rbac-rules.yaml)."""
    return {
        "operator": {
            "rules": operator_rules(),
            "runtimeRbacRules": operator_runtime_rbac_rules(),
            "gatewayApiRules": operator_gateway_api_rules(),
        },
        "runtime": {
            component: {"name": runtime_name(component), "rules": runtime_rules(component)}
            for component in RUNTIME_COMPONENTS
        },
    }
