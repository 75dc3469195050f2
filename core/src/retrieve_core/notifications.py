"""Error notifications (DESIGN.md, "Notifications"): events noted in Redis, aggregated there.

Whoever sees an event (a worker: `deadLetter`, `rewriteError`; `retrieve poll`: `pollFailed`;
a receiver: `rejectedBurst`) notes it with `note_event`, one script call per notification that
wants it. The gate `<notification>:<integration id>:<event>` counts the events not yet told and
keeps the latest one's fields; the first event after a quiet interval makes the gate due at once,
the next ones within `minIntervalSeconds` of the last message make it due when that interval
ends. Workers claim due gates atomically (`claim_due`): one message per gate, whichever replica
claims it, with `count` the events it stands for. Sending (worker side, best-effort) never
blocks job processing; each attempt is kept in a capped stream (`record_attempt`) that
`retrieve logs --notifications` and the web console show.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel
from pydantic_core import to_json

from .config import ApplicationConfig
from .keys import COUNTER_TTL_SECONDS, COUNTER_UNAUTHORIZED, AppKeys, counter_bucket
from .models import NotificationEvent, NotificationSpec
from .redisclient import RedisClient
from .text import utf8_text

ERROR_CHARS: Final = 1000
ATTEMPTS_KEPT: Final = 1000
GATE_GRACE_SECONDS: Final = 3600
"""A gate outlives its interval by this much, so `last_sent` is known when the next event comes."""

EVENT_TITLES: Final[Mapping[NotificationEvent, str]] = {
    NotificationEvent.DEAD_LETTER: "job dead-lettered",
    NotificationEvent.REWRITE_ERROR: "rewrite function error",
    NotificationEvent.POLL_FAILED: "scheduled poll failed",
    NotificationEvent.REJECTED_BURST: "burst of rejected requests (401/403)",
}

# KEYS[1] the gate, KEYS[2] the due set; ARGV: now, interval, gate member, TTL, then the
# latest event's fields (name, value, ...).
_NOTE = """
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if count == 1 then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_sent') or '')
  local due = tonumber(ARGV[1])
  if last and last + tonumber(ARGV[2]) > due then
    due = last + tonumber(ARGV[2])
  end
  redis.call('ZADD', KEYS[2], due, ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return count
"""

# KEYS[1] the due set; ARGV: now, limit, gate key prefix. The gates share the set's hash tag.
_CLAIM = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(members) do
  redis.call('ZREM', KEYS[1], member)
  local gate = ARGV[3] .. member
  local count = tonumber(redis.call('HGET', gate, 'count') or '0')
  if count > 0 then
    out[#out + 1] = member
    out[#out + 1] = redis.call('HGETALL', gate)
    redis.call('HSET', gate, 'count', 0, 'last_sent', ARGV[1])
  end
end
return out
"""


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Notice:
    """One message: the latest event of a gate and how many events it stands for."""

    notification: str
    event: NotificationEvent
    namespace: str
    application: str
    integration: str
    integration_id: str
    job_id: str
    error: str
    at: float
    count: int

    def json_body(self) -> dict[str, Any]:
        """The `json` format (DESIGN.md, "Notifications")."""
        return {
            "event": self.event.value,
            "namespace": self.namespace,
            "application": self.application,
            "integration": self.integration,
            "integrationId": self.integration_id,
            "jobId": self.job_id,
            "error": self.error,
            "at": iso_time(self.at),
            "count": self.count,
        }

    def slack_text(self) -> str:
        """Slack's message text, every value escaped as Slack asks (`&`, `<`, `>`): an error
        built from what a sender or a destination wrote (`<!channel>`, `<https://x|click>`)
        reaches the channel as the characters it is, not as a mention or a link."""
        title = EVENT_TITLES.get(self.event, self.event.value)
        head = (
            f"Retrieve {_slack(self.namespace)}/{_slack(self.application)}: {title} on "
            f"integration {_slack(self.integration or self.integration_id)} "
            f"({_slack(self.integration_id)})"
        )
        if self.count > 1:
            head += f", {self.count} times since the last message"
        lines = [head]
        if self.job_id:
            lines.append(f"job {_slack(self.job_id)}")
        if self.error:
            lines.append(f"error: {_slack(self.error)}")
        lines.append(f"at {iso_time(self.at)}")
        return "\n".join(lines)

    def render(self, spec: NotificationSpec) -> bytes:
        if spec.format == "slack":
            return to_json({"text": self.slack_text()})
        return to_json(self.json_body())


def _slack(text: str) -> str:
    """Text as Slack's message formatting reads it literally (its control characters are
    exactly these three: https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def wanting(app: ApplicationConfig, event: NotificationEvent) -> list[NotificationSpec]:
    """The application's notifications subscribed to `event`."""
    return [n for n in app.spec.notifications if event in n.events]


def gate_member(notification: str, integration_id: str, event: NotificationEvent) -> str:
    return f"{notification}:{integration_id}:{event.value}"


async def note_event(
    redis: RedisClient,
    app: ApplicationConfig,
    event: NotificationEvent,
    *,
    integration_id: str,
    integration: str = "",
    job_id: str = "",
    error: str = "",
    now: float | None = None,
    targets: list[NotificationSpec] | None = None,
) -> int:
    """Notes one event for every notification of `app` that wants it (or for `targets`);
    returns how many were noted. Nothing is sent here."""
    chosen = wanting(app, event) if targets is None else targets
    if not chosen:
        return 0
    at = time.time() if now is None else now
    keys = app.keys
    fields = [
        "integration", integration, "job_id", job_id,
        "error", utf8_text(error[:ERROR_CHARS])[:ERROR_CHARS],
        "at", repr(at),
    ]  # fmt: skip
    for spec in chosen:
        member = gate_member(spec.name, integration_id, event)
        await redis.register_script(_NOTE)(
            keys=[keys.notify_gate_prefix + member, keys.notify_due],
            args=[
                repr(at),
                spec.min_interval_seconds,
                member,
                spec.min_interval_seconds + GATE_GRACE_SECONDS,
                *fields,
            ],
        )
    return len(chosen)


async def count_unauthorized(
    redis: RedisClient, keys: AppKeys, integration_id: str, now: float | None = None
) -> int:
    """Counts one 401/403 answer in the integration's per-minute counters; the minute's total."""
    bucket = keys.counters(integration_id, counter_bucket(time.time() if now is None else now))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(bucket, COUNTER_UNAUTHORIZED, 1)
        pipe.expire(bucket, COUNTER_TTL_SECONDS)
        count, _ = await pipe.execute()
    return int(count)


async def note_unauthorized(
    redis: RedisClient,
    app: ApplicationConfig,
    *,
    integration_id: str,
    integration: str,
    error: str,
    now: float | None = None,
) -> int:
    """A 401/403 answer for a configured integration: counted, and a `rejectedBurst` noted for
    each notification whose threshold this answer just exceeded (once a minute)."""
    targets = wanting(app, NotificationEvent.REJECTED_BURST)
    if not targets:
        return 0
    count = await count_unauthorized(redis, app.keys, integration_id, now)
    crossed = [n for n in targets if count == n.rejected_burst_threshold + 1]
    if not crossed:
        return 0
    return await note_event(
        redis,
        app,
        NotificationEvent.REJECTED_BURST,
        integration_id=integration_id,
        integration=integration,
        error=f"more than {crossed[0].rejected_burst_threshold} requests answered 401/403 "
        f"within a minute; the last: {error}",
        now=now,
        targets=crossed,
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    notification: str
    notice: Notice


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def claim_due(
    redis: RedisClient, app: ApplicationConfig, now: float | None = None, limit: int = 100
) -> list[Claimed]:
    """Takes the gates whose message is due (atomically: one claimer per message)."""
    keys = app.keys
    at = time.time() if now is None else now
    reply = await redis.register_script(_CLAIM)(
        keys=[keys.notify_due], args=[repr(at), limit, keys.notify_gate_prefix]
    )
    claimed: list[Claimed] = []
    items: list[Any] = list(reply or [])
    for member_raw, raw_fields in zip(items[::2], items[1::2], strict=True):
        member = _text(member_raw)
        notification, integration_id, event_name = member.rsplit(":", 2)
        flat = [_text(v) for v in raw_fields]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            event = NotificationEvent(event_name)
        except ValueError:
            continue
        notice = Notice(
            notification=notification,
            event=event,
            namespace=app.namespace,
            application=app.name,
            integration=fields.get("integration", ""),
            integration_id=integration_id,
            job_id=fields.get("job_id", ""),
            error=fields.get("error", ""),
            at=float(fields.get("at") or at),
            count=int(fields.get("count") or 0),
        )
        claimed.append(Claimed(notification, notice))
    return claimed


class NotificationAttempt(BaseModel):
    """One message sent (or not) to a notification target, as the logs show it."""

    ts: float
    notification: str
    event: str
    integration_id: str
    integration: str = ""
    job_id: str = ""
    count: int = 1
    result: str
    """`sent` or `failed`."""
    http_status: int | None = None
    error: str = ""
    attempts: int = 1


async def record_attempt(redis: RedisClient, keys: AppKeys, attempt: NotificationAttempt) -> None:
    await redis.xadd(
        keys.notify_log,
        {"attempt": attempt.model_dump_json()},
        maxlen=ATTEMPTS_KEPT,
        approximate=True,
    )


async def read_attempts(
    redis: RedisClient,
    keys: AppKeys,
    *,
    limit: int = 50,
    integration_id: str | None = None,
    result: str | None = None,
) -> list[NotificationAttempt]:
    """Newest first."""
    rows: list[Any] = list(
        await redis.xrevrange(keys.notify_log, "+", "-", count=ATTEMPTS_KEPT) or []
    )
    found: list[NotificationAttempt] = []
    for _, fields in rows:
        raw = fields.get(b"attempt") or fields.get("attempt")
        if raw is None:
            continue
        attempt = NotificationAttempt.model_validate_json(raw)
        if integration_id and attempt.integration_id != integration_id:
            continue
        if result and attempt.result != result:
            continue
        found.append(attempt)
        if len(found) >= limit:
            break
    return found
