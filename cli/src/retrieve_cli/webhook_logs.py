"""Webhook log records and notification attempts read, filtered and shown, and dead letters
replayed: the one implementation behind `retrieve logs|replay` and `kubectl retrieve logs|replay`.

Both commands list the same two kinds of thing (a `Listing`), filter them with the same `--status`
rules, read them from Redis the same way, print them as the same JSON lines and, for people, as a
rich table (`retrieve logs`) or as one line each, oldest first, that `-f` extends
(`kubectl retrieve logs`), and report a usage mistake (exit 2) or an unreachable Redis (exit 1)
in one line. Every stored value reaches the terminal through `terminal.py`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

from redis.exceptions import RedisError
from rich.table import Table

from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogRecord, LogStatus, LogStore
from retrieve_core.notifications import NotificationAttempt, read_attempts
from retrieve_core.redisclient import CLI_TIMEOUTS, RedisClient, connect_redis

from .selection import UsageError
from .terminal import cell, json_line, safe_text

T = TypeVar("T", LogRecord, NotificationAttempt)

Source = tuple[AppKeys, str | None]
"""An application's keys and the integration id to filter by (None: all of them)."""

FOLLOW_INTERVAL = 2.0
STATUS_STYLE = {
    LogStatus.SUCCEEDED: "green",
    LogStatus.QUEUED: "cyan",
    LogStatus.RETRYING: "yellow",
    LogStatus.DUPLICATE: "blue",
    LogStatus.IGNORED: "blue",
    LogStatus.REJECTED: "red",
    LogStatus.FAILED: "red",
    LogStatus.DEAD_LETTER: "magenta",
}
VALID_STATUSES = frozenset(s.value for s in LogStatus)


# ---------------------------------------------------------------- rendering


def utc_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render_table(records: list[LogRecord], *, payload: bool) -> Table:
    table = Table(show_lines=payload)
    for column in (
        "time (UTC)",
        "source IP",
        "integration",
        "HTTP",
        "status",
        "attempts",
        "message",
    ):
        table.add_column(column, overflow="fold")
    if payload:
        table.add_column("payload", overflow="fold")
    # Every value is a `cell`: stored text is never markup, and control characters show escaped.
    for r in records:
        message = r.error or r.message
        row = [
            cell(utc_time(r.ts)),
            cell(r.source_ip),
            cell(r.integration_id or "-"),
            cell(str(r.http_status)),
            cell(r.status.value, STATUS_STYLE.get(r.status, "white")),
            cell(str(r.attempts)),
            cell(message),
        ]
        if payload:
            row.append(cell(r.payload[:500]))
        table.add_row(*row)
    return table


def render_notifications(attempts: list[NotificationAttempt]) -> Table:
    table = Table()
    for column in (
        "time (UTC)", "notification", "event", "integration", "count", "result", "HTTP",
        "attempts", "error",
    ):  # fmt: skip
        table.add_column(column, overflow="fold")
    for a in attempts:
        table.add_row(
            cell(utc_time(a.ts)),
            cell(a.notification),
            cell(a.event),
            cell(a.integration_id),
            cell(str(a.count)),
            cell(a.result, "green" if a.result == "sent" else "red"),
            cell(str(a.http_status) if a.http_status is not None else "-"),
            cell(str(a.attempts)),
            cell(a.error),
        )
    return table


def record_line(record: LogRecord) -> str:
    return (
        f"{utc_time(record.ts)}  {safe_text(record.source_ip):<15} {record.http_status:>3}  "
        f"{record.status.value:<11} attempts={record.attempts}  "
        f"{safe_text(record.error or record.message)}"
    ).rstrip()


def attempt_line(attempt: NotificationAttempt) -> str:
    http = str(attempt.http_status) if attempt.http_status is not None else "-"
    return (
        f"{utc_time(attempt.ts)}  {safe_text(attempt.notification):<12} "
        f"{safe_text(attempt.event):<14} {attempt.result:<6} {http:>3}  count={attempt.count} "
        f"attempts={attempt.attempts}  {safe_text(attempt.error)}"
    ).rstrip()


# ---------------------------------------------------------------- what `logs` lists


@dataclass(frozen=True)
class Listing(Generic[T]):
    """One kind of thing `logs` lists, with its filter bound in."""

    noun: str
    model: type[T]
    read: Callable[[RedisClient, Source, int], Awaitable[list[T]]]
    """The newest `limit` items of one source that pass the filter, newest first."""
    api_filter: list[tuple[str, str]]
    """The same filter as query parameters of the receiver's API."""
    table: Callable[[list[T]], Table]
    line: Callable[[T], str]
    identity: Callable[[T], Hashable]
    """What makes an item new to `-f` (a record changes as it is processed)."""


def _split(values: Sequence[str]) -> list[str]:
    """`--status a --status b,c` → [a, b, c]."""
    return [s for value in values for s in value.split(",") if s]


def record_listing(status_values: Sequence[str], *, payload: bool = False) -> Listing[LogRecord]:
    statuses = _split(status_values)
    for status in statuses:
        if status not in VALID_STATUSES and not status.isdigit():
            valid = ", ".join(sorted(VALID_STATUSES))
            raise UsageError(f"unknown status {status!r}: use one of {valid}, or an HTTP code")

    async def read(redis: RedisClient, source: Source, limit: int) -> list[LogRecord]:
        keys, integration_id = source
        store = LogStore(redis, keys)
        return await store.query(integration_id=integration_id, statuses=statuses, limit=limit)

    return Listing(
        noun="webhook log records",
        model=LogRecord,
        read=read,
        api_filter=[("status", s) for s in statuses],
        table=lambda records: render_table(records, payload=payload),
        line=record_line,
        identity=lambda r: (r.id, r.status, r.attempts),
    )


def attempt_listing(status_values: Sequence[str]) -> Listing[NotificationAttempt]:
    results = _split(status_values)
    if len(results) > 1 or any(r not in ("sent", "failed") for r in results):
        raise UsageError("with --notifications, --status is sent or failed (once)")
    result = results[0] if results else None

    async def read(redis: RedisClient, source: Source, limit: int) -> list[NotificationAttempt]:
        keys, integration_id = source
        return await read_attempts(
            redis, keys, limit=limit, integration_id=integration_id, result=result
        )

    return Listing(
        noun="notification attempts",
        model=NotificationAttempt,
        read=read,
        api_filter=[("result", result)] if result else [],
        table=render_notifications,
        line=attempt_line,
        identity=lambda a: a.model_dump_json(),
    )


# ---------------------------------------------------------------- reading and replaying


async def read_newest(
    redis_url: str, sources: Sequence[Source], listing: Listing[T], limit: int
) -> list[T]:
    """The newest `limit` items of all `sources` together, newest first."""
    redis = connect_redis(redis_url, CLI_TIMEOUTS)
    items: list[T] = []
    try:
        for source in sources:
            items += await listing.read(redis, source, limit)
    finally:
        await redis.aclose()
    return sorted(items, key=lambda item: item.ts, reverse=True)[:limit]


async def replay(
    redis_url: str,
    keys: AppKeys,
    integration_id: str,
    report: Callable[[int, int], None] | None = None,
) -> int:
    """Requeue the integration's dead letters; `report(done, total)` after each one."""
    from retrieve_worker.replay import replay_dead_letters

    redis = connect_redis(redis_url, CLI_TIMEOUTS)
    try:
        return await replay_dead_letters(redis, keys, integration_id, report)
    finally:
        await redis.aclose()


def print_replayed(integration_id: str, count: int) -> None:
    """What `replay` prints last, for scripts: one JSON object."""
    print(json.dumps({"integration": integration_id, "replayed": count}))


# ---------------------------------------------------------------- printing


def print_json_lines(items: Sequence[LogRecord | NotificationAttempt]) -> None:
    """One JSON object per line, in the order given (newest first)."""
    for item in items:
        print(json_line(item.model_dump(mode="json")), flush=True)


def print_lines(listing: Listing[T], items: Sequence[T], *, as_json: bool) -> None:
    """JSON lines newest first; text lines oldest first (the newest at the prompt)."""
    if as_json:
        print_json_lines(items)
        return
    for item in reversed(items):
        print(listing.line(item), flush=True)


def follow(
    listing: Listing[T], fetch: Callable[[], list[T]], shown: Sequence[T], *, as_json: bool
) -> NoReturn:
    """`-f`: print what is new every FOLLOW_INTERVAL seconds, oldest first, until interrupted."""
    seen = {listing.identity(item) for item in shown}
    while True:
        time.sleep(FOLLOW_INTERVAL)
        for item in reversed(fetch()):
            key = listing.identity(item)
            if key not in seen:
                seen.add(key)
                print_lines(listing, [item], as_json=as_json)


def exit_code(prog: str, run: Callable[[], int], *, unreachable: str = "") -> int:
    """`run()`'s exit code, with a usage mistake (2) or an unreachable Redis or server (1)
    reported as one line on stderr instead of a traceback."""
    try:
        return run()
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"{prog}: {unreachable}{exc}", file=sys.stderr)
        return 1
