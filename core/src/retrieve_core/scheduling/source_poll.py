"""`retrieve poll`: fetch a scheduled integration's source and enqueue the items webhooks missed.

Each item becomes a job of the integration through the receiver's own enqueue script (same
stream, same log records, same dedupe keys), with the dedupe id taken from `idField`. A webhook
stores its delivery id under the same key when `spec.dedupe` (or a preset) names where it is:
with `dedupe: {jsonField: id}` and `idField: id`, the same item seen by both is processed once,
whichever comes first. Items already known are counted as seen, not new.

The time window: the source is asked for items since the start of the last successful run
(`sinceParam`, RFC 3339); a failed run does not move it, so its window is asked for again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
import jmespath

from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.enqueue import Delivery, Enqueuer, Outcome
from retrieve_core.job import Job, new_job_id
from retrieve_core.models import HttpSourceSpec, NotificationEvent
from retrieve_core.notifications import note_event
from retrieve_core.redisclient import RedisClient
from retrieve_core.scheduling.state import PollState, rfc3339
from retrieve_core.text import safe_text, utf8_text

log = logging.getLogger(__name__)

POLL_SOURCE_IP: Final = "poll"
"""The log records and jobs of polled items say where they came from in `source_ip`."""
DEFAULT_DEDUPE_TTL: Final = 86_400
MAX_DEDUPE_VALUE: Final = 512  # as the receiver truncates a delivery id
MAX_PAGE_BYTES: Final = 16 * 1024 * 1024
"""Of a source's answer, at most this much is read (decompressed): past it the run fails."""
MAX_ERROR_CHARS: Final = 1000
"""A failed run's error, as its state and the Integration's status keep it."""
MAX_URL_CHARS: Final = 300
"""A URL quoted in an error (the source chooses its next-page links)."""

Fetch = Callable[[str], Awaitable[Any]]


class PollError(Exception):
    """The run failed (source unreachable, bad answer, misconfiguration); the message says why."""


@dataclass(frozen=True, slots=True)
class PollResult:
    started_at: float
    seen: int
    new: int
    pages: int
    error: str = ""


# ------------------------------------------------------------------------------- pagination


def with_params(url: str, params: dict[str, str]) -> str:
    """`url` with `params` set in its query (replacing those of the same name)."""
    if not params:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def first_page_url(source: HttpSourceSpec, since: float | None) -> str:
    params: dict[str, str] = {}
    if source.since_param and since is not None:
        params[source.since_param] = rfc3339(since)
    if source.pagination and source.pagination.page_param:
        params[source.pagination.page_param] = str(source.pagination.start_page)
    return with_params(source.url, params)


def select_items(source: HttpSourceSpec, body: Any) -> list[Any]:
    found = jmespath.search(source.items, body)
    if found is None:
        return []
    if not isinstance(found, list):
        raise PollError(f"items {source.items!r} selected a {type(found).__name__}, not a list")
    return found


def next_page_url(
    source: HttpSourceSpec, current_url: str, body: Any, page_index: int, item_count: int
) -> str | None:
    """The URL of the page after `page_index` (0-based), None when this was the last one."""
    pagination = source.pagination
    if pagination is None:
        return None
    if pagination.next_link:
        link = jmespath.search(pagination.next_link, body)
        if not isinstance(link, str) or not link:
            return None
        # A relative link is relative to the page; a link elsewhere is refused: the source's
        # headers (often a token from a Secret) must never reach another server.
        url = urljoin(current_url, link)
        if _origin(url) != _origin(source.url):
            scheme, host, port = _origin(source.url)
            raise PollError(
                f"the next page {_safe(url)} is not on the source's origin "
                f"{scheme}://{host}:{port}: not followed"
            )
        return url
    if item_count == 0:  # page numbers: an empty page is the end
        return None
    page = pagination.start_page + page_index + 1
    return with_params(current_url, {str(pagination.page_param): str(page)})


async def paginate(
    fetch: Fetch, source: HttpSourceSpec, since: float | None
) -> tuple[list[Any], int]:
    """Every item of every page (and the number of pages). Reaching `maxPages` with pages
    left is an error: the window was not read completely, so `since` must not move on."""
    max_pages = source.pagination.max_pages if source.pagination else 1
    url: str | None = first_page_url(source, since)
    items: list[Any] = []
    pages = 0
    seen_urls: set[str] = set()
    while url is not None:
        if pages >= max_pages:
            raise PollError(f"more than maxPages ({max_pages}) pages; next was {_safe(url)}")
        if url in seen_urls:
            raise PollError(f"the source links back to a page already read: {_safe(url)}")
        seen_urls.add(url)
        body = await fetch(url)
        page_items = select_items(source, body)
        items.extend(page_items)
        url = next_page_url(source, url, body, pages, len(page_items))
        pages += 1
    return items, pages


# ------------------------------------------------------------------------------- items


def dedupe_value(value: Any) -> str | None:
    """An item id as the dedupe key, the way the receiver reads a delivery id from JSON."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)[:MAX_DEDUPE_VALUE]


def source_headers(source: HttpSourceSpec, namespace: str, secrets: SecretStore) -> dict[str, str]:
    headers = {"Accept": "application/json", **source.headers}
    for header in source.headers_from:
        value = secrets.get(namespace, header.secret_key_ref)
        if value is None:
            ref = header.secret_key_ref
            raise PollError(f"Secret {namespace}/{ref.name} key {ref.key} not found")
        headers[header.name] = header.prefix + value.decode()
    return headers


def new_source_session() -> aiohttp.ClientSession:
    """The session of one run: no cookies kept, no proxy from the environment."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


def http_fetcher(
    session: aiohttp.ClientSession, source: HttpSourceSpec, headers: dict[str, str]
) -> Fetch:
    """GETs a page as destinations are called: redirects are not followed (the source's
    headers stay with its URL), and at most `MAX_PAGE_BYTES` of an answer are read."""
    timeout = aiohttp.ClientTimeout(total=source.timeout_seconds)

    async def fetch(url: str) -> Any:
        where = f"GET {_safe(url)}"
        try:
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400:
                    raise PollError(f"{where}: HTTP {response.status}, redirects are not followed")
                if response.status >= 400:
                    raise PollError(f"{where}: HTTP {response.status}")
                body = await _read_bounded(response, where)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PollError(f"{where}: {exc.__class__.__name__}: {exc}") from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise PollError(f"{where}: the answer is not JSON: {exc}") from exc

    return fetch


async def _read_bounded(response: aiohttp.ClientResponse, where: str) -> bytes:
    too_large = PollError(f"{where}: the answer is larger than {MAX_PAGE_BYTES} bytes")
    if response.content_length is not None and response.content_length > MAX_PAGE_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > MAX_PAGE_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), parts.port or default


def _safe(url: str) -> str:
    """A URL for messages: no user:password part, at most `MAX_URL_CHARS` characters."""
    parts = urlsplit(url)
    shown = urlunsplit(parts._replace(netloc=parts.hostname or "")) if parts.password else url
    return shown if len(shown) <= MAX_URL_CHARS else shown[: MAX_URL_CHARS - 1] + "…"


def error_text(text: str) -> str:
    """A run's error as its state, status and notifications keep it: one line (controls shown
    as escapes: it reaches `kubectl describe` and logs), at most `MAX_ERROR_CHARS`. The source
    chose part of it (a next-page link, an exception's text)."""
    shown = safe_text(utf8_text(text[:MAX_ERROR_CHARS]))
    return shown if len(shown) <= MAX_ERROR_CHARS else shown[: MAX_ERROR_CHARS - 1] + "…"


class Poller:
    """One run for one integration of one application."""

    def __init__(
        self, redis: RedisClient, app: ApplicationConfig, integration: IntegrationConfig
    ) -> None:
        if integration.spec.schedule is None:
            raise PollError(f"integration {integration.name} has no spec.schedule")
        self.redis = redis
        self.app = app
        self.integration = integration
        self.source = integration.spec.schedule.source.http
        dedupe = integration.spec.dedupe
        self.dedupe_ttl = dedupe.ttl_seconds if dedupe is not None else DEFAULT_DEDUPE_TTL
        self.keys = app.keys
        self._enqueuer = Enqueuer(redis)

    async def state(self) -> PollState:
        raw = await self.redis.hgetall(self.keys.poll_state(self.integration.id))
        return PollState.from_hash(raw)

    async def run(self, secrets: SecretStore, fetch: Fetch | None = None) -> PollResult:
        """Poll once and record the outcome; never raises for the source's failures."""
        started = time.time()
        previous = await self.state()
        try:
            if fetch is None:
                headers = source_headers(self.source, self.app.namespace, secrets)
                async with new_source_session() as session:
                    items, pages = await paginate(
                        http_fetcher(session, self.source, headers), self.source, previous.since
                    )
            else:
                items, pages = await paginate(fetch, self.source, previous.since)
            new = await self._enqueue_all(items, started)
            result = PollResult(started, len(items), new, pages)
        except PollError as exc:
            result = PollResult(started, 0, 0, 0, error_text(str(exc)))
        since = previous.since if result.error else started
        state = PollState(since, started, result.seen, result.new, result.error)
        key = self.keys.poll_state(self.integration.id)
        await self.redis.hset(key, mapping=state.to_hash())  # type: ignore[arg-type]
        if result.error:  # a `pollFailed` notification (sent by a worker)
            await note_event(
                self.redis,
                self.app,
                NotificationEvent.POLL_FAILED,
                integration_id=self.integration.id,
                integration=self.integration.name,
                error=result.error,
                now=started,
            )
        return result

    async def _enqueue_all(self, items: list[Any], now: float) -> int:
        ids: list[str] = []
        bodies: list[bytes] = []
        for index, item in enumerate(items):
            value = dedupe_value(jmespath.search(self.source.id_field, item))
            if value is None:
                raise PollError(f"item {index} has no id at {self.source.id_field!r}")
            ids.append(value)
            try:
                bodies.append(json.dumps(item, ensure_ascii=False).encode())
            except UnicodeEncodeError:  # the receiver answers such a JSON body 400 likewise
                raise PollError(
                    f"item {index} holds text UTF-8 cannot carry (half of a surrogate pair, "
                    "escaped in the source's JSON)"
                ) from None
        # Known ids are skipped before the script, so a poll over old items does not write a
        # `duplicate` log record for each; the script still decides atomically for the rest
        # (a webhook may arrive in between). EXPIRE answers whether the key exists and renews
        # it: an item the source still lists is not enqueued again once the TTL has passed.
        async with self.redis.pipeline(transaction=False) as pipe:
            for value in ids:
                pipe.expire(self.keys.dedupe(self.integration.id, value), self.dedupe_ttl)
            known = await pipe.execute()
        fresh = [
            (item, body, value)
            for item, body, value, k in zip(items, bodies, ids, known, strict=True)
            if not k
        ]
        outcomes = await asyncio.gather(
            *(self._store(item, body, value, now) for item, body, value in fresh)
        )
        return sum(1 for outcome in outcomes if outcome is Outcome.QUEUED)

    async def _store(self, item: Any, body: bytes, dedupe_id: str, now: float) -> Outcome:
        job = Job(
            id=new_job_id(),
            integration_id=self.integration.id,
            application=self.app.name,
            namespace=self.app.namespace,
            received_at=now,
            source_ip=POLL_SOURCE_IP,
            format="json",
            payload=item,
        )
        logs = self.app.spec.webhook_logs
        delivery = Delivery(
            job_id=job.id,
            job_json=job.model_dump_json().encode(),
            integration_id=self.integration.id,
            received_at=now,
            source_ip=POLL_SOURCE_IP,
            format="json",
            body=body,
            payload_limit=logs.payload_bytes,
            log_max_age_seconds=logs.max_age_seconds,
            log_max_records=logs.max_records,
            dedupe_id=dedupe_id,
            dedupe_ttl_seconds=self.dedupe_ttl,
        )
        return await self._enqueuer.store(self.keys, delivery)


def find_integration(
    apps: tuple[ApplicationConfig, ...], wanted: str
) -> tuple[ApplicationConfig, IntegrationConfig]:
    """By integration id or Integration name; a name shared by two apps is ambiguous."""
    matches = [
        (app, integration)
        for app in apps
        for integration in app.integrations
        if wanted in (integration.id, integration.name)
    ]
    if not matches:
        raise PollError(f"integration {wanted!r} not found")
    if len(matches) > 1:
        names = ", ".join(f"{a.namespace}/{a.name}" for a, _ in matches)
        raise PollError(f"integration {wanted!r} is in several applications ({names}); use its id")
    return matches[0]
