"""Serving the public and admin apps until cancelled, then shutting down gracefully."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from retrieve_core.connections import GuardedSite
from retrieve_core.provider import ConfigProvider

from .admin import admin_site, init_admin_app
from .app import GUARD_KEY, init_app
from .metrics import ReceiverMetrics
from .settings import ReceiverSettings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0


async def run_receiver(  # noqa: PLR0917 - the CLI's documented positional call
    settings: ReceiverSettings,
    provider: ConfigProvider,
    host: str = "0.0.0.0",
    port: int = 8080,
    admin_host: str = "0.0.0.0",
    admin_port: int = 8081,
    *,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    reuse_port: bool = False,
) -> None:
    """Serve webhooks on host:port and the admin endpoints on admin_host:admin_port.

    Runs until cancelled. On cancellation the sockets stop accepting, in-flight requests get
    up to `shutdown_timeout` seconds to finish, then Redis clients are closed. Feed `provider`
    from a config source (a manifest folder, the API server) in a task of your own.
    `reuse_port`: bind the public port with SO_REUSEPORT, beside sibling processes
    (`retrieve receiver --processes N`); the kernel spreads connections over them.
    """
    metrics = ReceiverMetrics()
    public_app = init_app(settings, provider, metrics=metrics)
    public = web.AppRunner(
        public_app,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
        access_log=None,
    )
    admin = web.AppRunner(
        init_admin_app(settings, provider, metrics=metrics),
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
        access_log=None,
    )
    runners: list[web.AppRunner] = []
    try:
        for runner in (admin, public):
            await runner.setup()
            runners.insert(0, runner)  # cleaned up public first: it finishes in-flight webhooks
        await admin_site(admin, admin_host, admin_port).start()  # bounded like the public port
        # The public port: connection cap and request-head deadline (`connections`).
        await GuardedSite(public, host, port, public_app[GUARD_KEY], reuse_port=reuse_port).start()
        log.info("receiver listening on %s:%d (admin %s:%d)", host, port, admin_host, admin_port)
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await asyncio.shield(runner.cleanup())


async def run_admin(
    settings: ReceiverSettings,
    provider: ConfigProvider,
    host: str,
    port: int,
    metrics: ReceiverMetrics,
    *,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> None:
    """Serve only the admin endpoints (a `--processes N` supervisor's), until cancelled."""
    runner = web.AppRunner(
        init_admin_app(settings, provider, metrics=metrics),
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    try:
        await admin_site(runner, host, port).start()
        log.info("receiver supervisor admin listening on %s:%d", host, port)
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
