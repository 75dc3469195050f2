"""`retrieve logs` and `retrieve replay`: read webhook logs, requeue dead letters."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from retrieve_core.logstore import LogRecord, LogStatus, LogStore
from retrieve_core.notifications import NotificationAttempt, read_attempts
from retrieve_core.redisclient import CLI_TIMEOUTS, connect_redis

from .selection import UsageError, resolve_redis_url, resolve_targets
from .terminal import cell, json_line

_STATUS_STYLE = {
    LogStatus.SUCCEEDED: "green",
    LogStatus.QUEUED: "cyan",
    LogStatus.RETRYING: "yellow",
    LogStatus.DUPLICATE: "blue",
    LogStatus.IGNORED: "blue",
    LogStatus.REJECTED: "red",
    LogStatus.FAILED: "red",
    LogStatus.DEAD_LETTER: "magenta",
}
_VALID_STATUSES = {s.value for s in LogStatus}


def _check_statuses(statuses: list[str]) -> list[str]:
    for status in statuses:
        if status not in _VALID_STATUSES and not status.isdigit():
            valid = ", ".join(sorted(_VALID_STATUSES))
            raise UsageError(f"unknown status {status!r}: use one of {valid}, or an HTTP code")
    return statuses


def _time(ts: float) -> str:
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
            cell(_time(r.ts)),
            cell(r.source_ip),
            cell(r.integration_id or "-"),
            cell(str(r.http_status)),
            cell(r.status.value, _STATUS_STYLE.get(r.status, "white")),
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
            cell(_time(a.ts)),
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


async def _notifications(args: argparse.Namespace) -> int:
    wrong = [s for s in args.status if s not in ("sent", "failed")]
    if wrong or len(args.status) > 1:
        raise UsageError("with --notifications, --status is sent or failed (once)")
    targets = resolve_targets(args, args.integration)
    redis = connect_redis(resolve_redis_url(args), CLI_TIMEOUTS)
    attempts: list[NotificationAttempt] = []
    try:
        for target in targets:
            attempts += await read_attempts(
                redis,
                target.keys,
                limit=args.limit,
                integration_id=target.integration_id,
                result=args.status[0] if args.status else None,
            )
    finally:
        await redis.aclose()
    attempts = sorted(attempts, key=lambda a: a.ts, reverse=True)[: args.limit]
    if args.json:
        for attempt in attempts:
            sys.stdout.write(json_line(attempt.model_dump(mode="json")) + "\n")
        return 0
    console = Console(width=None if sys.stdout.isatty() else 400)
    if not attempts:
        console.print("no notification attempts match")
        return 0
    console.print(render_notifications(attempts))
    return 0


async def _logs(args: argparse.Namespace) -> int:
    if getattr(args, "notifications", False):
        return await _notifications(args)
    statuses = _check_statuses(args.status)
    targets = resolve_targets(args, args.integration)
    redis = connect_redis(resolve_redis_url(args), CLI_TIMEOUTS)
    records: list[LogRecord] = []
    try:
        for target in targets:
            records += await LogStore(redis, target.keys).query(
                integration_id=target.integration_id, statuses=statuses, limit=args.limit
            )
    finally:
        await redis.aclose()
    records = sorted(records, key=lambda r: r.ts, reverse=True)[: args.limit]
    if args.json:
        for record in records:
            sys.stdout.write(json_line(record.model_dump(mode="json")) + "\n")
        return 0
    # Piped output is not cut to 80 columns: keep whole ids and messages for grep.
    console = Console(width=None if sys.stdout.isatty() else 400)
    if not records:
        console.print("no webhook log records match")
        return 0
    console.print(render_table(records, payload=args.payload))
    return 0


async def _replay(args: argparse.Namespace) -> int:
    from retrieve_worker.replay import replay_dead_letters

    [target] = resolve_targets(args, args.integration)
    if target.integration_id is None:
        raise UsageError("which integration? give its id or name")
    redis = connect_redis(resolve_redis_url(args), CLI_TIMEOUTS)
    try:
        with Progress(
            TextColumn("replaying dead letters of {task.fields[integration]}"),
            BarColumn(),
            MofNCompleteColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task("replay", total=None, integration=target.integration_id)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            count = await replay_dead_letters(redis, target.keys, target.integration_id, report)
    finally:
        await redis.aclose()
    print(json.dumps({"integration": target.integration_id, "replayed": count}))
    return 0


def _run(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    try:
        return asyncio.run(main(args))
    except UsageError as exc:
        print(f"retrieve: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"retrieve: cannot reach RedisClient: {exc}", file=sys.stderr)
        return 1


def run_logs(args: argparse.Namespace) -> int:
    return _run(_logs, args)


def run_replay(args: argparse.Namespace) -> int:
    return _run(_replay, args)
