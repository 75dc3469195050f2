"""The worker's HTTP/1.1 client for destinations: keep-alive connections, status and excerpt.

A worker sends one small request per record and needs only the answer's status and the start
of its body. aiohttp's client spent about 270 µs of CPU per request on machinery destinations
never use (cookie jar, redirects, proxies, tracing, multipart, content decoding), half of a
worker's time per job. This client does only what a destination needs: POST/PUT/PATCH a body
over pooled keep-alive connections (TLS through the event loop, verified against the system's
CAs), parse the answer with httptools (llhttp, the parser of Node.js), keep its first
`read_limit` bytes. Everything else an answer may do is handled conservatively: interim 1xx
answers are skipped, an answer that ends at EOF ends at EOF, an answer larger than `drain_limit`
or without keep-alive closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple, cast

import httptools
from yarl import URL

READ_LIMIT: Final = 64 * 1024
DRAIN_LIMIT: Final = 1024 * 1024
IDLE_SECONDS: Final = 15.0
MAX_IDLE_PER_ORIGIN: Final = 256
MAX_CONNECTIONS: Final = 256
"""Requests in flight at once, over all destinations (each holds one connection)."""
_FORBIDDEN_IN_HEADERS: Final = frozenset("\r\n\0")
_OWN_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "user-agent"}
)
"""Set by the client from the URL and the body; the same names in a destination's headers are
left out rather than sent twice."""


class HttpError(Exception):
    """No usable HTTP answer: the connection failed, closed early, or the answer is not HTTP."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    """The first `read_limit` bytes of the answer's body."""


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class _Target:
    origin: _Origin
    head: bytes
    """Everything of the request line and headers that does not depend on the request."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one exchange at a time."""

    def __init__(self, read_limit: int, drain_limit: int) -> None:
        self._read_limit = read_limit
        self._drain_limit = drain_limit
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._answered = False  # a byte of the current exchange's answer arrived
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish_error(HttpError(f"invalid HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._status >= 200:
            # An answer without Content-Length or chunking ends at EOF; a cut one still told
            # its status, which is all a destination's outcome depends on.
            self._finish(keep=False)
        elif self._answered:
            self._finish_error(HttpError("connection closed in the middle of the answer"))
        else:
            self._finish_error(_NoAnswer("connection closed before any answer"))

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._size < self._read_limit:
            self._chunks.append(body[: self._read_limit - self._size])
        self._size += len(body)
        if self._size > self._drain_limit:  # not worth reading to keep the connection
            self._finish(keep=False)
            self.close()

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue, 103 Early Hints)
            self._status, self._chunks, self._size = 0, [], 0
            return
        self._finish(keep=self._parser.should_keep_alive())

    # -- exchanges

    async def exchange(self, request: bytes) -> Answer:
        if self.closed or self._transport is None:
            raise _NoAnswer("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._status, self._chunks, self._size, self._answered = 0, [], 0, False
        self._transport.write(request)
        return await self._waiter

    def _finish(self, *, keep: bool) -> None:
        waiter = self._waiter
        if not keep:
            self.closed = True
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, b"".join(self._chunks)))
        self._waiter = None

    def _finish_error(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class _NoAnswer(HttpError):
    """Closed before a byte of the answer: on a reused connection, the request may be resent."""


class DestinationClient:
    """Pooled keep-alive connections per origin; one request at a time per connection, at
    most `max_connections` requests in flight (a request waits for a slot within its timeout).
    """

    def __init__(
        self,
        *,
        user_agent: str,
        read_limit: int = READ_LIMIT,
        drain_limit: int = DRAIN_LIMIT,
        ssl_context: ssl.SSLContext | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._user_agent = user_agent
        self._read_limit = read_limit
        self._drain_limit = max(drain_limit, read_limit)
        self._ssl = ssl_context
        self._idle_seconds = idle_seconds
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False
        self._busy = asyncio.Semaphore(max_connections)

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
    ) -> Answer:
        """Send one request and read its answer within `timeout` seconds (`TimeoutError`).

        Raises `HttpError` (or `OSError`, `ssl.SSLError`) when no answer came. A request
        sent on a reused connection that the server had closed meanwhile is sent once more
        on a new connection (nothing of an answer was received, the usual keep-alive race).
        """
        if self._closed:
            raise HttpError("the client is closed")
        target = self._target(url)
        data = b"".join((
            method.encode("ascii"), target.head, _encode_headers(headers),
            b"Content-Length: %d\r\n\r\n" % len(body), body,
        ))  # fmt: skip
        async with asyncio.timeout(timeout), self._busy:
            connection, reused = await self._acquire(target.origin)
            try:
                return await self._exchange(target.origin, connection, data)
            except _NoAnswer:
                if not reused:
                    raise
            # The server had closed that idle connection meanwhile (the keep-alive race):
            # nothing of an answer came, so the request goes once more, on a new connection.
            connection, _ = await self._acquire(target.origin, fresh=True)
            return await self._exchange(target.origin, connection, data)

    async def _exchange(self, origin: _Origin, connection: _Connection, data: bytes) -> Answer:
        try:
            answer = await connection.exchange(data)
        except BaseException:
            connection.close()  # failed or cancelled mid-exchange: out of step for good
            raise
        self._release(origin, connection)
        return answer

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) > 10_000:  # destinations come and go with the config
                self._targets.clear()
            target = self._targets[url] = _parse_target(url, self._user_agent)
        return target

    async def _acquire(self, origin: _Origin, fresh: bool = False) -> tuple[_Connection, bool]:
        idle = None if fresh else self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.closed and now - connection.idle_since < self._idle_seconds:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        tls = origin.scheme == "https"
        context = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()  # the system's CAs, verified
            context = self._ssl
        _, connection = await loop.create_connection(
            lambda: _Connection(self._read_limit, self._drain_limit),
            origin.host,
            origin.port,
            ssl=context,
            server_hostname=origin.host if tls else None,
        )
        return connection, False

    def _release(self, origin: _Origin, connection: _Connection) -> None:
        if connection.closed or self._closed:
            return
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)


def _parse_target(url: str, user_agent: str) -> _Target:
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise HttpError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise HttpError(f"not an http(s) URL: {url}")
    host = parsed.raw_host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parsed.explicit_port is not None and not parsed.is_default_port():
        host_header += f":{parsed.explicit_port}"
    path = parsed.raw_path_qs or "/"
    lines = [f" {path} HTTP/1.1", f"Host: {host_header}", f"User-Agent: {user_agent}"]
    if parsed.raw_user is not None:  # https://user:password@host/ as Basic authentication
        credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    if any(
        _FORBIDDEN_IN_HEADERS.intersection(line) or " " in line[1:].split(" HTTP/1.1")[0]
        for line in lines[:1]
    ) or _FORBIDDEN_IN_HEADERS.intersection("".join(lines)):
        raise HttpError(f"control characters in URL: {url!r}")
    head = "\r\n".join(lines) + "\r\n"
    return _Target(_Origin(parsed.scheme, host, port), head.encode("latin-1"))


def _encode_headers(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if _FORBIDDEN_IN_HEADERS.intersection(name) or _FORBIDDEN_IN_HEADERS.intersection(value):
            raise HttpError(f"control characters in header {name!r}")
        if name.lower() not in _OWN_HEADERS:
            lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")
