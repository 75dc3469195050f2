"""`retrieve receiver`, `retrieve worker` and the serving half of `retrieve dev`.

A process gets its configuration from one source — a folder of manifests (no cluster) or the
API server (the application's `<app>-config` ConfigMap and its Secrets) — into a
`ConfigProvider`, and serves until SIGTERM/SIGINT, then drains: the receiver finishes requests in
flight, the worker finishes jobs in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from retrieve_core.manifests import ManifestError, load_directory
from retrieve_core.provider import ConfigProvider, watch_directory

log = logging.getLogger("retrieve")

SourceFactory = Callable[[ConfigProvider], Coroutine[Any, Any, None]]


class CommandError(Exception):
    """A problem reported to the user as one line, exit code 2."""


def folder_source(directory: Path, provider: ConfigProvider) -> SourceFactory:
    """Load the folder now (errors name file, object and field), then watch it for edits."""
    try:
        loaded = load_directory(directory)
    except ManifestError as exc:
        raise CommandError(str(exc)) from exc
    if not loaded.applications:
        raise CommandError(f"{directory}: no RetrieveApplication manifest found")
    provider.update(loaded.applications, loaded.secrets)
    return lambda p: watch_directory(p, directory)


def cluster_source(args: argparse.Namespace) -> SourceFactory:
    from retrieve_core.kubesource import watch_cluster_config

    if not args.namespace or not args.app:
        raise CommandError(
            "reading config from the cluster needs --namespace and --app "
            "(or RETRIEVE_NAMESPACE and RETRIEVE_APPLICATION)"
        )
    config_map = os.environ.get("RETRIEVE_CONFIG_MAP")
    return lambda p: watch_cluster_config(p, args.namespace, args.app, config_map)


def choose_source(args: argparse.Namespace, provider: ConfigProvider) -> SourceFactory:
    if args.config_dir is not None:
        return folder_source(args.config_dir, provider)
    if args.from_cluster or os.environ.get("RETRIEVE_CONFIG_MAP") or args.app:
        return cluster_source(args)
    raise CommandError("where is the configuration? pass --config-dir DIR or --from-cluster")


Service = tuple[Awaitable[None], Callable[[], None] | None]
"""A coroutine to run and how to stop it gracefully (None: cancel it, which drains too)."""


async def run_until_signal(services: list[Service]) -> None:
    """Run services until SIGTERM/SIGINT or until one ends; then stop every one and wait."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    tasks = [asyncio.ensure_future(coro) for coro, _ in services]
    waiter = asyncio.ensure_future(stopping.wait())
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                failure = task.exception()
    finally:
        log.info("shutting down")
        for task, (_, stop) in zip(tasks, services, strict=True):
            if task.done():
                continue
            if stop is None:
                task.cancel()
            else:
                stop()
        await _finish(tasks)
        waiter.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if failure is not None:
        raise failure


async def _finish(tasks: Sequence[asyncio.Future[None]], timeout: float = 40.0) -> None:
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=timeout)
    for task in still:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _receiver_settings(args: argparse.Namespace, *, dev_mode: bool) -> Any:
    from retrieve_receiver.settings import ReceiverSettings

    try:
        return ReceiverSettings.from_env(redis_url=args.redis_url, dev_mode=dev_mode)
    except ValueError as exc:  # a malformed limit in the environment: said in one line
        raise CommandError(str(exc)) from None


def _worker_settings(args: argparse.Namespace) -> Any:
    from retrieve_worker.worker import WorkerSettings

    claim_idle = os.environ.get("RETRIEVE_CLAIM_IDLE_SECONDS")
    overrides: dict[str, Any] = {}
    if claim_idle:
        overrides["claim_idle_ms"] = int(float(claim_idle) * 1000)
        overrides["claim_interval_seconds"] = min(10.0, max(0.5, float(claim_idle) / 2))
    consumer = getattr(args, "consumer", None)
    if consumer is not None:
        if not consumer.strip() or not consumer.isprintable() or len(consumer) > 200:
            raise CommandError(f"--consumer: {consumer!r} is not a usable consumer name")
        overrides["consumer"] = consumer
    return WorkerSettings(
        redis_url=args.redis_url
        or os.environ.get("RETRIEVE_REDIS_URL")
        or WorkerSettings.redis_url,
        concurrency=getattr(args, "concurrency", None),
        **overrides,
    )


async def _receiver_main(args: argparse.Namespace) -> None:
    from retrieve_receiver.serving import run_receiver

    provider = ConfigProvider()
    source = choose_source(args, provider)
    settings = _receiver_settings(args, dev_mode=args.config_dir is not None)
    if args.processes > 1:
        from .receiver_processes import supervise_receivers

        await supervise_receivers(args, source, provider, settings)
        return
    if args.supervised:
        from .receiver_processes import die_with_supervisor

        die_with_supervisor()
    admin_host = args.admin_host or args.host
    receiver = run_receiver(
        settings, provider, args.host, args.port, admin_host, args.admin_port,
        reuse_port=args.supervised,
    )  # fmt: skip
    await run_until_signal([(source(provider), None), (receiver, None)])


async def _worker_main(args: argparse.Namespace) -> None:
    from retrieve_worker.admin import init_admin_app, serve_admin
    from retrieve_worker.worker import Worker

    provider = ConfigProvider()
    source = choose_source(args, provider)
    settings = _worker_settings(args)
    registry = CollectorRegistry()
    worker = Worker(settings, provider, registry=registry)
    await run_until_signal(
        [
            (source(provider), None),
            (serve_admin(init_admin_app(worker), args.host, args.admin_port), None),
            (worker.run(), worker.stop),
        ]
    )


# A server allocates many short-lived containers per request. With Python's default gen-0
# threshold (700) the cyclic collector runs every few requests; older generations rescan every
# long-lived object (modules, models, routing). Startup objects are frozen out of collection and
# the young generation is collected less often (bench/receiver_bench.py measures the effect).
GC_THRESHOLDS = (20_000, 20, 50)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_event_loop(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on uvloop when it is installed: aiohttp serves and calls faster on it."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _run(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], args: argparse.Namespace
) -> int:
    try:
        run_event_loop(main(args))
    except CommandError as exc:
        print(f"retrieve: {exc}", file=sys.stderr)
        return 2
    return 0


def run_receiver(args: argparse.Namespace) -> int:
    from .receiver_processes import ChildExited

    try:
        return _run(_receiver_main, args)
    except ChildExited as exc:  # `--processes N`: one of them died (the supervisor's docstring)
        log.error("%s", exc)
        return 1


def run_worker(args: argparse.Namespace) -> int:
    return _run(_worker_main, args)
