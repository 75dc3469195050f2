"""Gateway API routing with no cluster: the spec, the HTTPRoute, which route exists, and what a
Gateway's report on the route makes of the application's Ready condition."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from retrieve_core.config import ApplicationConfig
from retrieve_core.models import RetrieveApplicationSpec
from retrieve_core.provider import ConfigSnapshot
from retrieve_operator import builders
from retrieve_operator.builders import DeployedApplication, RuntimeDefaults
from retrieve_operator.gateway import route_problem
from retrieve_operator.plan import Facts, ObjectRecord, plan_application, with_route_problem
from retrieve_operator.rbac import rules_document
from retrieve_operator.settings import OperatorOptions
from retrieve_receiver.routing import build_routing
from retrieve_receiver.settings import ReceiverSettings

pytestmark = pytest.mark.unit

UID = "0b0e5b8e-1111-4222-8333-944445555666"
GATEWAY_ON = RuntimeDefaults(image="retrieve:test", redis_url="redis://r:6379/0", gateway_api=True)
GATEWAY_OFF = RuntimeDefaults(image="retrieve:test", redis_url="redis://r:6379/0")
PARENT = {"name": "shared-gw", "namespace": "infra", "sectionName": "web"}


def _spec(webhook: dict[str, Any] | None = None, **gateway: Any) -> dict[str, Any]:
    hook: dict[str, Any] = {"enabled": True, "domain": "retrievetl.com"}
    if gateway:
        hook["gateway"] = {"parentRefs": [PARENT], **gateway}
    hook.update(webhook or {})
    return {"webhook": hook, "allowedList": ["203.0.113.0"]}


def _app(spec: dict[str, Any], runtime: RuntimeDefaults = GATEWAY_ON) -> DeployedApplication:
    config = ApplicationConfig(
        namespace="shop", name="yourapp", spec=RetrieveApplicationSpec.model_validate(spec)
    )
    return DeployedApplication(config=config, uid=UID, runtime=runtime)


def _kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [m["kind"] for m in manifests]


# ------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "ingress", [{"ingressClassName": "traefik"}, {"tls": {"secretName": "yourapp-tls"}}]
)
def test_a_gateway_and_ingress_settings_together_are_refused(ingress: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"either gateway .* or ingressClassName/tls"):
        RetrieveApplicationSpec.model_validate(_spec(ingress, parentRefs=[PARENT]))


def test_a_gateway_needs_a_parent_and_hostnames_are_dns_names() -> None:
    with pytest.raises(ValidationError, match="parentRefs"):
        RetrieveApplicationSpec.model_validate(_spec(parentRefs=[]))
    with pytest.raises(ValidationError, match="hostnames"):
        RetrieveApplicationSpec.model_validate(_spec(hostnames=["*.shop.example"]))


def test_route_hostnames_replace_the_webhook_host_and_the_first_one_is_the_urls_host() -> None:
    default = _app(_spec(parentRefs=[PARENT])).config
    assert default.hosts == ("webhook-yourapp.retrievetl.com",)
    named = _app(_spec(hostnames=["hooks.shop.example", "alt.shop.example"])).config
    assert named.hosts == ("hooks.shop.example", "alt.shop.example")
    assert named.host == "hooks.shop.example"
    disabled = _app(_spec({"enabled": False}, hostnames=["hooks.shop.example"])).config
    assert disabled.hosts == ()
    assert disabled.host is None


def test_a_receiver_serves_every_host_of_the_route() -> None:
    config = _app(_spec(hostnames=["webhook-other.shop.example", "hooks.shop.example"])).config
    routing = build_routing(ConfigSnapshot(applications=(config,)), ReceiverSettings())
    (app,) = routing.apps
    assert routing.app_for_host("hooks.shop.example:443") is app
    assert routing.app_for_host("webhook-other.shop.example") is app
    # A route host that looks like another application's is this application's.
    assert not routing.names_other_app("webhook-other.shop.example")
    assert routing.names_other_app("webhook-third.retrievetl.com")


# ------------------------------------------------------------------------------- builders


def test_the_http_route_attaches_the_host_and_the_integration_path_to_the_receiver() -> None:
    route = builders.build_http_route(_app(_spec(parentRefs=[PARENT, {"name": "local-gw"}])))
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "yourapp-webhook"
    assert route["metadata"]["labels"]["app.kubernetes.io/component"] == "httproute"
    assert route["metadata"]["ownerReferences"][0]["uid"] == UID
    group = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
    assert route["spec"]["parentRefs"] == [{**group, **PARENT}, {**group, "name": "local-gw"}]
    assert route["spec"]["hostnames"] == ["webhook-yourapp.retrievetl.com"]
    assert route["spec"]["rules"] == [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/integration"}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "yourapp-receiver", "port": 80}
            ],
        }
    ]


def test_a_gateway_routed_application_gets_an_http_route_and_loses_its_ingress() -> None:
    app = _app(_spec(parentRefs=[PARENT]))
    assert _kinds(builders.build_children(app)) == [
        "ConfigMap",
        "Deployment",
        "Service",
        "Deployment",
        "HTTPRoute",
    ]
    assert builders.absent_children(app) == [("networking.k8s.io/v1", "Ingress", "yourapp-webhook")]


def test_an_ingress_routed_app_loses_its_http_route_only_when_the_operator_manages_them() -> None:
    with_support = _app(_spec())
    assert _kinds(builders.build_children(with_support))[-1] == "Ingress"
    assert builders.absent_children(with_support) == [
        ("gateway.networking.k8s.io/v1", "HTTPRoute", "yourapp-webhook")
    ]
    # Without the RBAC for HTTPRoutes the operator does not even look for one.
    assert builders.absent_children(_app(_spec(), GATEWAY_OFF)) == []


def test_disabling_the_webhook_removes_either_route_and_the_receiver() -> None:
    gone = builders.absent_children(_app(_spec({"enabled": False}, parentRefs=[PARENT])))
    assert [kind for _, kind, _ in gone] == ["Ingress", "HTTPRoute", "Deployment", "Service"]


def test_without_gateway_api_support_a_gateway_routed_application_gets_no_route() -> None:
    app = _app(_spec(parentRefs=[PARENT]), GATEWAY_OFF)
    assert "HTTPRoute" not in _kinds(builders.build_children(app))
    assert "Ingress" not in _kinds(builders.build_children(app))


# ------------------------------------------------------------------------------- conditions


def _route(*parents: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    route = builders.build_http_route(_app(_spec(parentRefs=[PARENT])))
    route["metadata"]["generation"] = generation
    route["status"] = {"parents": list(parents)}
    return route


def _report(
    accepted: tuple[str, str, str],
    resolved: tuple[str, str, str] | None = ("True", "ResolvedRefs", "ok"),
    generation: int = 2,
    parent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    def condition(kind: str, verdict: tuple[str, str, str]) -> dict[str, Any]:
        status, reason, message = verdict
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        }

    conditions = [condition("Accepted", accepted)]
    if resolved is not None:
        conditions.append(condition("ResolvedRefs", resolved))
    return {
        # As a controller writes it: the API's defaults spelled out.
        "parentRef": parent or {"group": "gateway.networking.k8s.io", "kind": "Gateway", **PARENT},
        "controllerName": "traefik.io/gateway-controller",
        "conditions": conditions,
    }


def test_a_route_no_gateway_reported_on_is_pending() -> None:
    problem = route_problem(_route())
    assert problem is not None
    assert (problem.status, problem.reason) == (False, "RoutePending")
    assert "Gateway infra/shared-gw listener web" in problem.message


def test_an_accepted_and_resolved_route_is_no_problem() -> None:
    assert route_problem(_route(_report(("True", "Accepted", "ok")))) is None


def test_a_refusal_names_the_gateway_and_its_reason() -> None:
    report = _report(("False", "NotAllowedByListeners", "namespace shop is not allowed"), None)
    problem = route_problem(_route(report))
    assert problem is not None
    assert problem.reason == "RouteNotAccepted"
    assert problem.message == (
        "HTTPRoute yourapp-webhook is not accepted: Gateway infra/shared-gw listener web refused "
        "it (NotAllowedByListeners: namespace shop is not allowed)"
    )


def test_an_unresolved_backend_is_reported() -> None:
    report = _report(("True", "Accepted", "ok"), ("False", "BackendNotFound", "no Service"))
    problem = route_problem(_route(report))
    assert problem is not None
    assert problem.reason == "RouteRefsNotResolved"
    assert "BackendNotFound: no Service" in problem.message


def test_a_report_on_an_older_generation_is_still_pending() -> None:
    problem = route_problem(_route(_report(("False", "NotAllowedByListeners", "x"), generation=1)))
    assert problem is not None
    assert problem.reason == "RoutePending"


def test_a_report_on_another_parent_does_not_count() -> None:
    other = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "other",
        "namespace": "infra",
    }
    problem = route_problem(_route(_report(("True", "Accepted", "ok"), parent=other)))
    assert problem is not None
    assert problem.reason == "RoutePending"


def test_a_refusal_wins_over_an_acceptance_by_another_gateway() -> None:
    route = _route(_report(("True", "Accepted", "ok")))
    second = {"name": "local-gw"}
    route["spec"]["parentRefs"].append(
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", **second}
    )
    refused = _report(
        ("False", "NoMatchingListenerHostname", "no listener for the host"),
        parent={
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": "shop",
            **second,
        },
    )
    route["status"]["parents"].append(refused)
    problem = route_problem(route)
    assert problem is not None
    assert problem.reason == "RouteNotAccepted"
    assert "Gateway shop/local-gw refused it (NoMatchingListenerHostname" in problem.message


def _record(spec: dict[str, Any]) -> ObjectRecord:
    return ObjectRecord("shop", "yourapp", UID, 3, "2026-01-01T00:00:00Z", copy.deepcopy(spec))


def test_the_ready_condition_names_the_gateway_or_what_keeps_the_route_from_working() -> None:
    spec = _spec(parentRefs=[PARENT])
    plan = plan_application(_record(spec), [], claims={}, facts=Facts(), runtime=GATEWAY_ON)
    assert plan.condition.reason == "Reconciled"
    assert plan.condition.message == (
        "serving https://webhook-yourapp.retrievetl.com through Gateway infra/shared-gw; "
        "0 integration(s)"
    )
    pending = with_route_problem(plan, route_problem(_route()))
    assert pending.condition.reason == "RoutePending"
    assert pending.condition.message.endswith("; 0 integration(s)")
    assert with_route_problem(plan, None) is plan

    off = plan_application(_record(spec), [], claims={}, facts=Facts(), runtime=GATEWAY_OFF)
    assert (off.condition.status, off.condition.reason) == (False, "GatewayAPIDisabled")
    assert "gatewayApi.enabled=true" in off.condition.message
    assert off.deployed is not None  # the rest of the application is still deployed


# ------------------------------------------------------------------------------- settings, RBAC


def test_gateway_api_support_is_off_unless_the_environment_turns_it_on() -> None:
    assert not OperatorOptions.from_env({}).runtime.gateway_api
    assert OperatorOptions.from_env({"RETRIEVE_GATEWAY_API": "true"}).runtime.gateway_api


def test_the_chart_rules_grant_http_routes_apart_from_the_operators_base_rules() -> None:
    document = rules_document()["operator"]
    assert all("gateway.networking.k8s.io" not in r["apiGroups"] for r in document["rules"])
    assert document["gatewayApiRules"] == [
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ]
