"""The `NotificationsReady` condition of a RetrieveApplication, from its notifications and the
Secrets that exist (a pure function: no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from retrieve_core.models import NotificationSpec
from retrieve_operator.notifyevents import notification_secret_names, notifications_condition

pytestmark = pytest.mark.unit


def notification(name: str, *refs: tuple[str, str]) -> NotificationSpec:
    spec: dict[str, Any] = {
        "name": name,
        "url": "https://hooks.example/T0/B0",
        "events": ["deadLetter"],
        "headersFrom": [
            {"name": f"X-H{n}", "secretKeyRef": {"name": secret, "key": key}}
            for n, (secret, key) in enumerate(refs)
        ],
    }
    return NotificationSpec.model_validate(spec)


def test_an_application_without_notifications_has_no_such_condition() -> None:
    assert notifications_condition([], {}) is None


def test_a_missing_secret_or_key_names_the_notification_and_header() -> None:
    chosen = [notification("ops", ("chat", "token")), notification("pager", ("pd", "key"))]
    assert notification_secret_names(chosen) == {"chat", "pd"}

    condition = notifications_condition(chosen, {"chat": None, "pd": frozenset({"other"})})

    assert condition is not None
    assert (condition.type, condition.status, condition.reason) == (
        "NotificationsReady",
        False,
        "SecretNotFound",
    )
    assert "notification ops: Secret chat not found (header X-H0)" in condition.message
    assert "notification pager: Secret pd has no key 'key' (header X-H0)" in condition.message


def test_notifications_whose_secrets_exist_are_ready() -> None:
    chosen = [notification("ops", ("chat", "token")), notification("plain")]

    condition = notifications_condition(chosen, {"chat": frozenset({"token"})})

    assert condition is not None
    assert (condition.status, condition.reason) == (True, "Reconciled")
    assert (
        condition.message == "2 notification(s); the Secrets their headers come from exist (chat)"
    )
