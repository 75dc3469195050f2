"""`retrieve poll`'s core: pagination (pure), and runs against a real source and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis

from retrieve_cli.poll_cmd import dev_scheduler
from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.models import HttpSourceSpec, IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.provider import ConfigProvider
from retrieve_core.scheduling.source_poll import (
    Poller,
    PollError,
    find_integration,
    first_page_url,
    next_page_url,
    paginate,
)
from retrieve_core.scheduling.state import PollState, rfc3339
from tests.support.paged_source import PagedSource
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

ITEMS = [{"id": n, "name": f"item {n}"} for n in range(1, 26)]


def source(**fields: Any) -> HttpSourceSpec:
    return HttpSourceSpec.model_validate(
        {"url": "https://api.example/v1/orders?status=any", "idField": "id", **fields}
    )


class Pages:
    """A fake `fetch`: URL -> body, recording the URLs asked for."""

    def __init__(self, pages: dict[str, Any]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    async def __call__(self, url: str) -> Any:
        self.asked.append(url)
        return self.pages[url]


# ------------------------------------------------------------------------------- pure


@pytest.mark.unit
async def test_next_links_are_followed_relative_to_the_page_until_there_is_none() -> None:
    spec = source(items="data", pagination={"nextLink": "meta.next"})
    base = "https://api.example/v1/orders?status=any"
    fetch = Pages(
        {
            base: {"data": [1, 2], "meta": {"next": "/v1/orders?cursor=b"}},
            "https://api.example/v1/orders?cursor=b": {
                "data": [3],
                "meta": {"next": "https://api.example/v1/orders?cursor=c"},
            },
            "https://api.example/v1/orders?cursor=c": {"data": [4], "meta": {"next": None}},
        }
    )
    assert await paginate(fetch, spec, None) == ([1, 2, 3, 4], 3)


@pytest.mark.unit
async def test_page_numbers_count_up_from_start_page_until_an_empty_page() -> None:
    spec = source(items="orders", pagination={"pageParam": "p", "startPage": 0})
    url = "https://api.example/v1/orders?status=any&p={}"
    fetch = Pages(
        {
            url.format(0): {"orders": [{"id": 1}]},
            url.format(1): {"orders": [{"id": 2}]},
            url.format(2): {"orders": []},
        }
    )
    items, pages = await paginate(fetch, spec, None)
    assert (items, pages) == ([{"id": 1}, {"id": 2}], 3)


@pytest.mark.unit
async def test_more_pages_than_max_pages_fail_the_run() -> None:
    spec = source(items="data", pagination={"pageParam": "page", "maxPages": 2})
    fetch = Pages({first_page_url(spec, None): {"data": [1]}})
    fetch.pages[next_page_url(spec, first_page_url(spec, None), {}, 0, 1) or ""] = {"data": [2]}
    with pytest.raises(PollError, match=r"more than maxPages \(2\)"):
        await paginate(fetch, spec, None)


@pytest.mark.unit
async def test_a_next_link_back_to_a_page_already_read_fails_instead_of_looping() -> None:
    spec = source(items="data", pagination={"nextLink": "next"})
    base = "https://api.example/v1/orders?status=any"
    fetch = Pages({base: {"data": [1], "next": base}})
    with pytest.raises(PollError, match="already read"):
        await paginate(fetch, spec, None)


@pytest.mark.unit
def test_the_window_start_goes_in_since_param_as_rfc3339() -> None:
    spec = source(sinceParam="updated_at_min")
    assert first_page_url(spec, None) == "https://api.example/v1/orders?status=any"
    assert first_page_url(spec, 1767225600.0) == (
        "https://api.example/v1/orders?status=any&updated_at_min=2026-01-01T00%3A00%3A00Z"
    )


@pytest.mark.unit
async def test_without_pagination_one_page_is_read_and_items_must_be_a_list() -> None:
    spec = source(items="data")
    fetch = Pages({"https://api.example/v1/orders?status=any": {"data": {"id": 1}}})
    with pytest.raises(PollError, match="not a list"):
        await paginate(fetch, spec, None)


@pytest.mark.unit
def test_source_specs_refuse_bad_jmespath_and_ambiguous_pagination() -> None:
    with pytest.raises(ValidationError, match="not a JMESPath expression"):
        source(items="data[")
    with pytest.raises(ValidationError, match="either nextLink or pageParam"):
        source(pagination={"nextLink": "next", "pageParam": "page"})
    with pytest.raises(ValidationError, match="either nextLink or pageParam"):
        source(pagination={})


# ------------------------------------------------------------------------------- Redis


def _app(integration_spec: dict[str, Any]) -> ApplicationConfig:
    name = f"poll-{uuid.uuid4().hex[:8]}"
    spec = RetrieveApplicationSpec.model_validate(
        {"webhook": {"domain": "retrievetl.com"}, "allowedList": ["127.0.0.1"]}
    )
    integration = IntegrationConfig(
        id="POLL1",
        name="orders",
        spec=IntegrationSpec.model_validate({"application": name, **integration_spec}),
    )
    return ApplicationConfig(namespace="shop", name=name, spec=spec, integrations=(integration,))


def _schedule(url: str, **http: Any) -> dict[str, Any]:
    return {
        "schedule": {
            "cron": "*/5 * * * *",
            "source": {"http": {"url": url, "items": "data", "idField": "id", **http}},
        }
    }


@pytest.fixture
async def paged() -> AsyncIterator[PagedSource]:
    server = await PagedSource(list(ITEMS), page_size=10).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.redis
async def test_a_poll_enqueues_unknown_items_once_and_moves_the_window(
    redis_client: Redis, paged: PagedSource
) -> None:
    app = _app(_schedule(paged.url, pagination={"pageParam": "page"}, sinceParam="since"))
    integration = app.integrations[0]
    poller = Poller(redis_client, app, integration)
    # Two items already came by webhook (same dedupe key: the integration and the id).
    for known in ("3", "17"):
        await redis_client.set(app.keys.dedupe(integration.id, known), "webhook-job", ex=60)

    first = await poller.run(SecretStore())
    assert (first.seen, first.new, first.pages, first.error) == (25, 23, 4, "")
    assert await redis_client.xlen(app.keys.jobs) == 23
    assert "since" not in paged.queries[0]
    # An id the source still lists keeps its dedupe key alive for another full TTL.
    assert await redis_client.ttl(app.keys.dedupe(integration.id, "3")) > 86_000

    second = await poller.run(SecretStore())
    assert (second.seen, second.new) == (25, 0)
    assert await redis_client.xlen(app.keys.jobs) == 23
    assert paged.queries[4]["since"] == rfc3339(first.started_at)

    state = PollState.from_hash(await redis_client.hgetall(app.keys.poll_state(integration.id)))
    assert state == PollState(second.started_at, second.started_at, 25, 0, "")
    assert state.status_fields()["polledNew"] == 0


@pytest.mark.redis
async def test_a_failed_poll_records_the_error_and_keeps_the_window(
    redis_client: Redis, paged: PagedSource
) -> None:
    app = _app(_schedule(paged.url, pagination={"nextLink": "links.next"}))
    poller = Poller(redis_client, app, app.integrations[0])
    good = await poller.run(SecretStore())
    assert good.error == ""

    paged.status = 503
    bad = await poller.run(SecretStore())
    assert bad.error.endswith("HTTP 503")
    state = PollState.from_hash(await redis_client.hgetall(app.keys.poll_state("POLL1")))
    assert state.failing
    assert state.since == good.started_at
    assert state.last_run_at == bad.started_at


@pytest.mark.redis
async def test_headers_from_a_secret_authorize_the_source(
    redis_client: Redis, paged: PagedSource
) -> None:
    paged.required_headers = {"Authorization": "Bearer s3cret"}
    ref = {"name": "source-token", "key": "token"}
    app = _app(
        _schedule(
            paged.url,
            headersFrom=[{"name": "Authorization", "secretKeyRef": ref, "prefix": "Bearer "}],
        )
    )
    assert ("source-token", "token") in app.secret_refs()
    poller = Poller(redis_client, app, app.integrations[0])

    missing = await poller.run(SecretStore())
    assert "Secret shop/source-token key token not found" in missing.error

    secrets = SecretStore()
    secrets.put_secret("shop", "source-token", {"token": b"s3cret"})
    assert (await poller.run(secrets)).seen == 10  # one page: no pagination configured


@pytest.mark.redis
async def test_an_item_without_an_id_fails_the_run_before_anything_is_enqueued(
    redis_client: Redis, paged: PagedSource
) -> None:
    paged.items[4] = {"name": "no id"}
    app = _app(_schedule(paged.url))
    result = await Poller(redis_client, app, app.integrations[0]).run(SecretStore())
    assert result.error == "item 4 has no id at 'id'"
    assert await redis_client.xlen(app.keys.jobs) == 0


@pytest.mark.unit
def test_integrations_are_found_by_id_or_name() -> None:
    app = _app({})
    assert find_integration((app,), "POLL1")[1].name == "orders"
    assert find_integration((app,), "orders")[1].id == "POLL1"
    with pytest.raises(PollError, match="not found"):
        find_integration((app,), "nope")


@pytest.mark.redis
async def test_dev_mode_runs_a_scheduled_poll_once_in_a_matching_minute_only(
    redis_client: Redis, redis_server: RedisServer, paged: PagedSource
) -> None:
    app = _app(_schedule(paged.url, pagination={"nextLink": "links.next"}))
    provider = ConfigProvider()
    provider.update((app,), SecretStore())
    minute = [datetime.datetime(2026, 1, 1, 10, 4, 30)]  # */5 does not match 10:04
    reads = [0]  # the scheduler reads the clock at the start of each check

    def clock() -> datetime.datetime:
        reads[0] += 1
        return minute[0]

    async def checked(more: int) -> None:
        """Waits until `more` further checks have started (each after the previous ended)."""
        target = reads[0] + more
        for _ in range(1000):
            if reads[0] >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the scheduler made {reads[0]} checks, wanted {target}")

    task = asyncio.create_task(
        dev_scheduler(provider, redis_server.url, interval=0.05, clock=clock)
    )
    try:
        await checked(3)
        assert paged.queries == []
        minute[0] = datetime.datetime(2026, 1, 1, 10, 5, 10)
        for _ in range(100):
            if await redis_client.exists(app.keys.poll_state("POLL1")):
                break
            await asyncio.sleep(0.05)
        await checked(3)  # more checks within the same minute run nothing more
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(paged.queries) == 3  # one run: 25 items over 3 pages
    assert await redis_client.xlen(app.keys.jobs) == 25


class HostileSource:
    """A source that redirects, links to another server, answers without end, or sets a
    cookie; `elsewhere` is the other server (on another loopback address), recording what
    reaches it."""

    def __init__(self) -> None:
        self.port, self.elsewhere_port = free_port(), free_port()
        self.elsewhere_headers: list[dict[str, str]] = []
        self.cookies_sent_back: list[str | None] = []
        self.huge_sent = 0
        self._runners: list[web.AppRunner] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def elsewhere(self) -> str:
        return f"http://127.0.0.2:{self.elsewhere_port}/capture"

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self.elsewhere)

    async def _cross(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": 1}], "links": {"next": self.elsewhere}})

    async def _long_link(self, request: web.Request) -> web.Response:
        """A next-page link elsewhere, 3 MB long and full of terminal controls."""
        link = "https://evil.example/\r\x1b[31mFAKE LINE\x1b]0;pwned\x07" + "A" * 3_000_000
        return web.json_response({"data": [{"id": 1}], "links": {"next": link}})

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"data": ["')
        block = b"x" * (1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(256):  # 256 MiB unless the client stops reading
                await response.write(block)
                self.huge_sent += len(block)
        return response

    async def _cookie(self, request: web.Request) -> web.Response:
        """Every answer sets a session cookie; the first page links to a second one."""
        self.cookies_sent_back.append(request.headers.get("Cookie"))
        last = "page" in request.query
        body = {"data": [{"id": 2 if last else 1}], "links": {"next": None if last else "?page=2"}}
        response = web.json_response(body)
        response.headers["Set-Cookie"] = "session=tracked; Path=/; Max-Age=3600"
        return response

    async def _capture(self, request: web.Request) -> web.Response:
        self.elsewhere_headers.append(dict(request.headers))
        return web.json_response({"data": [{"id": 2}]})

    async def start(self) -> HostileSource:
        source = web.Application()
        source.router.add_get("/redirect", self._redirect)
        source.router.add_get("/cross", self._cross)
        source.router.add_get("/huge", self._huge)
        source.router.add_get("/cookie", self._cookie)
        source.router.add_get("/long-link", self._long_link)
        other = web.Application()
        other.router.add_get("/capture", self._capture)
        for app, host, port in ((source, "127.0.0.1", self.port),
                                (other, "127.0.0.2", self.elsewhere_port)):  # fmt: skip
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runners.append(runner)
        return self

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@pytest.fixture
async def hostile() -> AsyncIterator[HostileSource]:
    server = await HostileSource().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.redis
async def test_the_source_token_never_leaves_the_source_by_redirect_or_next_link(
    redis_client: Redis, hostile: HostileSource
) -> None:
    """Before: redirects were followed anywhere, with the headers (issue 12, defect 9)."""
    ref = {"name": "source-token", "key": "token"}
    token = [{"name": "X-Api-Key", "secretKeyRef": ref}]
    secrets = SecretStore()
    secrets.put_secret("shop", "source-token", {"token": b"s3cret-token"})

    redirected = _app(_schedule(f"{hostile.url}/redirect", headersFrom=token))
    result = await Poller(redis_client, redirected, redirected.integrations[0]).run(secrets)
    assert result.error == f"GET {hostile.url}/redirect: HTTP 302, redirects are not followed"

    linked = _app(_schedule(f"{hostile.url}/cross", headersFrom=token,
                            pagination={"nextLink": "links.next"}))  # fmt: skip
    result = await Poller(redis_client, linked, linked.integrations[0]).run(secrets)
    assert result.error == (
        f"the next page {hostile.elsewhere} is not on the source's origin "
        f"http://127.0.0.1:{hostile.port}: not followed"
    )
    assert hostile.elsewhere_headers == []
    assert await redis_client.xlen(linked.keys.jobs) == 0


@pytest.mark.redis
async def test_a_source_answer_is_read_up_to_a_bound(
    redis_client: Redis, hostile: HostileSource
) -> None:
    app = _app(_schedule(f"{hostile.url}/huge"))
    result = await Poller(redis_client, app, app.integrations[0]).run(SecretStore())
    assert result.error == (
        f"GET {hostile.url}/huge: the answer is larger than {16 * 1024 * 1024} bytes"
    )
    assert hostile.huge_sent < 256 * (1 << 20)  # the poller stopped reading


@pytest.mark.redis
async def test_a_cookie_the_source_sets_is_never_sent_back(
    redis_client: Redis, hostile: HostileSource
) -> None:
    """SECURITY.md: `retrieve poll` fetches a source "and no cookie is kept".

    The source is named `localhost`, not by its address: a cookie jar that kept cookies would
    keep this one (aiohttp's default jar ignores those of IP addresses), and send it with the
    next page of the run and with the next run.
    """
    app = _app(_schedule(f"http://localhost:{hostile.port}/cookie",
                         pagination={"nextLink": "links.next"}))  # fmt: skip
    poller = Poller(redis_client, app, app.integrations[0])
    for _ in range(2):
        result = await poller.run(SecretStore())
        assert (result.error, result.pages, result.seen) == ("", 2, 2)
    assert hostile.cookies_sent_back == [None] * 4


@pytest.mark.redis
async def test_a_failed_runs_error_is_one_bounded_line_wherever_it_is_kept(
    redis_client: Redis, hostile: HostileSource
) -> None:
    """The source chose part of a failed run's error (here a 3 MB next-page link full of
    terminal controls): its state in Redis and what the operator writes of it into the
    Integration's status (`lastPollError`; the PollFailing condition and the pollFailed
    notification cut it again) keep one line of at most 1,000 characters, controls shown as
    escapes. Before, all 3 MB went into the status patch."""
    app = _app(_schedule(f"{hostile.url}/long-link", pagination={"nextLink": "links.next"}))
    integration = app.integrations[0]
    result = await Poller(redis_client, app, integration).run(SecretStore())

    assert "not on the source's origin" in result.error
    state = await Poller(redis_client, app, integration).state()
    for kept in (result.error, state.error, state.status_fields()["lastPollError"]):
        assert 0 < len(kept) <= 1000
        assert kept.isprintable(), kept[:200]
        assert "\\x1b[31mFAKE LINE" in kept


@pytest.mark.redis
async def test_an_item_with_a_lone_surrogate_fails_the_run_with_a_clear_error(
    redis_client: Redis,
) -> None:
    """A source's JSON may escape half of a surrogate pair, which UTF-8 cannot carry (the
    receiver answers such a webhook 400). Before, it raised out of the run, with no state
    saved and no notification; now the run fails saying why, and enqueues nothing of the page."""
    source = PagedSource([{"id": 2}, {"id": "half \ud83d"}], page_size=10)
    await source.start()
    try:
        app = _app(_schedule(source.url))
        result = await Poller(redis_client, app, app.integrations[0]).run(SecretStore())
    finally:
        await source.stop()
    assert result.error == (
        "item 1 holds text UTF-8 cannot carry (half of a surrogate pair, escaped in the "
        "source's JSON)"
    )
    state = await Poller(redis_client, app, app.integrations[0]).state()
    assert state.error == result.error
    assert await redis_client.xlen(app.keys.jobs) == 0
