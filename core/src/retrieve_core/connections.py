"""Bounds on an aiohttp server's connections: how many at once, how long a request head may take.

Used by the receiver's public and admin ports and the worker's admin port.

aiohttp has no request-head timeout: a connection that trickles header bytes (slowloris) or
sends nothing stays open until its keep-alive timeout, and nothing caps how many do. The
listener's protocol factory (`ConnectionGuard.factory`, used by `GuardedSite`) wraps each
connection:

- beyond `max_connections` open connections a new one gets a 503 with the contract's JSON and
  is closed;
- a connection must deliver a complete request head within `header_timeout` seconds of opening,
  and of the first byte of each later request; otherwise it is closed. `answered()` (the public
  app's wrapper of every route) reports when a head is complete and when an answer is done.

An idle keep-alive connection between requests is left to aiohttp's `keepalive_timeout` (the
settings' `idle_timeout`), longer than an Ingress controller's upstream keep-alive, so the
controller never reuses a connection the receiver is closing. The body has its own limit,
enforced while reading it (the receiver's `app.read_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

MSG_TOO_MANY_CONNECTIONS = "Too many connections, retry later"
BUSY_LINGER_SECONDS = 2.0
_BUSY_BODY = json.dumps({"result": False, "error": MSG_TOO_MANY_CONNECTIONS}).encode()
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


class _Busy(asyncio.Protocol):
    """A connection over the cap: answered 503 at once, then closed.

    Closing with the request unread would reset the connection and lose the answer: the
    answer is followed by a FIN, what the client still sends is dropped, and the connection
    closes when the client does, or after `BUSY_LINGER_SECONDS`.
    """

    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        stream = cast("asyncio.Transport", transport)
        stream.write(_BUSY_ANSWER)
        if stream.can_write_eof():
            stream.write_eof()
        self._timer = asyncio.get_running_loop().call_later(BUSY_LINGER_SECONDS, stream.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a connection over the cap is not read

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class TrackedConnection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol, with a deadline on each request head.

    A subclass may serve some requests itself and create aiohttp's protocol later
    (`_start_inner`): the receiver's lean path does (`retrieve_receiver.lean`).
    """

    def __init__(self, guard: ConnectionGuard, server: web.Server) -> None:
        self._guard = guard
        self._server = server
        self._inner: Any = None
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for_head = True
        self._busy = False
        self._bytes_while_busy = False

    # -- the asyncio protocol, delegated to aiohttp's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._guard.open[id(transport)] = self
        self._start_inner()
        self._arm()  # a connection that sends nothing is closed too

    def _start_inner(self) -> None:
        """Create aiohttp's protocol for this connection (registered with its server, which
        closes it on shutdown)."""
        assert self._transport is not None
        self._inner = self._server()
        self._inner.connection_made(self._transport)

    def data_received(self, data: bytes) -> None:
        self._track(data)
        self._inner.data_received(data)

    def _track(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if self._busy:
            self._bytes_while_busy = True  # the next request's deadline starts at the answer
        elif not self._waiting_for_head:
            self._waiting_for_head = True  # the first byte of the next request
            self._arm()

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._transport is not None:
            self._guard.open.pop(id(self._transport), None)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # -- the request head deadline

    def head_received(self) -> None:
        self._busy = True
        self._waiting_for_head = False
        self._cancel()

    def answered(self) -> None:
        self._busy = False
        if self._bytes_while_busy:  # a next request (or part of one) came meanwhile
            self._bytes_while_busy = False
            self._waiting_for_head = True
            self._arm()

    def _arm(self) -> None:
        self._cancel()
        if self._guard.header_timeout <= 0:  # 0: no deadline
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._waiting_for_head and not self._busy and self._transport is not None:
            self._head_expired()

    def _head_expired(self) -> None:
        if self._transport is not None:
            self._guard.timed_out += 1
            log.debug("closing a connection: no complete request head within %.1f s",
                      self._guard.header_timeout)  # fmt: skip
            self._transport.close()


ConnectionFactory = Callable[["ConnectionGuard", web.Server], TrackedConnection]


class ConnectionGuard:
    """The connection bounds of one listener (see the module's docstring)."""

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        connection: ConnectionFactory = TrackedConnection,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.connection = connection
        """Makes each accepted connection's protocol (a `TrackedConnection`)."""
        self.open: dict[int, TrackedConnection] = {}
        """id(transport) -> its connection, while open (the transport is alive meanwhile)."""
        self.refused = 0
        self.timed_out = 0
        self.stopping = False
        """Set at shutdown, once the listener stopped accepting."""

    def factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        def make() -> asyncio.BaseProtocol:
            if self.max_connections and len(self.open) >= self.max_connections:
                self.refused += 1
                return _Busy()
            return self.connection(self, server)

        return make

    def head_received(self, transport: asyncio.BaseTransport | None) -> None:
        tracked = self.open.get(id(transport)) if transport is not None else None
        if tracked is not None:
            tracked.head_received()

    def answered(self, transport: asyncio.BaseTransport | None) -> None:
        tracked = self.open.get(id(transport)) if transport is not None else None
        if tracked is not None:
            tracked.answered()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a `ConnectionGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port)
        self.guard = guard

    @property
    def bound_port(self) -> int:
        """The port the started site listens on (the one picked for port 0)."""
        server = cast("asyncio.Server", self._server)
        return int(server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )
