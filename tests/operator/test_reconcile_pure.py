"""The pure parts of reconciling: plans, duplicate ids, conditions, status patches, drift."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec, derive_integration_id
from retrieve_operator import builders
from retrieve_operator.builders import RuntimeDefaults
from retrieve_operator.conditions import Condition, merge_condition
from retrieve_operator.plan import (
    Facts,
    ObjectRecord,
    application_status,
    covers,
    duplicate_of,
    id_owner,
    index_integration_by_application,
    index_integration_by_id,
    integration_id_of,
    integration_status,
    plan_application,
    plan_missing_application,
    record_from_body,
    status_patch_needed,
)

pytestmark = pytest.mark.unit

RUNTIME = RuntimeDefaults(image="retrieve:test", redis_url="redis://redis:6379/0")
APP_SPEC: dict[str, Any] = {
    "webhook": {"enabled": True, "domain": "retrievetl.com"},
    "allowedList": ["203.0.113.0"],
}
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def _app(spec: dict[str, Any] | None = None, **kw: Any) -> ObjectRecord:
    return ObjectRecord(
        namespace="shop",
        name="yourapp",
        uid="app-uid",
        generation=kw.get("generation", 3),
        created=T0,
        spec=spec if spec is not None else APP_SPEC,
        status=kw.get("status", {}),
    )


def _integration(
    name: str,
    *,
    namespace: str = "shop",
    created: str = T0,
    app: str = "yourapp",
    **spec: Any,
) -> ObjectRecord:
    return ObjectRecord(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        generation=1,
        created=created,
        spec={"application": app, **spec},
    )


def _claims(records: Iterable[ObjectRecord]) -> dict[str, list[ObjectRecord]]:
    claims: dict[str, list[ObjectRecord]] = {}
    for record in records:
        claims.setdefault(integration_id_of(record), []).append(record)
    return claims


def _plan(
    integrations: list[ObjectRecord],
    *,
    app: ObjectRecord | None = None,
    others: Iterable[ObjectRecord] = (),
    facts: Facts | None = None,
) -> Any:
    return plan_application(
        app or _app(),
        integrations,
        claims=_claims([*integrations, *others]),
        facts=facts or Facts(),
        runtime=RUNTIME,
    )


# ------------------------------------------------------------------------------- ids


def test_integration_id_is_the_given_one_or_derived_from_namespace_and_name() -> None:
    assert integration_id_of(_integration("a", integrationId="given-1")) == "given-1"
    assert integration_id_of(_integration("a")) == derive_integration_id("shop", "a")


def test_the_older_integration_keeps_a_duplicate_id() -> None:
    older = _integration("older", created="2026-01-01T00:00:00Z", integrationId="same")
    newer = _integration(
        "newer", namespace="other", created="2026-01-02T00:00:00Z", integrationId="same"
    )
    claims = _claims([newer, older])
    assert id_owner(claims["same"]) == older
    assert duplicate_of(newer, claims) == older
    assert duplicate_of(older, claims) is None


def test_same_second_duplicates_are_broken_by_namespace_then_name() -> None:
    a = _integration("b-name", namespace="a-ns", integrationId="same")
    b = _integration("a-name", namespace="b-ns", integrationId="same")
    assert id_owner([b, a]) == a


def test_an_integration_being_deleted_gives_up_its_id() -> None:
    leaving = ObjectRecord("shop", "old", "uid-old", 1, T0, {"integrationId": "x"}, deleting=True)
    staying = _integration("new", created=T1, integrationId="x")
    assert duplicate_of(staying, _claims([leaving, staying])) is None


# ------------------------------------------------------------------------------- plans


def test_valid_integrations_are_ready_with_their_urls_and_in_the_config() -> None:
    plan = _plan([_integration("orders", integrationId="507f1f77bcf86cd799439011")])
    (integration,) = plan.integrations
    url = "https://webhook-yourapp.retrievetl.com/integration/507f1f77bcf86cd799439011"
    assert integration.condition == Condition("Ready", True, "Reconciled", f"receiving at {url}")
    assert integration.webhook_url == url
    assert integration.xml_webhook_url == url + "/xml"
    assert plan.deployed is not None
    assert [i.id for i in plan.deployed.config.integrations] == ["507f1f77bcf86cd799439011"]
    assert plan.condition.status is True
    assert plan.condition.reason == "Reconciled"
    assert plan.webhook_host == "webhook-yourapp.retrievetl.com"


def test_the_newer_duplicate_is_not_ready_and_left_out_of_the_config() -> None:
    elsewhere = _integration(
        "first", namespace="other", app="otherapp", created=T0, integrationId="dup"
    )
    mine = _integration("second", created=T1, integrationId="dup")
    plan = _plan([mine], others=[elsewhere])
    (integration,) = plan.integrations
    assert integration.condition.status is False
    assert integration.condition.reason == "DuplicateIntegrationId"
    assert "other/first" in integration.condition.message
    assert integration.webhook_url is None
    assert plan.deployed is not None
    assert plan.deployed.config.integrations == ()
    assert "1 not ready (second)" in plan.condition.message


def test_a_missing_secret_is_reported_and_the_integration_still_fails_closed() -> None:
    record = _integration(
        "signed", verify={"preset": "shopify", "secretRefs": [{"name": "hmac", "key": "secret"}]}
    )
    plan = _plan([record], facts=Facts(secret_keys={"hmac": None}))
    (integration,) = plan.integrations
    assert integration.condition.reason == "SecretNotFound"
    assert "Secret hmac not found" in integration.condition.message
    assert integration.entry is not None  # the receiver answers 401 until the Secret exists

    wrong_key = _plan([record], facts=Facts(secret_keys={"hmac": frozenset({"other"})}))
    assert "has no key 'secret'" in wrong_key.integrations[0].condition.message

    present = _plan([record], facts=Facts(secret_keys={"hmac": frozenset({"secret"})}))
    assert present.integrations[0].condition.reason == "Reconciled"


def test_a_disabled_integration_is_served_as_disabled() -> None:
    plan = _plan([_integration("off", enabled=False)])
    (integration,) = plan.integrations
    assert integration.condition.status is False
    assert integration.condition.reason == "IntegrationDisabled"
    assert integration.entry is not None
    assert integration.entry.spec.enabled is False
    assert integration.webhook_url is not None


def test_an_invalid_integration_spec_is_reported_and_left_out() -> None:
    plan = _plan([_integration("bad", destinations=[{"name": "Not A Label", "http": {}}])])
    (integration,) = plan.integrations
    assert integration.condition.reason == "InvalidSpec"
    assert "spec.destinations" in integration.condition.message
    assert plan.deployed is not None
    assert plan.deployed.config.integrations == ()


def test_a_failing_rewrite_test_keeps_the_last_version_that_passed() -> None:
    record = _integration("orders", integrationId="orders-1", rewrite={"javascript": "return 2;"})
    last = IntegrationConfig(
        id="orders-1",
        name="orders",
        spec=IntegrationSpec.model_validate(
            {"application": "yourapp", "rewrite": {"javascript": "return 1;"}}
        ),
    )
    current = ApplicationConfig(
        namespace="shop",
        name="yourapp",
        spec=RetrieveApplicationSpec.model_validate(APP_SPEC),
        integrations=(last,),
    )
    facts = Facts(rewrite_failures={record.uid: "test 'x': data differs"}, current_config=current)
    plan = _plan([record], facts=facts)
    (integration,) = plan.integrations
    assert integration.condition.status is False
    assert integration.condition.reason == "RewriteTestFailed"
    assert "data differs" in integration.condition.message
    assert integration.entry == last
    assert plan.deployed is not None
    assert plan.deployed.config.integrations == (last,)


def test_a_failing_rewrite_test_with_no_passing_version_is_not_served() -> None:
    record = _integration("orders", rewrite={"javascript": "return 2;"})
    plan = _plan([record], facts=Facts(rewrite_failures={record.uid: "boom"}))
    assert plan.integrations[0].entry is None
    assert plan.integrations[0].webhook_url is None
    assert plan.deployed is not None
    assert plan.deployed.config.integrations == ()


def test_disabled_webhook_keeps_integrations_in_the_config_without_urls() -> None:
    app = _app({**APP_SPEC, "webhook": {"enabled": False, "domain": "retrievetl.com"}})
    plan = _plan([_integration("orders")], app=app)
    assert plan.condition == Condition(
        "Ready",
        True,
        "WebhookDisabled",
        "webhook disabled: no receiver or route; 1 integration(s), 1 not ready (orders)",
    )
    (integration,) = plan.integrations
    assert integration.condition.reason == "WebhookDisabled"
    assert integration.webhook_url is None
    assert plan.webhook_host is None
    assert plan.deployed is not None
    assert len(plan.deployed.config.integrations) == 1


def test_an_invalid_application_is_not_deployed_and_its_integrations_say_why() -> None:
    app = _app({"webhook": {"domain": "Not A Domain"}})
    plan = _plan([_integration("orders")], app=app)
    assert plan.deployed is None
    assert plan.condition.status is False
    assert plan.condition.reason == "InvalidSpec"
    assert "spec.webhook.domain" in plan.condition.message
    assert plan.integrations[0].condition.reason == "ApplicationNotReady"


def test_an_application_with_no_redis_anywhere_is_invalid() -> None:
    app = _app({**APP_SPEC, "redis": {}})
    plan = plan_application(
        app, [], claims={}, facts=Facts(), runtime=RuntimeDefaults(image="retrieve:test")
    )
    assert plan.deployed is None
    assert plan.condition.reason == "InvalidSpec"
    assert "spec.redis" in plan.condition.message


def test_integrations_of_a_missing_application_say_so() -> None:
    (plan,) = plan_missing_application([_integration("orphan", app="ghost")], "shop", "ghost")
    assert plan.condition == Condition(
        "Ready", False, "ApplicationNotFound", "RetrieveApplication shop/ghost not found"
    )
    status = integration_status(plan, T0)
    assert status["webhookURL"] is None
    assert status["integrationId"] == derive_integration_id("shop", "orphan")


def test_integrations_are_planned_in_name_order_and_deleting_ones_are_skipped() -> None:
    gone = ObjectRecord(
        "shop", "gone", "uid-gone", 1, T0, {"application": "yourapp"}, deleting=True
    )
    plan = _plan([_integration("b"), gone, _integration("a")])
    assert [p.record.name for p in plan.integrations] == ["a", "b"]


# ------------------------------------------------------------------------------- conditions


def test_a_new_condition_gets_the_transition_time_now() -> None:
    (condition,) = merge_condition(
        None, Condition("Ready", True, "Reconciled", "ok"), generation=2, now=T0
    )
    assert condition == {
        "type": "Ready",
        "status": "True",
        "reason": "Reconciled",
        "message": "ok",
        "lastTransitionTime": T0,
        "observedGeneration": 2,
    }


def test_transition_time_is_kept_when_the_status_does_not_change() -> None:
    previous = merge_condition(
        None, Condition("Ready", False, "SecretNotFound", "a"), generation=1, now=T0
    )
    (same,) = merge_condition(
        previous, Condition("Ready", False, "DuplicateIntegrationId", "b"), generation=2, now=T1
    )
    assert same["lastTransitionTime"] == T0
    assert same["reason"] == "DuplicateIntegrationId"
    assert same["observedGeneration"] == 2
    (flipped,) = merge_condition(
        previous, Condition("Ready", True, "Reconciled", "c"), generation=2, now=T1
    )
    assert flipped["lastTransitionTime"] == T1


def test_other_condition_types_are_kept() -> None:
    previous = [{"type": "Receiving", "status": "True", "reason": "Traffic", "message": ""}]
    merged = merge_condition(
        previous, Condition("Ready", True, "Reconciled", ""), generation=1, now=T0
    )
    assert [c["type"] for c in merged] == ["Ready", "Receiving"]


# ------------------------------------------------------------------------------- status


def test_application_status_reports_generation_host_count_and_ready() -> None:
    plan = _plan([_integration("a"), _integration("b")])
    status = application_status(plan, T0)
    assert status["observedGeneration"] == 3
    assert status["webhookHost"] == "webhook-yourapp.retrievetl.com"
    assert status["integrations"] == 2
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][0]["observedGeneration"] == 3


def test_status_is_patched_only_when_it_would_change() -> None:
    plan = _plan([_integration("a")])
    desired = integration_status(plan.integrations[0], T0)
    assert status_patch_needed({}, desired)
    current = {k: v for k, v in desired.items() if v is not None}
    current["receivedLastHour"] = 5  # written by someone else: not ours to compare
    assert not status_patch_needed(current, desired)
    assert status_patch_needed({**current, "xmlWebhookURL": "stale"}, {"xmlWebhookURL": None})
    assert not status_patch_needed({}, {"webhookURL": None})


def test_status_of_an_unchanged_world_is_stable_across_passes() -> None:
    first = integration_status(_plan([_integration("a")]).integrations[0], T0)
    record = _integration("a")
    again = ObjectRecord(**{**record.__dict__, "status": first})
    second = integration_status(_plan([again]).integrations[0], T1)
    assert not status_patch_needed(first, second)


# ------------------------------------------------------------------------------- records


def test_records_copy_what_they_need_from_a_body() -> None:
    body: dict[str, Any] = {
        "metadata": {
            "namespace": "shop",
            "name": "orders",
            "uid": "u1",
            "generation": 4,
            "creationTimestamp": T0,
        },
        "spec": {"application": "yourapp", "integrationId": "x1"},
        "status": {"integrationId": "x1"},
    }
    record = record_from_body(body)
    body["spec"]["application"] = "mutated"
    assert record.app_key == ("shop", "yourapp")
    assert record.generation == 4
    assert not record.deleting
    assert index_integration_by_application(body) == {("shop", "mutated"): record_from_body(body)}
    assert list(index_integration_by_id(body)) == ["x1"]


# ------------------------------------------------------------------------------- drift


def test_server_defaults_and_other_fields_are_not_drift() -> None:
    desired = builders.build_receiver_deployment(
        builders.DeployedApplication(
            config=ApplicationConfig(
                namespace="shop",
                name="yourapp",
                spec=RetrieveApplicationSpec.model_validate(APP_SPEC),
            ),
            uid="app-uid",
            runtime=RUNTIME,
        )
    )
    actual: dict[str, Any] = {
        **desired,
        "metadata": {**desired["metadata"], "resourceVersion": "9", "generation": 1},
        "status": {"replicas": 2},
    }
    actual["spec"] = {**desired["spec"], "progressDeadlineSeconds": 600}
    assert covers(actual, desired)

    scaled = {**actual, "spec": {**actual["spec"], "replicas": 5}}
    assert not covers(scaled, desired)


def test_named_lists_match_by_name_and_other_lists_are_atomic() -> None:
    desired = {"env": [{"name": "A", "value": "1"}], "args": ["--x"]}
    assert covers(
        {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}], "args": ["--x"]},
        desired,
    )
    assert not covers({"env": [{"name": "A", "value": "2"}], "args": ["--x"]}, desired)
    assert not covers({"env": [{"name": "A", "value": "1"}], "args": ["--x", "--y"]}, desired)
    assert not covers({"env": [{"name": "A", "value": "1"}]}, desired)
