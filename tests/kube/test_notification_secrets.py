"""A notification whose `headersFrom` Secret is missing is reported on the RetrieveApplication
(the `NotificationsReady` condition and a Warning Event), by the operator on a real API server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.kube_operator import (  # the fixtures are in tests/kube/conftest.py
    Cluster,
    application,
    eventually,
    integration,
    unique_id,
)

pytestmark = pytest.mark.kube

NOTIFICATION = {
    "name": "ops",
    "url": "https://hooks.example/T000/B000",
    "format": "slack",
    "events": ["deadLetter"],
    "headersFrom": [
        {
            "name": "Authorization",
            "prefix": "Bearer ",
            "secretKeyRef": {"name": "chat", "key": "token"},
        }
    ],
}


def notifications_condition(world: Cluster, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        app = world.get("retrieveapplication", "yourapp") or {}
        status = app.get("status") or {}
        if status.get("observedGeneration") != (app.get("metadata") or {}).get("generation"):
            return None
        found = [c for c in status.get("conditions") or [] if c["type"] == "NotificationsReady"]
        return found[0] if found and found[0]["reason"] == reason else None

    return eventually(probe, f"NotificationsReady reason {reason}", timeout=60)


def test_a_missing_notification_secret_is_a_condition_and_an_event_until_it_exists(
    world: Cluster,
) -> None:
    world.apply(
        application(notifications=[NOTIFICATION]), integration("orders", integrationId=unique_id())
    )
    missing = notifications_condition(world, "SecretNotFound")
    assert missing["status"] == "False"
    assert "notification ops: Secret chat not found (header Authorization)" in missing["message"]
    # Webhooks are still served: only the notifications cannot be sent.
    assert world.wait_ready("retrieveapplication", "yourapp", "Reconciled")["status"] == "True"

    def warning() -> dict[str, Any] | None:
        events = json.loads(
            world.kubectl(
                "get", "events", "--field-selector", "reason=SecretNotFound", "-o", "json"
            )
        )["items"]
        return next(
            (e for e in events if e["involvedObject"]["kind"] == "RetrieveApplication"), None
        )

    event = eventually(warning, "a SecretNotFound event on the RetrieveApplication", 60)
    assert event["type"] == "Warning"
    assert "Secret chat not found" in event["message"]

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat"}}
    world.apply({**secret, "stringData": {"other": "x"}})
    wrong_key = notifications_condition_message(world, "has no key 'token'")
    assert wrong_key["reason"] == "SecretNotFound"

    world.apply({**secret, "stringData": {"token": "xoxb-s3cr3t"}})
    found = notifications_condition(world, "Reconciled")
    assert found["status"] == "True"
    assert "xoxb-s3cr3t" not in json.dumps(world.get("retrieveapplication", "yourapp"))


def notifications_condition_message(world: Cluster, text: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        app = world.get("retrieveapplication", "yourapp") or {}
        found = [
            c
            for c in (app.get("status") or {}).get("conditions") or []
            if c["type"] == "NotificationsReady" and text in c["message"]
        ]
        return found[0] if found else None

    return eventually(probe, f"NotificationsReady saying {text!r}", timeout=60)
