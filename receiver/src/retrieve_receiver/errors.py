"""The contract's answers: `{"result": bool, "error": str}` and the error carrying one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

if TYPE_CHECKING:
    from .app import Answer
    from .routing import AppRoute

SUCCESS_BODY = b'{"result": true, "error": ""}'


class Success(web.StreamResponse):
    """The 200 answer, written in one piece from bytes prepared once per second.

    aiohttp's `Response` builds a header dict, serializes it and fills in `Date` for every
    answer: the receiver's CPU per webhook went from 137 to 115 us without it (wrk -c32,
    `bench/receiver_bench.py --baseline`). This one writes the bytes aiohttp's `Response`
    would (status line, `Content-Type`, `Content-Length`, `Date`, `Server`, and `Connection`
    where HTTP/1.x needs it; tested against it) with one `writer.write_eof`, which waits for a
    slow reader like any other answer. Not for apps with access logs (it reports no body
    length) or `on_response_prepare` signals (never sent): the webhook app has neither.
    Everything but the success answer is an aiohttp `Response`.
    """

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        keep_alive = request.keep_alive
        self._keep_alive = keep_alive  # what aiohttp's own answer would decide, read after it
        version = request.version
        head = _heads.get(version.major, version.minor, keep_alive)
        await request.writer.write_eof(head + SUCCESS_BODY)
        self._eof_sent = True

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to write: `prepare` wrote the whole answer."""


class _Heads:
    """The status line and headers of the 200 answer by request version and keep-alive (as
    aiohttp writes them: the request's version echoed, `Connection` only where that version's
    default is not what happens), made again when the second (the `Date` header) changes."""

    def __init__(self) -> None:
        self._second = 0
        self._heads: dict[tuple[int, int, bool], bytes] = {}

    def date(self) -> str:
        return formatdate(int(time.time()), usegmt=True)

    def get(self, major: int, minor: int, keep_alive: bool) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._heads.clear()  # at most the versions the HTTP parser admits, twice
            self._second = now
        head = self._heads.get((major, minor, keep_alive))
        if head is None:
            head = self._heads[major, minor, keep_alive] = self._make(major, minor, keep_alive, now)
        return head

    @staticmethod
    def _make(major: int, minor: int, keep_alive: bool, now: int) -> bytes:
        connection = ""
        if keep_alive and (major, minor) == (1, 0):
            connection = "Connection: keep-alive\r\n"
        elif not keep_alive and (major, minor) == (1, 1):
            connection = "Connection: close\r\n"
        return (
            f"HTTP/{major}.{minor} 200 OK\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(SUCCESS_BODY)}\r\n"
            f"Date: {formatdate(now, usegmt=True)}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n"
            f"{connection}\r\n"
        ).encode("ascii")


_heads = _Heads()


def answer_bytes(answer: Answer) -> bytes:
    """The whole answer as aiohttp would write it to an HTTP/1.1 keep-alive request (the lean
    path's only kind): the success bytes of `Success`, or those of `failure`'s `Response`
    (`Connection: close` when the answer closes the connection)."""
    if answer.status == 200:
        return _heads.get(1, 1, True) + SUCCESS_BODY
    body = json.dumps({"result": False, "error": answer.message}).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (answer.headers or {}).items())
    connection = "Connection: close\r\n" if answer.close else ""
    head = (
        f"HTTP/1.1 {answer.status} {_reason(answer.status)}\r\n"
        f"{extra}"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {_heads.date()}\r\n"
        f"Server: {SERVER_SOFTWARE}\r\n"
        f"{connection}\r\n"
    )
    return head.encode("latin-1") + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def success() -> web.StreamResponse:
    return Success()


def failure(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"result": False, "error": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@dataclass(eq=False)
class WebhookError(Exception):
    """A refused request. `app.handle_webhook` answers it and writes its log record."""

    status: int
    message: str
    app: AppRoute | None = None
    """The application the log record goes to (None: nobody to attribute it to)."""
    integration_id: str = ""
    source_ip: str = ""
    payload: bytes = b""
    format: str = ""
    headers: dict[str, str] | None = None
    """Extra answer headers (`Retry-After` of a 429)."""

    def __str__(self) -> str:
        return f"{self.status} {self.message}"
