"""`retrieve poll INTEGRATION`: one scheduled run, by hand, from the CronJob, or in `retrieve dev`.

Configuration comes from a folder of manifests (`--config-dir`) or from the cluster (the
application's `<app>-config` ConfigMap and Secrets, like `retrieve worker`). Exit status 0 when
the run succeeded, 1 when it failed (the failure is also recorded for the operator's status).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from retrieve_core.config import SecretStore
from retrieve_core.provider import ConfigProvider, ConfigSnapshot
from retrieve_core.redisclient import Timeouts, connect_redis
from retrieve_core.scheduling.cron import CronSchedule, parse_cron
from retrieve_core.scheduling.source_poll import Poller, PollError, find_integration

from .components import CommandError, choose_source, run_event_loop
from .selection import UsageError, resolve_redis_url, running_dev
from .terminal import safe_text

log = logging.getLogger("retrieve.poll")
POLL_TIMEOUTS = Timeouts(socket=10.0, connect=5.0)

CONFIG_WAIT_SECONDS = 30.0
DEV_CHECK_SECONDS = 30.0


async def _load(args: argparse.Namespace) -> ConfigSnapshot:
    provider = ConfigProvider()
    if args.config_dir is None and not args.from_cluster and not args.app:
        dev = running_dev()  # by hand next to `retrieve dev`: its folder (and its RedisClient)
        if dev:
            args.config_dir = Path(dev["config_dir"])
    source = choose_source(args, provider)  # a folder is loaded at once; a cluster is watched
    if provider.loaded.is_set():
        return provider.current
    task = asyncio.ensure_future(source(provider))
    try:
        await asyncio.wait_for(provider.loaded.wait(), timeout=CONFIG_WAIT_SECONDS)
    except TimeoutError:
        raise CommandError("the application's configuration could not be read in time") from None
    finally:
        task.cancel()
    return provider.current


async def _poll(args: argparse.Namespace) -> int:
    snapshot = await _load(args)
    try:
        app, integration = find_integration(snapshot.applications, args.integration)
    except PollError as exc:
        raise CommandError(str(exc)) from None
    redis = connect_redis(resolve_redis_url(args), POLL_TIMEOUTS)
    try:
        poller = Poller(redis, app, integration)
        result = await poller.run(snapshot.secrets)
    except PollError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await redis.aclose()
    summary = {
        "integration": integration.name,
        "integrationId": integration.id,
        "items": result.seen,
        "new": result.new,
        "pages": result.pages,
        "error": result.error,
    }
    if args.json:
        print(json.dumps(summary))
    elif result.error:
        print(
            f"retrieve poll {integration.name}: failed: {safe_text(result.error)}", file=sys.stderr
        )
    else:
        print(
            f"{integration.name}: {result.seen} item(s) over {result.pages} page(s), "
            f"{result.new} new (missed by the webhook) enqueued"
        )
    return 1 if result.error else 0


def run_poll(args: argparse.Namespace) -> int:
    outcome: list[int] = []

    async def main() -> None:
        outcome.append(await _poll(args))

    try:
        run_event_loop(main())
    except (CommandError, UsageError) as exc:
        print(f"retrieve poll: {exc}", file=sys.stderr)
        return 2
    return outcome[0] if outcome else 1


# ------------------------------------------------------------------------------- dev mode


async def dev_scheduler(
    provider: ConfigProvider,
    redis_url: str,
    *,
    interval: float = DEV_CHECK_SECONDS,
    clock: Callable[[], datetime.datetime] | None = None,
) -> None:
    """`retrieve dev`: run each scheduled integration when its cron matches (local time), at
    most once a minute, checking every `interval` seconds."""
    now = clock or (lambda: datetime.datetime.now().astimezone())
    done: set[tuple[str, str]] = set()  # (integration id, minute) already run
    parsed: dict[str, CronSchedule] = {}
    redis = connect_redis(redis_url, POLL_TIMEOUTS)
    try:
        while True:
            moment = now().replace(second=0, microsecond=0)
            minute = moment.isoformat()
            snapshot = provider.current
            for app in snapshot.applications:
                for integration in app.integrations:
                    schedule = integration.spec.schedule
                    if schedule is None or not integration.spec.enabled:
                        continue
                    cron = parsed.get(schedule.cron) or parsed.setdefault(
                        schedule.cron, parse_cron(schedule.cron)
                    )
                    if (integration.id, minute) in done or not cron.matches(moment):
                        continue
                    done.add((integration.id, minute))
                    await _dev_run(Poller(redis, app, integration), snapshot.secrets)
            done = {d for d in done if d[1] == minute}
            await asyncio.sleep(interval)
    finally:
        await redis.aclose()


async def _dev_run(poller: Poller, secrets: SecretStore) -> None:
    name = poller.integration.name
    try:
        result = await poller.run(secrets)
    except Exception:  # one integration's bad run must not stop the others
        log.exception("scheduled poll of %s failed", name)
        return
    if result.error:
        log.warning("scheduled poll of %s failed: %s", name, result.error)
    else:
        log.info("scheduled poll of %s: %d item(s), %d new", name, result.seen, result.new)
