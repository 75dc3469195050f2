"""Serving the public and admin apps until cancelled, then shutting down gracefully."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from retrieve_core.connections import GuardedSite
from retrieve_core.provider import ConfigProvider

from .admin import admin_site, init_admin_app
from .app import GUARD_KEY, SETTINGS_KEY, init_app
from .lean import lean_connections, shutdown_lean
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
    site: GuardedSite | None = None
    try:
        for runner in (admin, public):
            await runner.setup()
            runners.insert(0, runner)  # cleaned up public first: it finishes in-flight webhooks
        await admin_site(admin, admin_host, admin_port).start()  # bounded like the public port
        site = public_site(public, host, port, reuse_port=reuse_port)
        await site.start()
        log.info("receiver listening on %s:%d (admin %s:%d)", host, port, admin_host, admin_port)
        await asyncio.Event().wait()
    finally:
        if site is not None:  # no new connections; lean requests in progress finish first
            await asyncio.shield(stop_public_site(site, shutdown_timeout))
        for runner in runners:
            await asyncio.shield(runner.cleanup())


def public_site(
    runner: web.AppRunner, host: str, port: int, *, reuse_port: bool = False
) -> GuardedSite:
    """The public port's site: connection cap and request-head deadline (`connections`), and
    the lean HTTP path (`lean`) unless the settings turn it off."""
    webapp = runner.app
    guard = webapp[GUARD_KEY]
    if webapp[SETTINGS_KEY].lean_http:
        guard.connection = lean_connections(webapp)
    return GuardedSite(runner, host, port, guard, reuse_port=reuse_port)


async def stop_public_site(site: GuardedSite, timeout: float) -> None:
    """Stop accepting, then let lean requests in progress finish (up to `timeout` seconds);
    the runner's cleanup does the same for the connections aiohttp serves."""
    await site.stop()
    await shutdown_lean(site.guard, timeout)


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
