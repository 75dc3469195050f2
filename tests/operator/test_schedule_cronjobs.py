"""Poll CronJobs and poll status of scheduled Integrations, built with no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.scheduling.state import PollState
from retrieve_operator.builders import DeployedApplication, RuntimeDefaults, build_worker_deployment
from retrieve_operator.schedule_cronjobs import (
    build_poll_cronjob,
    build_poll_cronjobs,
    poll_cronjob_name,
    stale_poll_cronjobs,
)
from retrieve_operator.schedule_status import poll_status_patch

pytestmark = pytest.mark.unit

UID = "0b0e5b8e-1111-4222-8333-944445555666"
RUNTIME = RuntimeDefaults(image="registry.example/retrieve-runtime:1.2.3")
SCHEDULE = {
    "cron": "0 */6 * * *",
    "source": {"http": {"url": "https://shop.example/orders", "items": "orders", "idField": "id"}},
}


def _integration(name: str, *, schedule: bool = True, enabled: bool = True) -> IntegrationConfig:
    spec: dict[str, Any] = {"application": "yourapp", "enabled": enabled}
    if schedule:
        spec["schedule"] = SCHEDULE
    return IntegrationConfig(
        id=f"{name.upper()}1", name=name, spec=IntegrationSpec.model_validate(spec)
    )


def _app(*integrations: IntegrationConfig, worker: dict[str, Any] | None = None) -> Any:
    spec = RetrieveApplicationSpec.model_validate(
        {
            "webhook": {"domain": "retrievetl.com"},
            "redis": {"secretKeyRef": {"name": "redis", "key": "url"}},
            "worker": worker or {},
        }
    )
    config = ApplicationConfig(
        namespace="shop", name="yourapp", spec=spec, integrations=integrations
    )
    return DeployedApplication(config=config, uid=UID, runtime=RUNTIME)


def test_a_schedule_gets_a_forbid_cronjob_running_retrieve_poll_like_the_worker() -> None:
    app = _app(_integration("orders"), worker={"resources": {"limits": {"memory": "256Mi"}}})
    cronjob = build_poll_cronjob(app, app.config.integrations[0])
    worker_pod = build_worker_deployment(app)["spec"]["template"]["spec"]
    worker_container = worker_pod["containers"][0]

    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    meta = cronjob["metadata"]
    assert (meta["name"], meta["namespace"]) == ("orders-poll", "shop")
    assert meta["ownerReferences"][0]["uid"] == UID
    assert meta["ownerReferences"][0]["kind"] == "RetrieveApplication"
    assert meta["labels"]["app.kubernetes.io/component"] == "poll"
    assert meta["labels"]["app.kubernetes.io/instance"] == "yourapp"
    assert meta["labels"]["retrievetl.com/integration-id"] == "ORDERS1"

    spec = cronjob["spec"]
    assert spec["schedule"] == "0 */6 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is False
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["retrieve", "poll"]
    assert container["args"] == ["ORDERS1", "--from-cluster"]
    for same in ("image", "env", "securityContext", "resources", "volumeMounts"):
        assert container[same] == worker_container[same], same
    for same in ("serviceAccountName", "securityContext", "volumes"):
        assert pod[same] == worker_pod[same], same
    assert pod["serviceAccountName"] == "retrieve-worker"
    assert pod["restartPolicy"] == "Never"
    # The Redis URL comes from the Secret, as in the worker: no value in the object.
    env = {e["name"]: e for e in container["env"]}
    assert env["RETRIEVE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}


def test_only_scheduled_integrations_get_cronjobs_and_a_disabled_one_is_suspended() -> None:
    app = _app(
        _integration("orders"),
        _integration("hooks", schedule=False),
        _integration("paused", enabled=False),
    )
    cronjobs = build_poll_cronjobs(app)
    assert [c["metadata"]["name"] for c in cronjobs] == ["orders-poll", "paused-poll"]
    assert [c["spec"]["suspend"] for c in cronjobs] == [False, True]


def test_poll_cronjobs_no_longer_wanted_are_stale() -> None:
    app = _app(_integration("orders"), _integration("hooks", schedule=False))
    existing = ["gone-poll", "hooks-poll", "orders-poll"]
    assert stale_poll_cronjobs(app, existing) == ["gone-poll", "hooks-poll"]


def test_long_integration_names_give_cronjob_names_the_api_server_accepts() -> None:
    name = "a-very-long-integration-name-that-goes-on-and-on-and-on"
    short = poll_cronjob_name(name)
    assert len(short) <= 52
    assert short.endswith("-poll")
    assert short != poll_cronjob_name(name + "x")
    assert poll_cronjob_name("orders") == "orders-poll"


NOW = "2026-01-01T00:10:00Z"


def test_poll_status_shows_the_last_run_and_a_false_poll_failing_condition() -> None:
    state = PollState(since=1767225600.0, last_run_at=1767225600.0, seen=25, new=16)
    patch = poll_status_patch({}, state, scheduled=True, generation=3, now=NOW)
    assert patch is not None
    assert patch["lastPollAt"] == "2026-01-01T00:00:00Z"
    assert (patch["polledItems"], patch["polledNew"], patch["lastPollError"]) == (25, 16, "")
    [condition] = patch["conditions"]
    assert condition["type"] == "PollFailing"
    assert (condition["status"], condition["reason"]) == ("False", "PollSucceeded")
    # Written once: the same state again changes nothing.
    current = {**patch}
    assert poll_status_patch(current, state, scheduled=True, generation=3, now=NOW) is None


def test_a_failed_poll_sets_poll_failing_true_with_the_error_and_keeps_ready() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok"}
    state = PollState(last_run_at=1767225600.0, error="GET https://shop.example/orders: HTTP 503")
    patch = poll_status_patch({"conditions": [ready]}, state, scheduled=True, generation=1, now=NOW)
    assert patch is not None
    assert patch["lastPollError"].endswith("HTTP 503")
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert by_type["Ready"] == ready
    assert by_type["PollFailing"]["status"] == "True"
    assert by_type["PollFailing"]["reason"] == "PollFailed"


def test_removing_the_schedule_removes_the_poll_fields_and_condition() -> None:
    current = {
        "lastPollAt": "2026-01-01T00:00:00Z",
        "polledItems": 3,
        "conditions": [{"type": "PollFailing", "status": "False"}, {"type": "Ready"}],
    }
    patch = poll_status_patch(current, None, scheduled=False, generation=1, now=NOW)
    assert patch == {"lastPollAt": None, "polledItems": None, "conditions": [{"type": "Ready"}]}
    assert poll_status_patch({}, PollState(), scheduled=True, generation=1, now=NOW) is None
