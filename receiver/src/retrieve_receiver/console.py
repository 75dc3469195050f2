"""The web console, mounted on the admin app at `/console/` (never on the webhook port).

Applications and integrations with their URLs and last-hour counters, the webhook log with one
event's payload and processing result (with the batch that carried each record to a batched
destination), the error notifications sent or failed, queue depth over time, and a replay
button for dead letters. Static HTML + JS (no build step); the data comes from JSON endpoints under
`/console/api/`.

Protection: the admin port is cluster-internal (reached with `kubectl port-forward`), and the
console is off unless `RETRIEVE_CONSOLE_TOKEN` is set. Every request carries that token as
`Authorization: Bearer <token>`, or in the HttpOnly SameSite=Strict cookie set when the console
is opened once with `?token=`. Comparison is constant-time. Requests that change something (POST)
also need the header `X-Retrieve-Console: 1`, which a cross-site form or image cannot send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from retrieve_core.config import ApplicationConfig
from retrieve_core.keys import (
    COUNTER_BUCKET_SECONDS,
    COUNTER_DUPLICATE,
    COUNTER_FAILED,
    COUNTER_RECEIVED,
    COUNTER_REJECTED,
    counter_bucket,
)
from retrieve_core.logstore import LogStatus, LogStore
from retrieve_core.notifications import read_attempts
from retrieve_core.provider import ConfigProvider
from retrieve_core.redisclient import RedisClient, is_redis_failure
from retrieve_core.supervision import Beat, Supervisor

from .errors import failure

log = logging.getLogger(__name__)

ENV_CONSOLE_TOKEN: Final = "RETRIEVE_CONSOLE_TOKEN"
ENV_CONSOLE_SAMPLE_SECONDS: Final = "RETRIEVE_CONSOLE_SAMPLE_SECONDS"
COOKIE_NAME: Final = "retrieve_console"
CSRF_HEADER: Final = "X-Retrieve-Console"
PREFIX: Final = "/console"
STATIC_DIR: Final = Path(__file__).with_name("console_static")
DEFAULT_SAMPLE_SECONDS: Final = 5.0
SAMPLES_KEPT: Final = 360  # 30 minutes at the default interval
WINDOW_SECONDS: Final = 3600
MAX_LIST_LIMIT: Final = 500
PAYLOAD_PREVIEW: Final = 160
COUNTER_FIELDS: Final = (COUNTER_RECEIVED, COUNTER_REJECTED, COUNTER_FAILED, COUNTER_DUPLICATE)


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    token: str
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleSettings | None:
        """None (console disabled) unless `RETRIEVE_CONSOLE_TOKEN` is set."""
        source = os.environ if env is None else env
        token = source.get(ENV_CONSOLE_TOKEN, "").strip()
        if not token:
            return None
        seconds = float(source.get(ENV_CONSOLE_SAMPLE_SECONDS) or DEFAULT_SAMPLE_SECONDS)
        return cls(token=token, sample_seconds=max(0.2, seconds))


@dataclass(frozen=True, slots=True)
class QueueSample:
    ts: float
    depth: dict[str, int]  # "<namespace>/<app>" -> XLEN of its jobs stream


class QueueHistory:
    """A ring buffer of queue-depth samples, kept in the admin process's memory."""

    def __init__(self, size: int = SAMPLES_KEPT) -> None:
        self.samples: deque[QueueSample] = deque(maxlen=size)

    def add(self, sample: QueueSample) -> None:
        self.samples.append(sample)

    def series(self) -> list[dict[str, Any]]:
        return [{"ts": s.ts, "depth": s.depth} for s in self.samples]


@dataclass(frozen=True, slots=True)
class ConsoleState:
    settings: ConsoleSettings
    provider: ConfigProvider
    redis: Callable[[], RedisClient]
    history: QueueHistory
    registry: CollectorRegistry
    """Where the queue sampler's loop metrics go (the admin app's `/metrics`)."""


CONSOLE_KEY = web.AppKey("console", ConsoleState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- protection


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[len("bearer ") :].strip()
    return request.cookies.get(COOKIE_NAME)


def token_presented(request: web.Request, token: str) -> bool:
    """Whether the request carries `token` (bearer header or the console's cookie)."""
    presented = _presented_token(request)
    return presented is not None and _same(presented, token)


def _set_cookie(response: web.StreamResponse, token: str) -> None:
    # Not `Secure`: the admin port is plain HTTP behind `kubectl port-forward` on localhost.
    response.set_cookie(
        COOKIE_NAME, token, path=f"{PREFIX}/", httponly=True, samesite="Strict", max_age=12 * 3600
    )


_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Retrieve console</title>
</head><body style="font-family:sans-serif;margin:3em"><h1>Retrieve console</h1>
<p>Open this page once with <code>?token=&lt;RETRIEVE_CONSOLE_TOKEN&gt;</code>, or send
<code>Authorization: Bearer &lt;token&gt;</code>.</p></body></html>"""


@web.middleware
async def console_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check (bearer, cookie, or a one-time `?token=`) and the CSRF header on POST."""
    if not request.path.startswith(f"{PREFIX}/") and request.path != PREFIX:
        return await handler(request)
    state = request.app[CONSOLE_KEY]
    token = state.settings.token
    from_query = request.query.get("token")
    if from_query is not None and request.method == "GET":
        if not _same(from_query, token):
            return failure(401, "Invalid console token")
        # Keep the token in a cookie and take it out of the address bar (and the history).
        query = {k: v for k, v in request.query.items() if k != "token"}
        redirect = _redirect(str(request.rel_url.with_query(query)), 303)
        _set_cookie(redirect, token)
        return redirect
    if not token_presented(request, token):
        if request.path.startswith(f"{PREFIX}/api/"):
            return failure(401, "Console token required")
        return web.Response(status=401, text=_LOGIN_PAGE, content_type="text/html")
    if request.method not in {"GET", "HEAD"} and request.headers.get(CSRF_HEADER) != "1":
        return failure(403, f"Missing header {CSRF_HEADER}: 1")
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    )
    return response


# ---------------------------------------------------------------- data


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def _choose_app(request: web.Request) -> ApplicationConfig | web.Response:
    apps = request.app[CONSOLE_KEY].provider.current.applications
    namespace, name = request.query.get("namespace"), request.query.get("app")
    integration = request.query.get("integration")
    chosen = [
        a for a in apps
        if (not namespace or a.namespace == namespace) and (not name or a.name == name)
        and (not integration or a.integration(integration) is not None)
    ]  # fmt: skip
    if not chosen:
        return failure(404, "Application not found")
    if len(chosen) > 1:
        served = ", ".join(f"{a.namespace}/{a.name}" for a in chosen)
        return failure(400, f"Several applications are served ({served}): set namespace and app")
    return chosen[0]


def webhook_url(app: ApplicationConfig, integration_id: str) -> str | None:
    return f"https://{app.host}/integration/{integration_id}" if app.host else None


async def overview(
    redis: RedisClient, apps: tuple[ApplicationConfig, ...], now: float
) -> list[Any]:
    """Every application with its integrations and last-hour counters: one pipelined read."""
    buckets = range(counter_bucket(now - WINDOW_SECONDS) + 1, counter_bucket(now) + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for app in apps:
            pipe.xlen(app.keys.jobs)
            pipe.xlen(app.keys.dead_letters)
            pipe.zcard(app.keys.delayed)
            pipe.hgetall(app.keys.last_received)
            for integration in app.integrations:
                for bucket in buckets:
                    pipe.hmget(app.keys.counters(integration.id, bucket), *COUNTER_FIELDS)
        rows = iter(await pipe.execute())
    out = []
    for app in apps:
        queue_depth, dead_letters, retrying, last = next(rows), next(rows), next(rows), next(rows)
        last_received = {_text(k): float(_text(v)) for k, v in (last or {}).items()}
        integrations = []
        for integration in app.integrations:
            totals = dict.fromkeys(COUNTER_FIELDS, 0)
            for _ in buckets:
                for name, value in zip(COUNTER_FIELDS, next(rows), strict=True):
                    totals[name] += int(value or 0)
            url = webhook_url(app, integration.id)
            verify = integration.spec.verify
            integrations.append(
                {
                    "id": integration.id,
                    "name": integration.name,
                    "enabled": integration.spec.enabled,
                    "webhookURL": url,
                    "xmlWebhookURL": f"{url}/xml" if url else None,
                    "preset": verify.preset.value if verify else None,
                    "lastReceivedAt": last_received.get(integration.id),
                    **totals,
                }
            )
        out.append(
            {
                "namespace": app.namespace,
                "name": app.name,
                "host": app.host,
                "allowedList": list(app.spec.allowed_list),
                "queueDepth": int(queue_depth),
                "retrying": int(retrying),
                "deadLetters": int(dead_letters),
                "integrations": integrations,
            }
        )
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _redis_call(coro: Awaitable[Any]) -> Any:
    try:
        return await coro
    except Exception as exc:
        if not is_redis_failure(exc):
            raise
        raise web.HTTPServiceUnavailable(reason=f"Redis unavailable: {type(exc).__name__}") from exc


# ---------------------------------------------------------------- handlers


def _redirect(location: str, status: int) -> web.Response:
    # A plain response: the admin app's error middleware turns raised HTTPExceptions into JSON.
    return web.Response(status=status, headers={"Location": location})


async def index(request: web.Request) -> web.StreamResponse:
    if request.path == PREFIX:
        return _redirect(f"{PREFIX}/", 302)
    return web.FileResponse(STATIC_DIR / "index.html")


async def api_overview(request: web.Request) -> web.Response:
    state = request.app[CONSOLE_KEY]
    apps = state.provider.current.applications
    data = await _redis_call(overview(state.redis(), apps, time.time()))
    return _json(
        {
            "applications": data,
            "windowSeconds": WINDOW_SECONDS,
            "bucketSeconds": COUNTER_BUCKET_SECONDS,
        }
    )


async def api_logs(request: web.Request) -> web.Response:
    """Records of one application, newest first, without payloads (one event: `/logs/{id}`)."""
    app = _choose_app(request)
    if isinstance(app, web.Response):
        return app
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), MAX_LIST_LIMIT))
    except ValueError:
        return failure(400, "limit must be an integer")
    statuses = [s for v in request.query.getall("status", []) for s in v.split(",") if s]
    store = LogStore(request.app[CONSOLE_KEY].redis(), app.keys)
    records = await _redis_call(
        store.query(
            integration_id=request.query.get("integration") or None, statuses=statuses, limit=limit
        )
    )
    rows = []
    for record in records:
        row = record.model_dump(mode="json", exclude={"payload", "console", "destinations"})
        row["payloadPreview"] = record.payload[:PAYLOAD_PREVIEW]
        rows.append(row)
    return _json({"namespace": app.namespace, "application": app.name, "records": rows})


async def api_log_record(request: web.Request) -> web.Response:
    app = _choose_app(request)
    if isinstance(app, web.Response):
        return app
    store = LogStore(request.app[CONSOLE_KEY].redis(), app.keys)
    record = await _redis_call(store.get(request.match_info["record_id"]))
    if record is None:
        return failure(404, "Log record not found (trimmed or never written)")
    return _json(record.model_dump(mode="json"))


async def api_notifications(request: web.Request) -> web.Response:
    """Error notification attempts of one application (sent or failed), newest first."""
    app = _choose_app(request)
    if isinstance(app, web.Response):
        return app
    try:
        limit = max(1, min(int(request.query.get("limit", "50")), MAX_LIST_LIMIT))
    except ValueError:
        return failure(400, "limit must be an integer")
    attempts = await _redis_call(
        read_attempts(
            request.app[CONSOLE_KEY].redis(),
            app.keys,
            limit=limit,
            integration_id=request.query.get("integration") or None,
            result=request.query.get("result") or None,
        )
    )
    return _json(
        {
            "namespace": app.namespace,
            "application": app.name,
            "attempts": [a.model_dump(mode="json") for a in attempts],
        }
    )


async def api_queue(request: web.Request) -> web.Response:
    state = request.app[CONSOLE_KEY]
    return _json(
        {"intervalSeconds": state.settings.sample_seconds, "samples": state.history.series()}
    )


async def api_replay(request: web.Request) -> web.Response:
    from retrieve_worker.replay import replay_dead_letters

    integration_id = request.query.get("integration")
    if not integration_id:
        return failure(400, "integration is required")
    app = _choose_app(request)
    if isinstance(app, web.Response):
        return app
    if app.integration(integration_id) is None:
        return failure(404, f"Integration {integration_id} not found")
    redis = request.app[CONSOLE_KEY].redis()
    count = await _redis_call(replay_dead_letters(redis, app.keys, integration_id))
    log.info("console: replayed %d dead letters of %s", count, integration_id)
    return _json({"integration": integration_id, "replayed": count})


async def api_statuses(request: web.Request) -> web.Response:
    return _json({"statuses": [s.value for s in LogStatus]})


# ---------------------------------------------------------------- queue sampler


async def sample_queue_depth(state: ConsoleState) -> None:
    apps = state.provider.current.applications
    async with state.redis().pipeline(transaction=False) as pipe:
        for app in apps:
            pipe.xlen(app.keys.jobs)
        depths = await pipe.execute()
    state.history.add(
        QueueSample(
            time.time(),
            {f"{a.namespace}/{a.name}": int(d) for a, d in zip(apps, depths, strict=True)},
        )
    )


async def _sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sample the queue depths every `sample_seconds`, as a supervised loop: a failed sample is
    logged (debug: the console shows the gap) and the next one tried; anything else restarts
    the loop with backoff and shows in `/metrics`
    (`retrieve_receiver_loop_up{loop="console-queue-sampler"}`). Not part of `/readyz`."""
    state = app[CONSOLE_KEY]
    # A stop flag besides cancel(): redis-py can swallow a cancellation that lands mid-command.
    stop = asyncio.Event()

    async def sample_forever(beat: Beat) -> None:
        while not stop.is_set():
            try:
                await sample_queue_depth(state)
            except (RedisError, OSError) as exc:
                log.debug("queue depth not sampled: %s", exc)
            beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), state.settings.sample_seconds)

    supervisor = Supervisor(state.registry, "retrieve_receiver")
    supervisor.start("console-queue-sampler", sample_forever, required=False)
    yield
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(supervisor.stop(), 5)


def setup_console(
    app: web.Application,
    settings: ConsoleSettings | None,
    provider: ConfigProvider,
    redis: Callable[[], RedisClient],
    registry: CollectorRegistry,
) -> None:
    """Mount the console on the admin app; with no settings (no token) nothing is mounted (404)."""
    if settings is None:
        return
    app[CONSOLE_KEY] = ConsoleState(settings, provider, redis, QueueHistory(), registry)
    app.middlewares.append(console_guard)
    app.cleanup_ctx.append(_sampler_ctx)
    app.router.add_get(PREFIX, index)
    app.router.add_get(f"{PREFIX}/", index)
    app.router.add_static(f"{PREFIX}/static/", STATIC_DIR, follow_symlinks=False)
    app.router.add_get(f"{PREFIX}/api/overview", api_overview)
    app.router.add_get(f"{PREFIX}/api/statuses", api_statuses)
    app.router.add_get(f"{PREFIX}/api/logs", api_logs)
    app.router.add_get(f"{PREFIX}/api/logs/{{record_id}}", api_log_record)
    app.router.add_get(f"{PREFIX}/api/notifications", api_notifications)
    app.router.add_get(f"{PREFIX}/api/queue", api_queue)
    app.router.add_post(f"{PREFIX}/api/replay", api_replay)
