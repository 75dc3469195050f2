"""`errors.Success` writes the bytes aiohttp's own `Response` writes for the same answer, for
every request version and keep-alive choice: two routes of one in-process aiohttp server, the
old answer and the new one, compared over raw sockets (`Date` may differ by a second)."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from retrieve_receiver.app import Answer, response_for
from retrieve_receiver.errors import SUCCESS_BODY, answer_bytes, success

pytestmark = pytest.mark.unit

DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


async def aiohttp_answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(body=SUCCESS_BODY, content_type="application/json")


async def our_answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    return success()


async def raw_exchange(port: int, head: bytes, requests: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head * requests)
        raw = b""
        async with asyncio.timeout(10):
            while raw.count(SUCCESS_BODY) < requests and (chunk := await reader.read(65536)):
                raw += chunk
        return DATE.sub(b"\r\nDate: -\r\n", raw)
    finally:
        writer.close()


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("connection", [None, "keep-alive", "close"])
async def test_the_bytes_are_those_of_aiohttps_own_response(
    aiohttp_server: AiohttpServer, version: str, connection: str | None
) -> None:
    app = web.Application()
    app.router.add_post("/aiohttp", aiohttp_answer)
    app.router.add_post("/ours", our_answer)
    server = await aiohttp_server(app)
    assert server.port is not None
    pipelined = 1 if connection == "close" or (version == "1.0" and connection is None) else 3

    def head(path: str) -> bytes:
        lines = [f"POST {path} HTTP/{version}", "Host: x", "Content-Length: 2"]
        if connection is not None:
            lines.append(f"Connection: {connection}")
        return ("\r\n".join(lines) + "\r\n\r\n{}").encode()

    theirs = await raw_exchange(server.port, head("/aiohttp"), pipelined)
    ours = await raw_exchange(server.port, head("/ours"), pipelined)

    assert theirs.count(b"HTTP/") == pipelined
    assert ours == theirs


LEAN_ANSWERS = {
    "200": Answer(200),
    "400": Answer(400, 'Invalid JSON: Expecting value at "x"'),
    "404": Answer(404, "Integration nope not found"),
    "405 with Allow": Answer(405, "Method GET not allowed", {"Allow": "POST"}),
    "408 closing": Answer(408, "Request body not received within 1 s", close=True),
    "413": Answer(413, "Request body too large (limit 1048576 bytes)"),
    "429 with Retry-After": Answer(429, "Rate limited", {"Retry-After": "3"}),
    "500": Answer(500, "Internal error"),
    "503": Answer(503, "Queue unavailable, retry later"),
    "non-ASCII message": Answer(400, "Integration café ✓ not found"),
}


async def one_answer(port: int, request: bytes) -> bytes:
    """The answer to one HTTP/1.1 keep-alive request: its head, then Content-Length bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head)[1])  # type: ignore[index]
            body = await reader.readexactly(length)
        return DATE.sub(b"\r\nDate: -\r\n", head + body)
    finally:
        writer.close()


@pytest.mark.parametrize("name", LEAN_ANSWERS)
async def test_the_lean_paths_answers_are_the_bytes_aiohttp_writes(
    aiohttp_server: AiohttpServer, name: str
) -> None:
    """`answer_bytes` (the lean HTTP path's answers) against aiohttp writing `response_for` of
    the same answer (the aiohttp path's), to an HTTP/1.1 keep-alive request."""
    answer = LEAN_ANSWERS[name]

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return response_for(answer)

    app = web.Application()
    app.router.add_post("/x", handler)
    server = await aiohttp_server(app)
    assert server.port is not None
    request = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    theirs = await one_answer(server.port, request)
    assert DATE.sub(b"\r\nDate: -\r\n", answer_bytes(answer)) == theirs
