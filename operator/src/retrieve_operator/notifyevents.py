"""Failed error notifications become Warning Events on their RetrieveApplication.

Workers record every notification attempt in the application's notification log (a capped Redis
stream) and never write to the API server; the status poll reads the attempts recorded since its
last look and posts one `NotificationFailed` Event per poll for the failed ones.
"""

from __future__ import annotations

from typing import Any, Final

from retrieve_core.keys import AppKeys
from retrieve_core.notifications import NotificationAttempt
from retrieve_core.redisclient import RedisClient

from .plan import AppKey

REASON_NOTIFICATION_FAILED: Final = "NotificationFailed"
READ_AT_MOST: Final = 200


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
