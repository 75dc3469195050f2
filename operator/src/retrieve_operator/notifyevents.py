"""Error notifications in the RetrieveApplication's status and Events.

Workers record every notification attempt in the application's notification log (a capped Redis
stream) and never write to the API server; the status poll reads the attempts recorded since its
last look and posts one `NotificationFailed` Event per poll for the failed ones.

A notification whose `headersFrom` names a Secret (or a key) that does not exist could never be
sent: each reconcile pass checks them and says so in the application's `NotificationsReady`
condition (reason `SecretNotFound`), with a Warning Event when it turns so. The condition is
there only while the application has notifications.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import ValidationError

from retrieve_core.constants import REASON_RECONCILED, REASON_SECRET_NOT_FOUND
from retrieve_core.keys import AppKeys
from retrieve_core.models import NotificationSpec, RetrieveApplicationSpec
from retrieve_core.notifications import NotificationAttempt
from retrieve_core.redisclient import RedisClient

from .conditions import Condition
from .plan import AppKey

REASON_NOTIFICATION_FAILED: Final = "NotificationFailed"
CONDITION_NOTIFICATIONS_READY: Final = "NotificationsReady"
READ_AT_MOST: Final = 200


def notifications_of(spec: Mapping[str, Any]) -> list[NotificationSpec]:
    """An application's notifications (none when its spec is invalid: Ready says why)."""
    try:
        return list(RetrieveApplicationSpec.model_validate(spec).notifications)
    except ValidationError:
        return []


def notification_secret_names(notifications: Iterable[NotificationSpec]) -> set[str]:
    return {h.secret_key_ref.name for n in notifications for h in n.headers_from}


def notifications_condition(
    notifications: Iterable[NotificationSpec],
    secret_keys: Mapping[str, frozenset[str] | None],
) -> Condition | None:
    """`NotificationsReady`: False (`SecretNotFound`) while a `headersFrom` Secret or key is
    missing; None for an application without notifications."""
    chosen = list(notifications)
    if not chosen:
        return None
    problems: list[str] = []
    for notification in chosen:
        for header in notification.headers_from:
            ref = header.secret_key_ref
            keys = secret_keys.get(ref.name)
            if keys is None:
                why = f"Secret {ref.name} not found"
            elif ref.key not in keys:
                why = f"Secret {ref.name} has no key {ref.key!r}"
            else:
                continue
            problems.append(f"notification {notification.name}: {why} (header {header.name})")
    if problems:
        message = "; ".join(problems) + ": these notifications cannot be sent"
        return Condition(CONDITION_NOTIFICATIONS_READY, False, REASON_SECRET_NOT_FOUND, message)
    named = notification_secret_names(chosen)
    message = f"{len(chosen)} notification(s)"
    if named:
        message += f"; the Secrets their headers come from exist ({', '.join(sorted(named))})"
    return Condition(CONDITION_NOTIFICATIONS_READY, True, REASON_RECONCILED, message)


def _stream_id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class NotificationFailures:
    """Remembers, per application, the newest notification attempt already looked at."""

    def __init__(self) -> None:
        self._seen: dict[AppKey, tuple[int, int]] = {}

    async def new_failures(
        self, redis: RedisClient, app: AppKey, keys: AppKeys
    ) -> list[NotificationAttempt]:
        """Failed attempts recorded since the last call (none on the first call for an
        application that already had attempts: history from before a restart is not news)."""
        rows: list[Any] = list(
            await redis.xrevrange(keys.notify_log, "+", "-", count=READ_AT_MOST) or []
        )
        last = self._seen.get(app)
        self._seen[app] = _stream_id(rows[0][0]) if rows else (last or (0, 0))
        if last is None and rows:
            return []
        floor = last or (0, 0)
        failed: list[NotificationAttempt] = []
        for entry_id, fields in rows:
            if _stream_id(entry_id) <= floor:
                break
            raw = fields.get(b"attempt") or fields.get("attempt")
            if raw is None:
                continue
            attempt = NotificationAttempt.model_validate_json(raw)
            if attempt.result != "sent":
                failed.append(attempt)
        return failed

    def forget(self, app: AppKey) -> None:
        self._seen.pop(app, None)


def failure_message(failed: list[NotificationAttempt]) -> str:
    latest = failed[0]
    head = (
        f"{len(failed)} error notification(s) could not be sent"
        if len(failed) > 1
        else ("an error notification could not be sent")
    )
    return (
        f"{head}; latest: {latest.notification} ({latest.event}, integration "
        f"{latest.integration_id}) after {latest.attempts} attempt(s): {latest.error}"
    )
