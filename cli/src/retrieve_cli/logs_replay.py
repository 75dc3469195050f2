"""`retrieve logs` and `retrieve replay`: read webhook logs, requeue dead letters.

What is specific to `retrieve`: the applications come from a manifest folder (or a running
`retrieve dev`), Redis from --redis-url, and people read a rich table. Reading, filtering, the
JSON lines and the replay itself are `webhook_logs`, shared with `kubectl retrieve`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .selection import UsageError, resolve_redis_url, resolve_targets
from .webhook_logs import (
    Listing,
    T,
    attempt_listing,
    exit_code,
    print_json_lines,
    print_replayed,
    read_newest,
    record_listing,
    render_table,
    replay,
)

__all__ = ["render_table", "run_logs", "run_replay"]

PROG = "retrieve"
UNREACHABLE = "cannot reach Redis: "


async def _list(args: argparse.Namespace, listing: Listing[T]) -> int:
    targets = resolve_targets(args, args.integration)
    sources = [(target.keys, target.integration_id) for target in targets]
    items = await read_newest(resolve_redis_url(args), sources, listing, args.limit)
    if args.json:
        print_json_lines(items)
        return 0
    # Piped output is not cut to 80 columns: keep whole ids and messages for grep.
    console = Console(width=None if sys.stdout.isatty() else 400)
    console.print(listing.table(items) if items else f"no {listing.noun} match")
    return 0


async def _logs(args: argparse.Namespace) -> int:
    if getattr(args, "notifications", False):
        return await _list(args, attempt_listing(args.status))
    return await _list(args, record_listing(args.status, payload=args.payload))


async def _replay(args: argparse.Namespace) -> int:
    [target] = resolve_targets(args, args.integration)
    if target.integration_id is None:
        raise UsageError("which integration? give its id or name")
    url = resolve_redis_url(args)
    with Progress(
        TextColumn("replaying dead letters of {task.fields[integration]}"),
        BarColumn(),
        MofNCompleteColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("replay", total=None, integration=target.integration_id)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        count = await replay(url, target.keys, target.integration_id, report)
    print_replayed(target.integration_id, count)
    return 0


def run_logs(args: argparse.Namespace) -> int:
    return exit_code(PROG, lambda: asyncio.run(_logs(args)), unreachable=UNREACHABLE)


def run_replay(args: argparse.Namespace) -> int:
    return exit_code(PROG, lambda: asyncio.run(_replay(args)), unreachable=UNREACHABLE)
