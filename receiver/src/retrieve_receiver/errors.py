"""The contract's answers: `{"result": bool, "error": str}` and the error carrying one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .routing import AppRoute

SUCCESS_BODY = b'{"result": true, "error": ""}'


class Success(web.StreamResponse):
    """The 200 answer, written in one piece from bytes prepared once per second.

    aiohttp's `Response` builds a header dict, serializes it and fills in `Date` for every
    answer: the receiver's CPU per webhook went from 137 to 115 us without it (wrk -c32,
    `bench/receiver_bench.py --baseline`). This one is the same bytes on the wire
    (`Content-Type: application/json; charset=utf-8`, `Content-Length`, `Date`, and
    `Connection` where HTTP/1.x needs it) written with one `writer.write_eof`, which waits for
    a slow reader like any other answer. Everything but the success answer is an aiohttp
    `Response`.
    """

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        keep_alive = request.keep_alive
        self._keep_alive = keep_alive  # what aiohttp's own answer would decide, read after it
        head = _heads.get(request.version.minor == 0, keep_alive)
        await request.writer.write_eof(head + SUCCESS_BODY)
        self._eof_sent = True

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing left to write: `prepare` wrote the whole answer."""


class _Heads:
    """The status line and headers of the 200 answer, by HTTP version and keep-alive, made
    again when the second (the `Date` header) changes."""

    def __init__(self) -> None:
        self._second = 0
        self._heads: dict[tuple[bool, bool], bytes] = {}

    def get(self, http10: bool, keep_alive: bool) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._heads.clear()
            self._second = now
        head = self._heads.get((http10, keep_alive))
        if head is None:
            head = self._heads[http10, keep_alive] = self._make(http10, keep_alive, now)
        return head

    @staticmethod
    def _make(http10: bool, keep_alive: bool, now: int) -> bytes:
        if http10:
            connection = "Connection: keep-alive\r\n" if keep_alive else ""
        else:
            connection = "" if keep_alive else "Connection: close\r\n"
        return (
            f"HTTP/1.{0 if http10 else 1} 200 OK\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(SUCCESS_BODY)}\r\n"
            f"Date: {formatdate(now, usegmt=True)}\r\n"
            f"{connection}\r\n"
        ).encode("ascii")


_heads = _Heads()


def success() -> web.StreamResponse:
    return Success()


def failure(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"result": False, "error": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@dataclass(eq=False)
class WebhookError(Exception):
    """A refused request. `app.answered` answers it and writes its log record."""

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
