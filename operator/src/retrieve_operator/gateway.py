"""Gateway API routing (spec.webhook.gateway): what a Gateway said of the webhook's HTTPRoute.

The operator applies an HTTPRoute `<app>-webhook` (builders.py); the controllers of the Gateways
it names report on it in `status.parents[]`, one entry per (parent, controller), with the
conditions `Accepted` (the Gateway took the route: a listener admits its namespace, kind and
host names) and `ResolvedRefs` (its backend, the receiver Service, resolved). These pure
functions turn that report into the application's Ready condition when the route is not
(yet) working, and say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from retrieve_core.constants import (
    CONDITION_READY,
    REASON_GATEWAY_API_DISABLED,
    REASON_GATEWAY_API_NOT_INSTALLED,
    REASON_ROUTE_NOT_ACCEPTED,
    REASON_ROUTE_PENDING,
    REASON_ROUTE_REFS_NOT_RESOLVED,
)

from .conditions import Condition, find_condition

GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
GATEWAY_API_VERSION: Final = f"{GATEWAY_GROUP}/v1"
HTTPROUTE_KIND: Final = "HTTPRoute"
HTTPROUTE_PLURAL: Final = "httproutes"
GATEWAY_KIND: Final = "Gateway"

ROUTE_ACCEPTED: Final = "Accepted"
ROUTE_RESOLVED_REFS: Final = "ResolvedRefs"


def gateway_api_disabled() -> Condition:
    return Condition(
        CONDITION_READY,
        False,
        REASON_GATEWAY_API_DISABLED,
        "spec.webhook.gateway needs the operator's Gateway API support, which is off: install "
        "the retrieve chart with gatewayApi.enabled=true (RBAC for HTTPRoutes), or route with "
        "an Ingress (remove spec.webhook.gateway)",
    )


def gateway_api_not_installed(route: str) -> Condition:
    return Condition(
        CONDITION_READY,
        False,
        REASON_GATEWAY_API_NOT_INSTALLED,
        f"HTTPRoute {route} not created: the Gateway API ({GATEWAY_API_VERSION} HTTPRoute) is "
        "not installed in this cluster; install its CRDs (standard channel) and a Gateway "
        "controller, or route with an Ingress (remove spec.webhook.gateway)",
    )


def _parent_key(ref: Mapping[str, Any], route_namespace: str) -> tuple[str, str, str, str, str]:
    """A parentRef with the API's defaults filled in (group, kind, namespace)."""
    return (
        str(ref.get("group") or GATEWAY_GROUP),
        str(ref.get("kind") or GATEWAY_KIND),
        str(ref.get("namespace") or route_namespace),
        str(ref.get("name") or ""),
        str(ref.get("sectionName") or ""),
    )


def describe_parent(ref: Mapping[str, Any], route_namespace: str) -> str:
    """`Gateway <ns>/<name>[ listener <section>]` for messages."""
    _, kind, namespace, name, section = _parent_key(ref, route_namespace)
    text = f"{kind} {namespace}/{name}"
    return f"{text} listener {section}" if section else text


def _current(condition: Mapping[str, Any] | None, generation: int | None) -> bool:
    """A condition about the route's current spec (not one its controller wrote earlier)."""
    if condition is None:
        return False
    observed = condition.get("observedGeneration")
    return observed is None or generation is None or int(observed) >= generation


def _detail(condition: Mapping[str, Any]) -> str:
    reason = str(condition.get("reason") or "")
    message = str(condition.get("message") or "").strip()
    return f"{reason}: {message}" if reason and message else reason or message or "no reason given"


def route_problem(route: Mapping[str, Any]) -> Condition | None:
    """Why the applied HTTPRoute does not carry webhooks yet, or None when every Gateway it
    names accepted it and resolved its backend.

    A refusal (`Accepted: False`) wins over an unresolved backend, which wins over a Gateway
    that has not reported on the current generation yet (no controller for it, a Gateway
    that does not exist, or simply not yet).
    """
    meta = route.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    generation = meta.get("generation")
    generation = int(generation) if generation is not None else None
    wanted: Iterable[Mapping[str, Any]] = (route.get("spec") or {}).get("parentRefs") or []
    reports = (route.get("status") or {}).get("parents") or []

    refused: list[str] = []
    unresolved: list[str] = []
    pending: list[str] = []
    for ref in wanted:
        key = _parent_key(ref, namespace)
        where = describe_parent(ref, namespace)
        accepted: list[Mapping[str, Any]] = []
        refusals: list[Mapping[str, Any]] = []
        resolutions: list[Mapping[str, Any]] = []
        for entry in reports:
            if _parent_key(entry.get("parentRef") or {}, namespace) != key:
                continue
            conditions = entry.get("conditions") or []
            verdict = find_condition(conditions, ROUTE_ACCEPTED)
            if verdict is None or not _current(verdict, generation):
                continue
            if verdict.get("status") == "True":
                accepted.append(verdict)
                resolved = find_condition(conditions, ROUTE_RESOLVED_REFS)
                if resolved is not None and _current(resolved, generation):
                    resolutions.append(resolved)
            else:
                refusals.append(verdict)
        if refusals and not accepted:
            refused.append(f"{where} refused it ({_detail(refusals[0])})")
        elif not accepted:
            pending.append(where)
        else:
            unresolved += [
                f"{where}: {_detail(r)}" for r in resolutions if r.get("status") == "False"
            ]

    if refused:
        return Condition(
            CONDITION_READY,
            False,
            REASON_ROUTE_NOT_ACCEPTED,
            f"HTTPRoute {name} is not accepted: " + "; ".join(refused),
        )
    if unresolved:
        return Condition(
            CONDITION_READY,
            False,
            REASON_ROUTE_REFS_NOT_RESOLVED,
            f"HTTPRoute {name} is accepted but its backend is not resolved: "
            + "; ".join(unresolved),
        )
    if pending:
        return Condition(
            CONDITION_READY,
            False,
            REASON_ROUTE_PENDING,
            f"HTTPRoute {name}: waiting for {', '.join(pending)} to accept it (no report on "
            f"generation {generation} in status.parents yet: does the Gateway exist, and does "
            "its GatewayClass's controller run?)",
        )
    return None
