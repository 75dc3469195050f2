"""The public webhook app: `POST /integration/{id}` and `POST /integration/{id}/xml`.

Checks run in the contract's order (DESIGN.md): sender whitelist, integration, size, signature,
parse, (dedupe), enqueue. Refusals are `WebhookError`s; `handle_webhook` turns every error into
the contract's answer, writes the request's log record and counts it. It takes an `Incoming`
request from either HTTP path: aiohttp's routes (`webhook_route`), or the lean path
(`retrieve_receiver.lean`) that serves plain requests arriving whole.

One module of ~600 lines on purpose: it is the request path, read top to bottom in the
contract's order; the parts that stand alone (whitelist, dns, parsing, signatures, content
coding, rate limits, routing, connection bounds) are their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy
from pydantic_core import PydanticSerializationError
from redis.exceptions import RedisError

from retrieve_core.config import IntegrationConfig
from retrieve_core.connections import ConnectionGuard
from retrieve_core.constants import (
    MSG_DISABLED,
    MSG_INVALID_JSON,
    MSG_INVALID_SIGNATURE,
    MSG_INVALID_XML,
    MSG_METHOD_NOT_ALLOWED,
    MSG_NOT_AUTHORIZED,
    MSG_NOT_FOUND,
    MSG_QUEUE_UNAVAILABLE,
    MSG_RATE_LIMITED,
    MSG_TOO_LARGE,
    MSG_UNSUPPORTED_ENCODING,
)
from retrieve_core.enqueue import Delivery, Enqueuer
from retrieve_core.job import new_job_id, new_job_json
from retrieve_core.keys import (
    COUNTER_REJECTED,
    COUNTER_TTL_SECONDS,
    counter_bucket,
)
from retrieve_core.logstore import (
    LogRecord,
    LogStatus,
    LogStore,
    add_bounded_record,
    truncate_payload,
)
from retrieve_core.models import NotificationEvent
from retrieve_core.notifications import note_unauthorized
from retrieve_core.provider import ConfigProvider
from retrieve_core.redisclient import RedisClient, Timeouts, connect_redis, is_redis_failure
from retrieve_core.supervision import Beat, Supervisor

from .content_coding import CodingMismatch, UnsupportedCoding, content_coding, decode_body
from .dns import FcrdnsVerifier, make_resolver
from .errors import WebhookError, failure, success
from .metrics import UNKNOWN_INTEGRATION, ReceiverMetrics
from .parsing import PayloadError, parse_payload
from .ratelimit import RateLimiter, retry_after_seconds
from .routing import AppRoute, IntegrationRoute, RoutingTable, build_routing
from .settings import ReceiverSettings
from .signatures import is_woocommerce_ping, verify
from .whitelist import IPAddress, sender_ip

log = logging.getLogger(__name__)

# aiohttp's own limit must never be the one that answers: the real limit is per application
# and enforced while reading (`read_body`). This is the largest maxBodyBytes the CRD allows.
CLIENT_MAX_SIZE = 64 * 1024 * 1024
LOG_TRIM_INTERVAL = 60.0
MSG_BODY_INCOMPLETE = "Request body incomplete: the connection was closed"
MSG_BODY_TIMEOUT = "Request body not received within {seconds:g} s"
LINGERING_SECONDS = 2.0
"""How long the rest of a body answered early (413, 408) is read and dropped before closing."""
MAX_DEDUPE_VALUE = 512


class RoutingCache:
    """The compiled routing table of the provider's current snapshot, rebuilt when it changes."""

    def __init__(self, provider: ConfigProvider, settings: ReceiverSettings) -> None:
        self.provider = provider
        self.settings = settings
        self._table: RoutingTable | None = None

    def current(self) -> RoutingTable:
        snapshot = self.provider.current
        table = self._table
        if table is None or table.snapshot is not snapshot:
            table = build_routing(snapshot, self.settings)
            self._table = table
            log.info("routing rebuilt: config version %d, %d app(s), %d integration(s)",
                     snapshot.version, len(table.apps), len(table.integrations))  # fmt: skip
        return table

    def is_known(self, integration_id: str | None) -> bool:
        """Whether the last built table has this id (never builds: safe in error paths)."""
        table = self._table
        return table is not None and integration_id in table.integrations


SETTINGS_KEY = web.AppKey("settings", ReceiverSettings)
PROVIDER_KEY = web.AppKey("provider", ConfigProvider)
ROUTES_KEY = web.AppKey("routes", RoutingCache)
METRICS_KEY = web.AppKey("metrics", ReceiverMetrics)
REDIS_KEY: web.AppKey[RedisClient] = web.AppKey("redis")
ENQUEUER_KEY = web.AppKey("enqueuer", Enqueuer)
DNS_KEY = web.AppKey("dns", FcrdnsVerifier)
LIMITER_KEY = web.AppKey("limiter", RateLimiter)
GUARD_KEY = web.AppKey("connection-guard", ConnectionGuard)


def make_redis(settings: ReceiverSettings) -> RedisClient:
    """A client that fails fast: past its timeouts the receiver answers 503, it never hangs."""
    return connect_redis(
        settings.redis_url,
        Timeouts(socket=settings.redis_timeout, connect=min(settings.redis_timeout, 1.0)),
    )


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = make_redis(app[SETTINGS_KEY])
    app[REDIS_KEY] = client
    app[ENQUEUER_KEY] = Enqueuer(client, timeout=app[SETTINGS_KEY].redis_timeout * 2)
    app[LIMITER_KEY] = RateLimiter(client)
    yield
    await client.aclose()


async def _dns_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    app[DNS_KEY] = FcrdnsVerifier(make_resolver(settings.dns_servers, settings.dns_timeout))
    yield


async def _trim_logs_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep each application's log records within their count and age bounds.

    A supervised loop (retrieve_core.supervision): a round that failed for some application is
    logged once until a round succeeds, restarted with backoff, and shown in `/metrics`
    (`retrieve_receiver_loop_up{loop="log-trim"}`); it is not part of `/readyz`, since webhooks
    are still accepted meanwhile (the enqueue keeps the count bound on its own).
    """

    # A stop flag besides cancel(): redis-py can swallow a cancellation that lands mid-command.
    stop = asyncio.Event()

    async def trim_forever(beat: Beat) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOG_TRIM_INTERVAL)
            if stop.is_set():
                return
            failed: list[str] = []
            for route in app[ROUTES_KEY].current().apps:
                try:
                    store = LogStore(app[REDIS_KEY], route.keys)
                    await store.trim(route.log_max_records, route.log_max_age_seconds)
                except (RedisError, OSError) as exc:
                    failed.append(f"{route.label}: {exc}")
            if failed:  # the others were trimmed
                raise RedisError(f"could not trim the logs of {'; '.join(failed)}")
            beat()

    supervisor = Supervisor(app[METRICS_KEY].registry, "retrieve_receiver")
    supervisor.start("log-trim", trim_forever, required=False)
    yield
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(supervisor.stop(), 5)


# ---------------------------------------------------------------- log records


def _log_record(
    *,
    record_id: str,
    ts: float,
    source_ip: str,
    integration_id: str,
    http_status: int,
    status: LogStatus,
    error: str = "",
    body: bytes = b"",
    payload_format: str = "",
    payload_limit: int = 0,
) -> LogRecord:
    text, truncated = truncate_payload(body, payload_limit)
    return LogRecord(
        id=record_id,
        ts=ts,
        source_ip=source_ip,
        integration_id=integration_id,
        http_status=http_status,
        status=status,
        error=error,
        format=payload_format,
        payload=text,
        payload_truncated=truncated,
    )


async def _write_record_best_effort(
    webapp: web.Application,
    app: AppRoute,
    record: LogRecord,
    counter: str | None,
) -> None:
    """Store the log record of a request that is answered anyway: failures are only logged.

    The application's count bound holds at once (a flood of refused requests cannot grow the
    log past `maxRecords` until the next trim), and the counter is bumped in the same call.
    """
    redis = webapp[REDIS_KEY]
    bucket = app.keys.counters(record.integration_id, counter_bucket(record.ts))
    try:
        async with asyncio.timeout(webapp[SETTINGS_KEY].log_write_timeout):
            await add_bounded_record(
                redis,
                app.keys,
                record,
                max_age_seconds=app.log_max_age_seconds,
                max_records=app.log_max_records,
                counter=(bucket, counter, COUNTER_TTL_SECONDS) if counter is not None else None,
            )
    except Exception as exc:  # the answer is decided: nothing here may change it
        if not is_redis_failure(exc):
            log.exception("log record of a %d answer not stored", record.http_status)
            return
        log.warning("log record of a %d answer not stored: %s", record.http_status, exc)


# ---------------------------------------------------------------- the checks


async def _admits_by_domain(
    webapp: web.Application, app: AppRoute, sender: IPAddress | None
) -> bool:
    """Whether a sender the IP entries refused belongs to a whitelisted domain (FCrDNS)."""
    if sender is None or not app.whitelist.domains:
        return False
    admitted = await webapp[DNS_KEY].admits(sender, app.whitelist.domains)
    webapp[METRICS_KEY].dns_lookups.labels(result="admitted" if admitted else "refused").inc()
    return admitted


def _forwarded_for(headers: CIMultiDictProxy[str]) -> str | None:
    values = headers.getall(hdrs.X_FORWARDED_FOR, None)
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


async def _authorize(
    webapp: web.Application,
    incoming: Incoming,
    routing: RoutingTable,
    target: IntegrationRoute | None,
    integration_id: str,
) -> tuple[AppRoute, str]:
    """The application the request is for and its sender, or a 403/404 WebhookError.

    The sender is checked before anything is said about the integration: an unauthorized
    sender gets 403 whether or not the id exists.
    """
    peer = incoming.remote
    forwarded = _forwarded_for(incoming.headers)
    app = routing.single_app or routing.app_for_host(incoming.host)
    if app is not None:
        candidates: tuple[AppRoute, ...] = (app,)
    elif target is not None:
        # The id's own application first; then the others, so that a sender one of them
        # admits gets the same 404 for another application's id as for an unknown id (403
        # only when no application admits it): ids of other applications cannot be probed.
        candidates = (target.app, *(a for a in routing.apps if a is not target.app))
    else:
        candidates = routing.apps
    first_sender: IPAddress | None = None
    for candidate in candidates:
        known = candidate.admitted.get((peer, forwarded))
        if known is not None:
            return candidate, known
        sender = sender_ip(peer, forwarded, candidate.trusted_proxies)
        if first_sender is None:
            first_sender = sender
        if sender is not None and candidate.whitelist.admits_ip(sender):
            shown = str(sender)
            candidate.remember(peer, forwarded, shown)
            return candidate, shown
        if await _admits_by_domain(webapp, candidate, sender):  # cached by the DNS check
            return candidate, str(sender)
    shown = str(first_sender) if first_sender is not None else (peer or "unknown")
    raise WebhookError(
        403,
        MSG_NOT_AUTHORIZED.format(sender=shown),
        app=candidates[0] if candidates else None,
        integration_id=integration_id,
        source_ip=shown,
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed `limit` (never buffered past it).

    Raises OverflowError past `limit`, TimeoutError when it does not come within the settings'
    `body_timeout`.
    """
    if request.content.is_eof():  # all of it came with the head: no wait to bound
        return await _read_body(request, limit)
    body_timeout = request.app[SETTINGS_KEY].body_timeout
    async with asyncio.timeout(body_timeout or None):
        return await _read_body(request, limit)


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise OverflowError
    chunks: list[bytes] = []
    size = 0
    content = request.content
    while True:
        try:
            chunk = await content.readany()
        except RuntimeError:  # aiohttp's way of saying it when the loss came before the read
            if request.transport is None:
                raise ConnectionResetError("connection closed") from None
            raise
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise OverflowError
        chunks.append(chunk)


def _delivery_id(
    route: IntegrationRoute, headers: CIMultiDictProxy[str], payload: Any
) -> str | None:
    rule = route.dedupe
    if rule is None:
        return None
    value: Any = None
    if rule.header:
        value = headers.get(rule.header)
    if not value and rule.json_field:
        value = payload
        for part in rule.json_field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)[:MAX_DEDUPE_VALUE]


def _selected_headers(headers: CIMultiDictProxy[str], wanted: frozenset[str]) -> dict[str, str]:
    selected: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in wanted:
            selected[lower] = value
    return selected


# ---------------------------------------------------------------- the handler


BodyReader = Callable[[int], Awaitable[bytes]]
"""Reads a request's body within a limit: OverflowError past it, TimeoutError when too slow."""


MAX_ID_SHOWN: Final = 128
"""An id from a URL is echoed in the 404 and kept in its log record cut to this many characters
(a request line may be 8 KiB long; a configured id is 64 characters at most)."""


@dataclass(slots=True)
class Incoming:
    """One request for a webhook route, whichever HTTP path read it: aiohttp's, or the lean
    path of `retrieve_receiver.lean` for the plain requests that arrive whole."""

    integration_id: str
    xml_route: bool
    remote: str | None
    """The peer's address (before any X-Forwarded-For)."""
    host: str
    headers: CIMultiDictProxy[str]
    read_body: BodyReader
    path: str
    """For log lines only."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer: 200 with the success body, or the contract's JSON error."""

    status: int
    message: str = ""
    headers: dict[str, str] | None = None
    close: bool = False
    """Close the connection after the answer (a 408: that slow a sender gets no second try)."""


ACCEPTED = Answer(200)


async def handle_webhook(webapp: web.Application, incoming: Incoming) -> Answer:
    """The answer to a webhook request, whatever happens: refusals answered with the
    contract's JSON and their log record written, every answer counted and timed."""
    started = time.perf_counter()
    if len(incoming.integration_id) > MAX_ID_SHOWN:  # never a configured id (64 at most)
        incoming.integration_id = incoming.integration_id[: MAX_ID_SHOWN - 1] + "…"
    try:
        answer = await _receive(webapp, incoming)
    except WebhookError as exc:
        answer = Answer(exc.status, exc.message, exc.headers, close=exc.status == 408)
        if exc.status == 503:
            webapp[METRICS_KEY].enqueue_failures.inc()
        if exc.app is not None:
            await _log_refusal(webapp, exc)
    except web.HTTPException as exc:
        answer = _http_error(exc)
    except ConnectionResetError:
        # The sender closed the connection before its body was complete: nobody will read
        # an answer, and it is not our error (no traceback, not a 500 in the metrics).
        log.info("POST %s: connection closed before the body was complete", incoming.path)
        answer = Answer(400, MSG_BODY_INCOMPLETE)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on POST %s", incoming.path)
        answer = Answer(500, "Internal error")
    _observe(webapp, incoming.integration_id, answer.status, started)
    return answer


def _observe(
    webapp: web.Application, integration_id: str | None, status: int, started: float
) -> None:
    known = integration_id is not None and webapp[ROUTES_KEY].is_known(integration_id)
    label = integration_id if known and integration_id else UNKNOWN_INTEGRATION
    webapp[METRICS_KEY].observe(label, status, time.perf_counter() - started)


async def _receive(webapp: web.Application, incoming: Incoming) -> Answer:
    routing = webapp[ROUTES_KEY].current()
    integration_id = incoming.integration_id
    headers = incoming.headers
    target = routing.integrations.get(integration_id)
    app, source_ip = await _authorize(webapp, incoming, routing, target, integration_id)

    def refuse(status: int, message: str, body: bytes = b"", fmt: str = "") -> WebhookError:
        return WebhookError(status, message, app, integration_id, source_ip, body, fmt)

    if target is None or target.app is not app or routing.names_other_app(incoming.host):
        raise refuse(404, MSG_NOT_FOUND.format(id=integration_id))
    if not target.enabled:
        raise refuse(409, MSG_DISABLED.format(id=integration_id))
    if target.rate_limits:
        await _check_rate_limits(webapp, target, source_ip)
    try:
        coding = content_coding(headers)
    except UnsupportedCoding as exc:
        raise refuse(415, MSG_UNSUPPORTED_ENCODING.format(coding=exc.coding)) from None
    try:
        body = await incoming.read_body(app.max_body_bytes)
    except OverflowError:
        raise refuse(413, MSG_TOO_LARGE.format(limit=app.max_body_bytes)) from None
    except TimeoutError:
        seconds = webapp[SETTINGS_KEY].body_timeout
        raise refuse(408, MSG_BODY_TIMEOUT.format(seconds=seconds)) from None

    if target.verify_required:
        scheme = target.scheme
        if scheme is not None and is_woocommerce_ping(scheme, headers, body):
            now = time.time()
            record = _log_record(
                record_id=new_job_id(), ts=now, source_ip=source_ip, integration_id=target.id,
                http_status=200, status=LogStatus.IGNORED, error="WooCommerce webhook ping",
                body=body, payload_format="form", payload_limit=app.log_payload_bytes,
            )  # fmt: skip
            await _write_record_best_effort(webapp, app, record, None)
            return ACCEPTED
        if scheme is None or not verify(scheme, headers, body, time.time()):
            raise refuse(401, MSG_INVALID_SIGNATURE, body)

    xml_route = incoming.xml_route
    if coding is not None:  # signatures are over the bytes as sent: inflate only now
        try:
            body = decode_body(body, coding, app.max_body_bytes)
        except OverflowError:
            raise refuse(413, MSG_TOO_LARGE.format(limit=app.max_body_bytes)) from None
        except CodingMismatch as exc:
            template = MSG_INVALID_XML if xml_route else MSG_INVALID_JSON
            detail = f"Content-Encoding {coding}: {exc}"
            raise refuse(400, template.format(detail=detail), b"", "") from None

    try:
        fmt, payload, verbatim = parse_payload(xml_route, headers.get(hdrs.CONTENT_TYPE), body)
    except PayloadError as exc:
        raise refuse(400, exc.message, body, "xml" if xml_route else "json") from None

    job_id, now = new_job_id(), time.time()
    try:
        job_json = new_job_json(
            job_id=job_id,
            integration_id=target.id,
            application=app.config.name,
            namespace=app.config.namespace,
            received_at=now,
            source_ip=source_ip,
            format=fmt,
            headers=_selected_headers(headers, target.headers) if target.headers else {},
            payload=payload,
            payload_json=verbatim,
        )
    except (PydanticSerializationError, ValueError, RecursionError) as exc:
        template = MSG_INVALID_XML if fmt == "xml" else MSG_INVALID_JSON
        detail = "nested too deeply" if "recursion" in str(exc).lower() else "not encodable"
        raise refuse(400, template.format(detail=detail), body, fmt) from None

    delivery = Delivery(
        job_id=job_id,
        job_json=job_json,
        integration_id=target.id,
        received_at=now,
        source_ip=source_ip,
        format=fmt,
        body=body,
        payload_limit=app.log_payload_bytes,
        log_max_age_seconds=app.log_max_age_seconds,
        log_max_records=app.log_max_records,
        dedupe_id=_delivery_id(target, headers, payload),
        dedupe_ttl_seconds=target.dedupe.ttl_seconds if target.dedupe else 0,
        wait=app.wait,
    )
    try:
        await webapp[ENQUEUER_KEY].store(app.keys, delivery)
    except Exception as exc:
        if not is_redis_failure(exc):
            raise
        log.warning("job for integration %s not stored: %s", target.id, exc)
        raise refuse(503, MSG_QUEUE_UNAVAILABLE, body, fmt) from None
    return ACCEPTED


async def _check_rate_limits(
    webapp: web.Application, target: IntegrationRoute, source_ip: str
) -> None:
    """429 with `Retry-After` when a bucket is empty; 503 when Redis cannot say (fail closed)."""
    app = target.app
    try:
        async with asyncio.timeout(webapp[SETTINGS_KEY].redis_timeout * 2):
            wait_ms = await webapp[LIMITER_KEY].acquire(target.rate_limits)
    except Exception as exc:
        if not is_redis_failure(exc):
            raise
        log.warning("rate limit of integration %s not checked: %s", target.id, exc)
        raise WebhookError(503, MSG_QUEUE_UNAVAILABLE, app, target.id, source_ip) from None
    if wait_ms > 0:
        retry_after = str(retry_after_seconds(wait_ms))
        raise WebhookError(
            429, MSG_RATE_LIMITED, app, target.id, source_ip, headers={"Retry-After": retry_after}
        )


async def _log_refusal(webapp: web.Application, exc: WebhookError) -> None:
    assert exc.app is not None
    app = exc.app
    record = _log_record(
        record_id=new_job_id(), ts=time.time(), source_ip=exc.source_ip,
        integration_id=exc.integration_id, http_status=exc.status, status=LogStatus.REJECTED,
        error=exc.message, body=exc.payload, payload_format=exc.format,
        payload_limit=min(app.log_payload_bytes, webapp[SETTINGS_KEY].rejected_payload_bytes),
    )  # fmt: skip
    # Counters only for configured ids: senders must not create keys by inventing ids.
    routing = webapp[ROUTES_KEY].current()
    known = routing.integrations.get(exc.integration_id)
    counter = COUNTER_REJECTED if known is not None and known.app is app else None
    await _write_record_best_effort(webapp, app, record, counter)
    if known is not None and counter is not None and exc.status in (401, 403):
        await _note_unauthorized(webapp, app, known.config, exc.message)


async def _note_unauthorized(
    webapp: web.Application, app: AppRoute, integration: IntegrationConfig, error: str
) -> None:
    """A 401/403 for a configured integration, for `rejectedBurst` notifications (only when
    the application has one: otherwise nothing is counted)."""
    if not any(NotificationEvent.REJECTED_BURST in n.events for n in app.config.spec.notifications):
        return
    try:
        async with asyncio.timeout(webapp[SETTINGS_KEY].log_write_timeout):
            await note_unauthorized(
                webapp[REDIS_KEY],
                app.config,
                integration_id=integration.id,
                integration=integration.name,
                error=error,
            )
    except Exception as exc:  # the answer is decided: nothing here may change it
        if not is_redis_failure(exc):
            log.exception("a 401/403 answer not counted for notifications")
            return
        log.warning("a 401/403 answer not counted for notifications: %s", exc)


def _http_error(exc: web.HTTPException) -> Answer:
    if exc.status == 404:
        return Answer(404, "Not found")
    if exc.status == 413:
        return Answer(413, MSG_TOO_LARGE.format(limit=CLIENT_MAX_SIZE))
    return Answer(exc.status, exc.reason)


# ---------------------------------------------------------------- aiohttp's routes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def response_for(answer: Answer) -> web.StreamResponse:
    if answer.status == 200:
        return success()
    response = failure(answer.status, answer.message, answer.headers)
    if answer.close:
        response.force_close()
    return response


def webhook_route(*, xml_route: bool) -> Handler:
    """The aiohttp handler of a webhook route: `handle_webhook` on aiohttp's request.

    No middleware: with any, aiohttp wraps every request in two more coroutine layers, which
    took about a quarter of a bare request's CPU time. Every route of the app answers the
    contract's JSON itself (404 and 405 too), so no answer comes from aiohttp's own handling.
    """

    async def receive(request: web.Request) -> web.StreamResponse:
        guard = request.app[GUARD_KEY]
        guard.head_received(request.transport)  # the head is in: its deadline no longer runs
        incoming = Incoming(
            integration_id=request.match_info["id"],
            xml_route=xml_route,
            remote=request.remote,
            host=request.host,
            headers=request.headers,
            read_body=partial(read_body, request),
            path=request.path,
        )
        answer = await handle_webhook(request.app, incoming)
        response = response_for(answer)
        if answer.close:
            await _answer_and_linger(request, response)
        guard.answered(request.transport)
        return response

    return receive


async def _answer_and_linger(request: web.Request, response: web.StreamResponse) -> None:
    """Write a closing answer (408), end our side of the connection, then read and drop what
    the sender still sends until it closes or `LINGERING_SECONDS` pass.

    Closed at once with bytes unread, the connection would be reset, and a reset can take the
    answer with it before the sender reads it: a slow sender still sending its body would
    never learn why. (aiohttp's own lingering close is skipped for a forced close.)"""
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if transport.can_write_eof():
        transport.write_eof()  # the answer, then the end: the sender reads both
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGERING_SECONDS
    with contextlib.suppress(Exception):
        while (left := deadline - loop.time()) > 0:
            async with asyncio.timeout(left):
                if not await request.content.readany():
                    return


def _plain_route(make: Callable[[web.Request], Answer]) -> Handler:
    """A route that always answers the same kind of refusal (404, 405), counted and timed."""

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        guard = request.app[GUARD_KEY]
        guard.head_received(request.transport)
        answer = make(request)
        _observe(request.app, request.match_info.get("id"), answer.status, started)
        guard.answered(request.transport)
        return response_for(answer)

    return answer


def _method_not_allowed(request: web.Request) -> Answer:
    message = MSG_METHOD_NOT_ALLOWED.format(method=request.method)
    return Answer(405, message, {hdrs.ALLOW: hdrs.METH_POST})


def _not_found(request: web.Request) -> Answer:
    return Answer(404, "Not found")


# ---------------------------------------------------------------- the factory


def init_app(
    settings: ReceiverSettings,
    provider: ConfigProvider,
    *,
    metrics: ReceiverMetrics | None = None,
) -> web.Application:
    """The public webhook app. Share `metrics` with `init_admin_app` to expose them there."""
    # Bodies are read as sent, never inflated by aiohttp (see `content_coding`); idle
    # keep-alive connections and the rest of bodies answered early are bounded in time.
    handler_args = {
        "auto_decompress": False,
        "keepalive_timeout": settings.idle_timeout,
        "lingering_time": LINGERING_SECONDS,
    }
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, handler_args=handler_args)
    app[GUARD_KEY] = ConnectionGuard(settings.max_connections, settings.header_timeout)
    app[SETTINGS_KEY] = settings
    app[PROVIDER_KEY] = provider
    app[ROUTES_KEY] = RoutingCache(provider, settings)
    app[METRICS_KEY] = metrics if metrics is not None else ReceiverMetrics()
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_dns_ctx)
    app.cleanup_ctx.append(_trim_logs_ctx)
    not_allowed = _plain_route(_method_not_allowed)
    app.router.add_post("/integration/{id}", webhook_route(xml_route=False), name="integration")
    app.router.add_route("*", "/integration/{id}", not_allowed)
    app.router.add_post(
        "/integration/{id}/xml", webhook_route(xml_route=True), name="integration-xml"
    )
    app.router.add_route("*", "/integration/{id}/xml", not_allowed)
    app.router.add_route("*", "/{path:.*}", _plain_route(_not_found))
    return app
