"""`retrieve_core.connections`: the request-head deadline of a tracked connection, driven
through its asyncio protocol methods with a stand-in transport and a stand-in for aiohttp's
per-connection protocol (the real ones are exercised by the receiver's connection tests)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web

from retrieve_core.connections import ConnectionGuard, TrackedConnection

pytestmark = pytest.mark.unit


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Inner:
    """What aiohttp's RequestHandler receives from the tracked connection."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def tracked(header_timeout: float) -> tuple[TrackedConnection, Transport, ConnectionGuard]:
    guard = ConnectionGuard(max_connections=0, header_timeout=header_timeout)
    connection = TrackedConnection(guard, cast("web.Server", Inner))
    transport = Transport()
    connection.connection_made(cast("asyncio.Transport", transport))
    return connection, transport, guard


async def test_bytes_that_come_while_a_request_is_handled_start_a_deadline_at_its_answer() -> None:
    """A next request that starts while the previous one is being handled (a pipelined
    partial head) must complete within the head deadline counted from the answer; before,
    nothing armed it and only the idle timeout closed the connection."""
    connection, transport, guard = tracked(header_timeout=0.1)
    connection.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    connection.head_received()  # the handler runs
    connection.data_received(b"POST /b HTTP/1.1\r\nHo")  # the next one starts meanwhile
    await asyncio.sleep(0.2)
    assert not transport.closed  # busy: no deadline while the answer is being made
    connection.answered()
    await asyncio.sleep(0.2)
    assert transport.closed
    assert guard.timed_out == 1


async def test_an_answered_connection_that_stays_silent_has_no_head_deadline() -> None:
    """Between requests an idle keep-alive connection is the idle timeout's (aiohttp's), not
    the head deadline's."""
    connection, transport, guard = tracked(header_timeout=0.1)
    connection.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    connection.head_received()
    connection.answered()
    await asyncio.sleep(0.25)
    assert not transport.closed
    assert guard.timed_out == 0


@pytest.mark.unit
def test_a_cap_of_0_admits_every_connection_and_a_cap_refuses_past_it() -> None:
    """SECURITY.md: `RETRIEVE_MAX_CONNECTIONS` / `RETRIEVE_ADMIN_MAX_CONNECTIONS`: "0 disables
    the cap"."""
    server = cast("web.Server", object())
    for cap, admitted in ((0, True), (5000, False)):
        guard = ConnectionGuard(max_connections=cap, header_timeout=10)
        guard.open.update({n: cast("TrackedConnection", object()) for n in range(5000)})
        protocol = guard.factory(server)()
        assert isinstance(protocol, TrackedConnection) is admitted, cap
        assert guard.refused == (0 if admitted else 1)
