"""The admin app (never exposed by the Ingress): health, readiness, metrics, webhook logs.

`/healthz`, `/readyz` and `/metrics` are open (probes, Prometheus). Everything else shows
payloads or changes state, so `admin_guard` asks for more (SECURITY.md, "Admin port"):

- a Host header naming an IP address, `localhost`, or a name of `RETRIEVE_ADMIN_HOSTS`: a web
  page whose own name was rebound to the admin address (DNS rebinding, e.g. on a port-forward)
  sends its own name and is refused;
- the console token (`RETRIEVE_CONSOLE_TOKEN`) as `Authorization: Bearer` or the console's
  cookie; without a configured token these endpoints stay closed.

Its connections are bounded like the public port's (`connections`), with a cap of their own
(`admin_max_connections`): a request head within `header_timeout`, a body within
`body_timeout` (408), idle keep-alive connections closed after `idle_timeout`. Serve the app
with `admin_site`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from retrieve_core.connections import ConnectionGuard, GuardedSite
from retrieve_core.logstore import LogStore
from retrieve_core.provider import ConfigProvider
from retrieve_core.redisclient import RedisClient

from .app import MSG_BODY_TIMEOUT, make_redis
from .console import ConsoleSettings, setup_console, token_presented
from .errors import failure
from .metrics import ReceiverMetrics
from .settings import ReceiverSettings

MAX_LOG_LIMIT = 1000
DEFAULT_LOG_LIMIT = 50
READY_PROBE_TTL_MS = 60_000
ADMIN_MAX_BODY_BYTES = 64 * 1024
"""Admin requests carry small bodies at most (the console's replay): larger ones get a 413."""

ADMIN_SETTINGS_KEY = web.AppKey("admin-settings", ReceiverSettings)
ADMIN_PROVIDER_KEY = web.AppKey("admin-provider", ConfigProvider)
ADMIN_METRICS_KEY = web.AppKey("admin-metrics", ReceiverMetrics)
ADMIN_REDIS_KEY: web.AppKey[RedisClient] = web.AppKey("admin-redis")
ADMIN_TOKEN_KEY = web.AppKey("admin-token", str)
ADMIN_GUARD_KEY = web.AppKey("admin-connection-guard", ConnectionGuard)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MSG_HOST_REFUSED = "Host not allowed on the admin port"
MSG_TOKEN_REQUIRED = "Console token required"


def _ok(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return _ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the configuration is loaded and each served application's shard takes a
    write (a PING would answer from a replica, a full server or the wrong cluster node)."""
    provider = request.app[ADMIN_PROVIDER_KEY]
    if not provider.loaded.is_set():
        return _ok({"ready": False, "reason": "configuration not loaded yet"}, 503)
    redis = request.app[ADMIN_REDIS_KEY]
    apps = provider.current.applications
    try:
        async with asyncio.timeout(request.app[ADMIN_SETTINGS_KEY].redis_timeout):
            if not apps:
                await redis.ping()
            results = await asyncio.gather(
                *(redis.set(app.keys.ready_probe, b"1", px=READY_PROBE_TTL_MS) for app in apps),
                return_exceptions=True,
            )
    except (RedisError, OSError, TimeoutError) as exc:
        return _ok({"ready": False, "reason": f"redis: {type(exc).__name__}"}, 503)
    failed = [
        f"{app.namespace}/{app.name}: {type(result).__name__}"
        for app, result in zip(apps, results, strict=True)
        if isinstance(result, BaseException)
    ]
    if failed:
        return _ok({"ready": False, "reason": "redis: " + ", ".join(failed[:10])}, 503)
    return _ok({"ready": True, "configVersion": provider.current.version})


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[ADMIN_METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def api_logs(request: web.Request) -> web.Response:
    """`GET /api/logs?integration=&status=&limit=&namespace=&app=`: records, newest first."""
    query = request.query
    apps = request.app[ADMIN_PROVIDER_KEY].current.applications
    namespace, name = query.get("namespace"), query.get("app")
    chosen = [
        a for a in apps
        if (not namespace or a.namespace == namespace) and (not name or a.name == name)
    ]  # fmt: skip
    if not chosen:
        return failure(404, "Application not found")
    if len(chosen) > 1:
        served = ", ".join(f"{a.namespace}/{a.name}" for a in chosen)
        return failure(400, f"Several applications are served ({served}): set namespace and app")
    app = chosen[0]
    try:
        limit = int(query.get("limit", DEFAULT_LOG_LIMIT))
    except ValueError:
        return failure(400, "limit must be an integer")
    limit = max(1, min(limit, MAX_LOG_LIMIT))
    statuses = [s for value in query.getall("status", []) for s in value.split(",") if s]
    store = LogStore(request.app[ADMIN_REDIS_KEY], app.keys)
    try:
        records = await store.query(
            integration_id=query.get("integration") or None, statuses=statuses, limit=limit
        )
    except (RedisError, OSError) as exc:
        return failure(503, f"Log store unavailable: {type(exc).__name__}")
    return _ok(
        {
            "namespace": app.namespace,
            "application": app.name,
            "records": [r.model_dump(mode="json") for r in records],
        }
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower().rstrip(".")


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names the admin port: an IP address (what probes, Prometheus,
    the API server's pod proxy send), `localhost` (a port-forward), or an allowed name."""
    if not host:
        return False
    name = _host_name(host)
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return True
    for entry in allowed:
        wanted = entry.lower().rstrip(".")
        if name == wanted or (wanted.startswith(".") and name.endswith(wanted)):
            return True
    return False


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Open paths pass; the rest needs an allowed Host and the console token. A body is read
    within `body_timeout` before any handler runs."""
    guard = request.app[ADMIN_GUARD_KEY]
    guard.head_received(request.transport)  # the head is in: its deadline no longer runs
    try:
        return await _checked(request, handler)
    finally:
        guard.answered(request.transport)


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        if not host_allowed(request.host, request.app[ADMIN_SETTINGS_KEY].admin_hosts):
            return failure(403, MSG_HOST_REFUSED)
        # The console checks its own token (and its `?token=` login); everything else here.
        console = request.path == "/console" or request.path.startswith("/console/")
        token = request.app.get(ADMIN_TOKEN_KEY)
        if not console and (token is None or not token_presented(request, token)):
            return failure(401, MSG_TOKEN_REQUIRED)
    try:
        if request.body_exists:
            # Read (and kept for the handler) before it runs, under the body deadline; an
            # answer given without reading it (401, 403 above) leaves the rest to aiohttp's
            # lingering, bounded in time too.
            seconds = request.app[ADMIN_SETTINGS_KEY].body_timeout
            try:
                async with asyncio.timeout(seconds or None):
                    await request.read()
            except TimeoutError:
                response = failure(408, MSG_BODY_TIMEOUT.format(seconds=seconds))
                response.force_close()  # a sender that slow gets no second request here
                return response
        return await handler(request)
    except web.HTTPException as exc:
        return failure(exc.status, exc.reason)


def admin_site(runner: web.AppRunner, host: str, port: int) -> GuardedSite:
    """The admin app's listener, its connections bounded by the app's `ConnectionGuard`."""
    return GuardedSite(runner, host, port, runner.app[ADMIN_GUARD_KEY])


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = make_redis(app[ADMIN_SETTINGS_KEY])
    app[ADMIN_REDIS_KEY] = client
    yield
    await client.aclose()


def init_admin_app(
    settings: ReceiverSettings,
    provider: ConfigProvider,
    *,
    metrics: ReceiverMetrics | None = None,
    console: ConsoleSettings | None = None,
) -> web.Application:
    """The admin app. Pass the public app's `metrics` so `/metrics` shows its counters.

    The web console is mounted at `/console/` when `console` is given or, by default, when
    `RETRIEVE_CONSOLE_TOKEN` is set; otherwise `/console/` answers 404.
    """
    app = web.Application(
        middlewares=[admin_guard],
        client_max_size=ADMIN_MAX_BODY_BYTES,
        handler_args={"keepalive_timeout": settings.idle_timeout},
    )
    app[ADMIN_GUARD_KEY] = ConnectionGuard(settings.admin_max_connections, settings.header_timeout)
    app[ADMIN_SETTINGS_KEY] = settings
    app[ADMIN_PROVIDER_KEY] = provider
    app[ADMIN_METRICS_KEY] = metrics if metrics is not None else ReceiverMetrics()
    app.cleanup_ctx.append(_redis_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/logs", api_logs)
    console = console if console is not None else ConsoleSettings.from_env()
    if console is not None:
        app[ADMIN_TOKEN_KEY] = console.token
    setup_console(
        app, console, provider, lambda: app[ADMIN_REDIS_KEY], app[ADMIN_METRICS_KEY].registry
    )
    return app
