"""`retrieve dev`: receiver and worker in one process from a folder of manifests, no cluster.

With no --redis-url a private `redis-server` is started on a free port and removed on exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from retrieve_core.config import ApplicationConfig
from retrieve_core.provider import ConfigProvider

from .components import (
    CommandError,
    _receiver_settings,
    _worker_settings,
    folder_source,
    run_event_loop,
    run_until_signal,
)
from .redis_server import RedisNotInstalled, RedisServer
from .selection import clear_dev_state, write_dev_state


def banner(apps: tuple[ApplicationConfig, ...], args: argparse.Namespace, redis_url: str) -> str:
    base = f"http://{args.host}:{args.port}"
    lines = [
        f"retrieve dev: receiver on {base}, admin on http://{args.host}:{args.admin_port}",
        f"  redis: {redis_url}",
    ]
    for app in apps:
        lines.append(f"  application {app.namespace}/{app.name} (Host: {app.host or 'disabled'})")
        lines.append(
            f"    allowedList: {', '.join(app.spec.allowed_list) or '(empty: admits nobody)'}"
        )
        for integration in app.integrations:
            state = "" if integration.spec.enabled else "  [disabled]"
            url = f"{base}/integration/{integration.id}"
            lines.append(f"    {integration.name}: {url}  (XML: {url}/xml){state}")
    lines.append(f"  logs:   retrieve logs --config-dir {args.config_dir}")
    if os.environ.get("RETRIEVE_CONSOLE_TOKEN", "").strip():
        # The token itself is not printed: whoever started dev mode has it in their environment.
        console = f"http://{args.host}:{args.admin_port}/console/?token=$RETRIEVE_CONSOLE_TOKEN"
        lines.append(f"  console: {console}")
    else:
        lines.append("  console: set RETRIEVE_CONSOLE_TOKEN to enable the web console")
    lines.append("  Ctrl-C stops.")
    return "\n".join(lines)


async def _dev(args: argparse.Namespace, redis_url: str) -> None:
    from retrieve_receiver.serving import run_receiver
    from retrieve_worker.worker import Worker

    from .poll_cmd import dev_scheduler

    provider = ConfigProvider()
    watch = folder_source(args.config_dir, provider)
    args.redis_url = redis_url
    receiver_settings = _receiver_settings(args, dev_mode=True)
    worker = Worker(_worker_settings(args), provider)
    print(banner(provider.current.applications, args, redis_url), file=sys.stderr, flush=True)
    services: list[Any] = [
        (watch(provider), None),
        (
            run_receiver(
                receiver_settings, provider, args.host, args.port, args.host, args.admin_port
            ),
            None,
        ),
        (worker.run(), worker.stop),
        (dev_scheduler(provider, redis_url), None),  # spec.schedule polls on their cron
    ]
    await run_until_signal(services)


def run_dev(args: argparse.Namespace) -> int:
    private: RedisServer | None = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            private = RedisServer().start()
            redis_url = private.url
        write_dev_state(redis_url, args.config_dir.resolve())
        run_event_loop(_dev(args, redis_url))
    except RedisNotInstalled as exc:
        print(f"retrieve dev: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"retrieve dev: {exc}", file=sys.stderr)
        return 2
    finally:
        clear_dev_state()
        if private is not None:
            private.cleanup()
    return 0
