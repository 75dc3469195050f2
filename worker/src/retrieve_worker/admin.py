"""The worker's admin port: `/healthz`, `/readyz`, `/metrics`.

`/readyz` is ready once the configuration is loaded, Redis answers, and none of the worker's
required loops (read, claim, move of each application) is down. The port's connections are
bounded as the receiver's are (retrieve_core.connections: a cap on open connections, a
deadline for each request head), so a slow or greedy client cannot hold the probes' port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from retrieve_core.connections import ConnectionGuard, GuardedSite
from retrieve_core.redisclient import RedisClient, Timeouts, connect_redis

from .worker import Worker

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WORKER_KEY = web.AppKey("worker", Worker)
GUARD_KEY = web.AppKey("admin-connection-guard", ConnectionGuard)
_REDIS_KEY: web.AppKey[RedisClient] = web.AppKey("admin-redis")


@web.middleware
async def _bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[GUARD_KEY]
    guard.head_received(request.transport)  # the head is in: its deadline no longer runs
    try:
        return await handler(request)
    finally:
        guard.answered(request.transport)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    # A client of its own with short timeouts: a probe must answer while Redis hangs.
    client = connect_redis(app[WORKER_KEY].settings.redis_url, Timeouts(socket=2, connect=2))
    app[_REDIS_KEY] = client
    yield
    await client.aclose()


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    if not worker.provider.loaded.is_set():
        return web.json_response({"ready": False, "reason": "config not loaded"}, status=503)
    try:
        await request.app[_REDIS_KEY].ping()
    except (RedisError, OSError) as exc:
        return web.json_response({"ready": False, "reason": f"redis: {exc}"}, status=503)
    down = worker.down()
    if down:
        reason = f"loops down: {', '.join(down)}"
        return web.json_response({"ready": False, "reason": reason}, status=503)
    return web.json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(request.app[WORKER_KEY].registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def init_admin_app(worker: Worker) -> web.Application:
    """The admin app of `worker` (its settings bound the port's connections)."""
    app = web.Application(middlewares=[_bounded])
    settings = worker.settings
    app[WORKER_KEY] = worker
    app[GUARD_KEY] = ConnectionGuard(settings.admin_max_connections, settings.admin_header_timeout)
    app.cleanup_ctx.append(_redis_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_admin(app: web.Application, host: str, port: int) -> None:
    """Serves the admin app until cancelled, through its `ConnectionGuard`."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await GuardedSite(runner, host, port, app[GUARD_KEY]).start()
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(runner.cleanup())
