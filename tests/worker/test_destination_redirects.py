"""SECURITY.md: destinations are called with the Integration's URL only, "redirects are not
followed": a 3xx is the destination's answer, and its `Location` is never requested."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from retrieve_worker.httpclient import DestinationClient
from tests.support.ports import free_port

pytestmark = pytest.mark.unit


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[str, list[str]]]:
    """A destination answering every POST with a redirect to a path that records its hits."""
    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere", headers={"X-Note": "moved"})

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.method)
        return web.json_response({"stolen": True})

    app = web.Application()
    app.router.add_post("/hook", moved)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def test_a_destinations_redirect_is_its_answer_and_is_not_followed(
    redirecting: tuple[str, list[str]],
) -> None:
    base, hits = redirecting
    client = DestinationClient(user_agent="retrieve-test")
    try:
        answer = await client.request(
            "POST", f"{base}/hook", {"Authorization": "Bearer t"}, b'{"a": 1}', 5
        )
    finally:
        await client.close()
    assert answer.status == 307
    assert hits == []
