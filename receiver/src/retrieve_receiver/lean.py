"""The lean HTTP path of the public port: plain webhook requests served without aiohttp's
request machinery, everything else handed to aiohttp on the same connection.

Per webhook, aiohttp's server spends more CPU on its own request objects, streams and tasks
than the receiver spends checking and storing the webhook. Most webhooks are the same plain
request: `POST /integration/<id>[/xml] HTTP/1.1` with a `Content-Length` body of a few KiB,
on a keep-alive connection from a sender or an Ingress controller. `LeanConnection` serves
exactly those from the bytes at hand, through the same `app.handle_webhook` as aiohttp's
routes, and writes the same answers (`errors.answer_bytes`, tested against aiohttp's bytes).

What it serves is deliberately narrow (`parse_plain_request`): the request line and every
header line must match RFC 9112's grammar with no obsolete forms (no line folding, no control
bytes, no whitespace before the colon or after the value), exactly one `Host` and one
`Content-Length` (digits, at most `MAX_LEAN_BODY`), no header twice, no `Transfer-Encoding`,
`Expect`, `Upgrade`, `Proxy-Connection`, and no `Connection` other than `keep-alive`; the id is
letters, digits and `._~-`, and there is no query. The head and the whole body must arrive
within the request-head deadline. Anything else — another method, path, version or form;
chunked bodies, `100-continue`, a body larger or slower than that, a malformed head — goes to
aiohttp: from that request on, aiohttp's protocol
serves the connection, with every limit and answer it has (and the same `handle_webhook`). A
request is handed over whole and only when no lean answer is pending, so answers keep their
order and both parsers never read the same bytes. Requests that do not qualify are never
refused here: aiohttp decides about them as it did before there was a lean path.

`RETRIEVE_LEAN_HTTP=0` turns the lean path off (every connection is aiohttp's from the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from retrieve_core.connections import ConnectionFactory, ConnectionGuard, TrackedConnection

from .app import METRICS_KEY, SETTINGS_KEY, Incoming, handle_webhook
from .errors import answer_bytes

log = logging.getLogger(__name__)

MAX_LEAN_HEAD = 8192
"""A head longer than this (or not complete within it) goes to aiohttp, which applies its own
line and field limits."""
MAX_LEAN_BODY = 64 * 1024
"""A larger `Content-Length` goes to aiohttp, which streams the body."""
MAX_LEAN_HEADERS = 64
MAX_BUFFERED = 2 * (MAX_LEAN_HEAD + MAX_LEAN_BODY)
"""Past this many bytes waiting behind an unanswered request, reading pauses."""

# Possessive quantifiers throughout: a line that fails fails at once (no backtracking over
# whitespace, which made a line of 8,000 tabs cost 55 ms).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_VALUE = rb"(?:[\x21-\x7e\x80-\xff]++(?:[ \t]++[\x21-\x7e\x80-\xff]++)*+)?+"
_REQUEST_LINE = re.compile(
    rb"POST (/integration/([A-Za-z0-9][A-Za-z0-9._~-]{0,254})(/xml)?) HTTP/1\.1\r\n"
)
# No whitespace after a value: llhttp before aiohttp 3.12 kept it in the value, later ones strip
# it; such a line goes to aiohttp, so that both paths read the same value on every version.
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*+" + _VALUE + rb"\r\n)*+")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*+(" + _VALUE + rb")\r\n")
_DIGITS = re.compile(rb"[0-9]{1,7}")
_REFUSED_FIELDS = frozenset(
    {"transfer-encoding", "expect", "upgrade", "proxy-connection", "sec-websocket-key1"}
)
"""Fields that change how a request is framed or answered (llhttp and aiohttp give them
meaning), left to aiohttp."""


@dataclass(slots=True)
class PlainRequest:
    """A plain webhook request, parsed whole (see the module's docstring)."""

    path: str
    integration_id: str
    xml_route: bool
    host: str
    headers: CIMultiDictProxy[str]
    body: bytes
    size: int
    """Bytes of the buffer it took, head and body."""

    async def read_body(self, limit: int) -> bytes:
        """The body (all of it is here): OverflowError past `limit`."""
        if len(self.body) > limit:
            raise OverflowError
        return self.body


class HandOver(Exception):
    """The request at the start of the buffer is not one the lean path serves."""


def parse_plain_request(buffer: bytes | bytearray) -> PlainRequest | int:
    """The plain request at the start of `buffer`; while it is incomplete, how many bytes the
    whole request needs (0: the head is not complete yet).

    Raises `HandOver` when it is not a plain request (or cannot become one).
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_LEAN_HEAD)
    if end < 0:
        if len(buffer) >= MAX_LEAN_HEAD or (buffer and buffer[0] != 0x50):  # "P"
            raise HandOver
        return 0
    line = _REQUEST_LINE.match(buffer)
    if line is None:
        raise HandOver
    start = line.end()
    fields_end = end + 2
    matched = _FIELDS.match(buffer, start, fields_end)
    if matched is None or matched.end() != fields_end:
        raise HandOver
    pairs = _FIELD.findall(buffer, start, fields_end)
    if len(pairs) > MAX_LEAN_HEADERS:
        raise HandOver
    names: set[str] = set()
    items: list[tuple[str, str]] = []
    length = host = None
    for raw_name, raw_value in pairs:
        name = raw_name.decode("ascii")
        lower = name.lower()
        if lower in names or lower in _REFUSED_FIELDS:
            raise HandOver
        names.add(lower)
        value = raw_value.decode("utf-8", "surrogateescape")
        if lower == "content-length":
            if _DIGITS.fullmatch(raw_value) is None:
                raise HandOver
            length = int(raw_value)
        elif lower == "host":
            host = value
        elif lower == "connection" and value.lower() != "keep-alive":
            raise HandOver
        items.append((name, value))
    if length is None or host is None or length > MAX_LEAN_BODY:
        raise HandOver
    body_start = end + 4
    size = body_start + length
    if len(buffer) < size:
        return size
    path, integration_id, xml = line.groups()
    return PlainRequest(
        path=path.decode("ascii"),
        integration_id=integration_id.decode("ascii"),
        xml_route=xml is not None,
        host=host,
        headers=CIMultiDictProxy(CIMultiDict(items)),
        body=bytes(buffer[body_start:size]),
        size=size,
    )


class LeanConnection(TrackedConnection):
    """A public-port connection: plain requests served here, the rest by aiohttp's protocol
    (created at the first request that is not plain, and serving the connection from then on).

    Bounds kept as aiohttp keeps them: the request-head deadline of `ConnectionGuard` covers
    a plain request's head and body (past it a complete head goes to aiohttp, which waits for
    the body up to `body_timeout`; an incomplete one is closed like any slow head); an idle
    connection closes after `idle_timeout`; reading pauses while an answer cannot be written
    or while more than `MAX_BUFFERED` bytes wait; graceful shutdown (`shutdown_lean`) lets
    the request in progress finish.
    """

    def __init__(self, guard: ConnectionGuard, server: web.Server, webapp: web.Application) -> None:
        super().__init__(guard, server)
        self._webapp = webapp
        self._buffer = bytearray()
        self._wanted = 0
        """Bytes the request at the start of the buffer needs, once its head was read."""
        self._lean = True
        self._task: asyncio.Task[None] | None = None
        self._remote: str | None = None
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._closing = False
        self._idle_timeout = webapp[SETTINGS_KEY].idle_timeout
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def lean(self) -> bool:
        """Whether this connection is still served by the lean path."""
        return self._lean

    # -- the asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._guard.open[id(transport)] = self
        if self._guard.stopping:  # accepted just before the listener closed
            self.close_now()
            return
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, list | tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._arm()  # a connection that sends nothing is closed too
        self._start_idle()

    def data_received(self, data: bytes) -> None:
        if not self._lean:
            super().data_received(data)
            return
        self._track(data)
        self._buffer += data
        if self._task is None and not self._write_paused and len(self._buffer) >= self._wanted:
            self._next()
        if len(self._buffer) > MAX_BUFFERED and not self._read_paused and self._lean:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        if not self._lean:
            return super().eof_received()
        # The sender is done sending: the answers it is owed are written, then the connection
        # closes (a sender may half-close after its last request).
        self._eof = True
        if self._task is None:
            self._next()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._lean:
            super().pause_writing()
            return
        self._write_paused = True

    def resume_writing(self) -> None:
        if not self._lean:
            super().resume_writing()
            return
        self._write_paused = False
        if self._task is None:
            self._next()

    # -- serving

    def _next(self) -> None:
        """Serve the request at the start of the buffer, or hand the connection to aiohttp."""
        if self._closing or not self._buffer:
            if self._eof and self._task is None:
                self.close_now()
            return
        try:
            request = parse_plain_request(self._buffer)
        except HandOver:
            self._hand_over()
            return
        if not isinstance(request, PlainRequest):  # more to come, within the head deadline
            self._wanted = request  # the head is not parsed again for every packet of the body
            if request:
                self._cancel_idle()  # a request is under way: not idle (its deadline runs)
            if self._eof or (request and self._guard.header_timeout <= 0):
                # A truncated request, or a body with no deadline here: aiohttp's to judge.
                self._hand_over()
            else:
                self._track(self._buffer)  # behind an answer: its deadline starts now
            return
        self._wanted = 0
        del self._buffer[: request.size]
        if self._read_paused and len(self._buffer) <= MAX_BUFFERED:
            self._resume_reading()
        self.head_received()
        self._cancel_idle()
        self._task = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, request: PlainRequest) -> None:
        incoming = Incoming(
            integration_id=request.integration_id,
            xml_route=request.xml_route,
            remote=self._remote,
            host=request.host,
            headers=request.headers,
            read_body=request.read_body,
            path=request.path,
        )
        try:
            answer = await handle_webhook(self._webapp, incoming)
            data = answer_bytes(answer)
        except Exception:  # handle_webhook answers whatever happens: a bug of ours
            log.exception("no answer for POST %s: closing the connection", request.path)
            self.close_now()
            return
        finally:
            self._task = None
        self.answered()
        transport = cast("asyncio.Transport", self._transport)
        if transport is None or transport.is_closing():
            return  # the sender left: the webhook is handled all the same
        transport.write(data)
        if answer.close or self._closing:
            self.close_now()
            return
        self._start_idle()
        if not self._write_paused:
            self._next()

    def _hand_over(self) -> None:
        """From the request at the start of the buffer on, aiohttp serves this connection."""
        self._lean = False
        self._webapp[METRICS_KEY].lean_handovers.inc()
        self._cancel_idle()
        pending = bytes(self._buffer)
        self._buffer.clear()
        self._track(pending)  # bytes that came behind an answer: their head deadline runs
        self._start_inner()
        if self._read_paused:
            self._resume_reading()
        if self._write_paused:
            self._inner.pause_writing()
        if pending:
            self._inner.data_received(pending)
        if self._eof and self._transport is not None:
            self._transport.close()  # aiohttp would have closed on the sender's EOF

    def _head_expired(self) -> None:
        if self._lean and self._write_paused:
            # Slow to read its answers, not to send (the idle timeout bounds that): the deadline
            # starts again for what is buffered once answers can be written (`_next`).
            self._waiting_for_head = False
            return
        # A complete head whose body is slow: aiohttp waits for the body (`body_timeout`).
        if self._lean and not self._closing and self._task is None and self._wanted:
            self._hand_over()
            return
        super()._head_expired()

    def close_now(self) -> None:
        """Close the connection (what is written still goes out first)."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _pause_reading(self) -> None:
        self._read_paused = True
        cast("asyncio.Transport", self._transport).pause_reading()

    def _resume_reading(self) -> None:
        self._read_paused = False
        transport = cast("asyncio.Transport", self._transport)
        if not transport.is_closing():
            transport.resume_reading()

    # -- idle keep-alive connections

    def _start_idle(self) -> None:
        if self._idle_timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        if self._idle_timer is None:  # one timer, moved on only when it fires early
            self._idle_timer = loop.call_at(self._idle_since + self._idle_timeout, self._idle)

    def _cancel_idle(self) -> None:
        self._idle_since = 0.0

    def _idle(self) -> None:
        self._idle_timer = None
        if not self._lean or self._closing or not self._idle_since:
            return  # busy: `_start_idle` starts the timer again after the answer
        loop = asyncio.get_running_loop()
        due = self._idle_since + self._idle_timeout
        if loop.time() < due:
            self._idle_timer = loop.call_at(due, self._idle)
            return
        if self._task is None:  # idle, or a next request stalled that long
            self.close_now()

    def close_when_idle(self) -> None:
        """For shutdown: close now if idle, else right after the answer in progress."""
        self._closing = True
        if self._task is None:
            self.close_now()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet served."""
        return len(self._buffer)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The request in progress."""
        return self._task


def lean_connections(webapp: web.Application) -> ConnectionFactory:
    """The guard's connection factory for the public port: `LeanConnection`s of `webapp`."""

    def make(guard: ConnectionGuard, server: web.Server) -> TrackedConnection:
        return LeanConnection(guard, server, webapp)

    return make


async def shutdown_lean(guard: ConnectionGuard, timeout: float) -> None:
    """Let lean requests in progress finish (up to `timeout` seconds), close the rest.

    Call after the listener stopped accepting and before aiohttp's server shuts down (the
    connections aiohttp serves are its own to close).
    """
    guard.stopping = True  # a connection accepted from now on is closed at once
    await asyncio.sleep(0)  # the ones accepted before: their `connection_made` runs
    connections = [c for c in guard.open.values() if isinstance(c, LeanConnection) and c.lean]
    for connection in connections:
        connection.close_when_idle()
    tasks = [c.task for c in connections if c.task is not None]
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:  # as aiohttp does with its handlers past the timeout
            task.cancel()
        if late:  # settled before Redis is closed (bounded: a cancellation may be swallowed)
            await asyncio.wait(late, timeout=timeout)
    for connection in connections:
        if connection.lean:
            connection.close_now()  # past the deadline
