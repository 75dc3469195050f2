"""Slow and numerous connections against a real `retrieve receiver` process (issue 12, defect 7).

Before: no deadline on a request head or a body, no cap on connections (500 connections with
incomplete heads from a refused address all stayed open). Now a head must be complete within
`RETRIEVE_HEADER_TIMEOUT_SECONDS`, a body within `RETRIEVE_BODY_TIMEOUT_SECONDS` (408), and past
`RETRIEVE_MAX_CONNECTIONS` a new connection gets a 503; the tests wait for these events with
generous bounds and never assert how long they took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.receiver.test_fuzz_http import Answer, parse_answer, request
from tests.support.fleet import INTEGRATION, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

URL = f"/integration/{INTEGRATION}"
PARTIAL_HEAD = f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl".encode()
EVENT_BOUND = 30.0
"""How long a test waits for the server to act: far above the configured 1 s deadlines."""


def start_receiver(tmp_path: Path, redis_url: str, **env: str) -> Receiver:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    return Receiver(config, redis_url, env=env).start()


@pytest.fixture
def strict_receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    server = start_receiver(
        tmp_path,
        redis_server.url,
        RETRIEVE_HEADER_TIMEOUT_SECONDS="1",
        RETRIEVE_BODY_TIMEOUT_SECONDS="1",
    )
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def capped_receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    server = start_receiver(tmp_path, redis_server.url, RETRIEVE_MAX_CONNECTIONS="20")
    try:
        yield server
    finally:
        server.process.stop()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (or EVENT_BOUND passes)."""
    raw = b""
    async with asyncio.timeout(EVENT_BOUND):
        while chunk := await reader.read(65536):
            raw += chunk
    return raw


async def stall(
    port: int, first: bytes, source: str, trickle: bytes = b"", pause: float = 0.3
) -> bytes:
    """Opens a connection, sends `first`, then one byte of `trickle` at a time (`pause`
    apart) while the server keeps it open; returns what the server sent before closing it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(first)
        await writer.drain()

        async def dribble() -> None:
            for byte in trickle:
                await asyncio.sleep(pause)
                writer.write(bytes([byte]))
                await writer.drain()

        dribbler = asyncio.create_task(dribble())
        try:
            return await read_until_closed(reader)
        finally:
            dribbler.cancel()
            await asyncio.gather(dribbler, return_exceptions=True)
    finally:
        writer.close()


async def test_connections_that_never_complete_a_request_head_are_closed(
    strict_receiver: Receiver,
) -> None:
    port = strict_receiver.port
    partial = [stall(port, PARTIAL_HEAD, "127.0.0.9") for _ in range(200)]
    silent = [stall(port, b"", "127.0.0.9") for _ in range(50)]
    trickling = [stall(port, PARTIAL_HEAD, "127.0.0.9", b"lication/json\r\nX-A: " + b"a" * 200)]
    answers = await asyncio.gather(*partial, *silent, *trickling)
    # Each was closed by the server without an answer (no request ever reached the app).
    assert answers == [b""] * len(answers)

    # A complete request on a fresh connection is served as before.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(URL, b'{"ok": 1}'))
    await writer.drain()
    assert parse_answer(await read_until_closed(reader)).status == 200
    writer.close()


async def test_a_body_slower_than_its_deadline_gets_408_and_the_connection_closed(
    strict_receiver: Receiver,
) -> None:
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    raw = await stall(strict_receiver.port, head + b'{"slow": ', "127.0.0.1", b" " * 200)
    answer = parse_answer(raw)
    assert answer.status == 408
    assert answer.json_body == {
        "result": False,
        "error": "Request body not received within 1 s",
    }
    assert "Traceback" not in strict_receiver.process.output()


async def test_a_sender_still_sending_its_body_reads_the_whole_408_before_the_end(
    strict_receiver: Receiver,
) -> None:
    """The 408 is followed by the end of the connection (FIN) while the server still reads and
    drops what comes: closed at once with bytes unread, the connection was reset, and the
    reset could take the answer with it (the sender saw "connection reset by peer")."""
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    for _ in range(3):
        raw = await stall(strict_receiver.port, head + b'{"a": "', "127.0.0.1", b"x" * 99_000,
                          pause=0.002)  # fmt: skip
        assert parse_answer(raw).status == 408


async def keep_alive_request(port: int) -> tuple[Answer, asyncio.StreamWriter]:
    """A request answered on a connection the server keeps open afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"n": 1}'
    writer.write(
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    raw = b""
    async with asyncio.timeout(EVENT_BOUND):
        while True:
            answer = parse_answer(raw)
            length = answer.headers.get("content-length")
            if length is not None and len(answer.body) >= int(length):
                return answer, writer
            chunk = await reader.read(65536)
            if not chunk:
                return answer, writer
            raw += chunk


async def test_connections_past_the_cap_get_a_503_until_others_close(
    capped_receiver: Receiver,
) -> None:
    port = capped_receiver.port
    held = [await keep_alive_request(port) for _ in range(20)]
    assert [answer.status for answer, _ in held] == [200] * 20

    over, over_writer = await keep_alive_request(port)
    over_writer.close()
    assert over.status == 503
    assert over.json_body == {"result": False, "error": "Too many connections, retry later"}
    assert over.headers["retry-after"] == "1"
    assert over.headers["connection"].lower() == "close"

    for _, writer in held:
        writer.close()
    async with asyncio.timeout(EVENT_BOUND):
        while True:  # the server notices the closed connections
            answer, writer = await keep_alive_request(port)
            writer.close()
            if answer.status == 200:
                break
            assert answer.status == 503
            await asyncio.sleep(0.1)


@pytest.fixture
def idle_receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    server = start_receiver(tmp_path, redis_server.url, RETRIEVE_IDLE_TIMEOUT_SECONDS="1")
    try:
        yield server
    finally:
        server.process.stop()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    idle_receiver: Receiver,
) -> None:
    """`RETRIEVE_IDLE_TIMEOUT_SECONDS`: an answered keep-alive connection that stays silent is
    closed by the server, on both ports (with the 120 s default, `stall` would time out)."""
    body = b'{"n": 1}'
    webhook = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    probe = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for port, sent in ((idle_receiver.port, webhook), (idle_receiver.admin_port, probe)):
        answer = parse_answer(await stall(port, sent, "127.0.0.1"))
        assert answer.status == 200, port
        assert answer.headers.get("connection", "").lower() != "close", port


# ---------------------------------------------------------------- the admin port

ADMIN_PARTIAL_HEAD = b"GET /api/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bear"


@pytest.fixture
def admin_capped_receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    server = start_receiver(tmp_path, redis_server.url, RETRIEVE_ADMIN_MAX_CONNECTIONS="10")
    try:
        yield server
    finally:
        server.process.stop()


async def keep_alive_get(port: int, path: str = "/healthz") -> tuple[Answer, asyncio.StreamWriter]:
    """A GET answered on a connection the server keeps open afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = b""
    async with asyncio.timeout(EVENT_BOUND):
        while True:
            answer = parse_answer(raw)
            length = answer.headers.get("content-length")
            if length is not None and len(answer.body) >= int(length):
                return answer, writer
            chunk = await reader.read(65536)
            if not chunk:
                return answer, writer
            raw += chunk


async def test_admin_connections_that_never_complete_a_request_head_are_closed(
    strict_receiver: Receiver,
) -> None:
    """Before: the admin port had no head deadline; such connections stayed open."""
    port = strict_receiver.admin_port
    partial = [stall(port, ADMIN_PARTIAL_HEAD, "127.0.0.9") for _ in range(60)]
    silent = [stall(port, b"", "127.0.0.10") for _ in range(20)]
    trickling = [stall(port, ADMIN_PARTIAL_HEAD, "127.0.0.11", b"er x\r\nX-A: " + b"a" * 200)]
    answers = await asyncio.gather(*partial, *silent, *trickling)
    assert answers == [b""] * len(answers)

    answer, writer = await keep_alive_get(port)
    writer.close()
    assert answer.status == 200


async def test_a_slow_body_on_the_admin_port_gets_408_and_the_connection_closed(
    strict_receiver: Receiver,
) -> None:
    head = b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    raw = await stall(strict_receiver.admin_port, head + b"{", "127.0.0.12", b" " * 200)
    answer = parse_answer(raw)
    assert answer.status == 408
    assert answer.json_body == {"result": False, "error": "Request body not received within 1 s"}
    assert "Traceback" not in strict_receiver.process.output()


async def test_admin_connections_past_their_cap_get_a_503_and_the_public_port_is_unaffected(
    admin_capped_receiver: Receiver,
) -> None:
    admin, public = admin_capped_receiver.admin_port, admin_capped_receiver.port
    held = [await keep_alive_get(admin) for _ in range(10)]
    assert [answer.status for answer, _ in held] == [200] * 10

    over, over_writer = await keep_alive_get(admin)
    over_writer.close()
    assert over.status == 503
    assert over.json_body == {"result": False, "error": "Too many connections, retry later"}
    assert over.headers["retry-after"] == "1"
    assert over.headers["connection"].lower() == "close"
    # The public port counts its connections apart.
    webhook, webhook_writer = await keep_alive_request(public)
    webhook_writer.close()
    assert webhook.status == 200

    for _, writer in held:
        writer.close()
    async with asyncio.timeout(EVENT_BOUND):
        while True:  # the server notices the closed connections
            answer, writer = await keep_alive_get(admin)
            writer.close()
            if answer.status == 200:
                break
            assert answer.status == 503
            await asyncio.sleep(0.1)


async def test_an_admin_body_past_64_kib_gets_413(strict_receiver: Receiver) -> None:
    body = b"x" * (64 * 1024 + 1)
    head = (
        f"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = parse_answer(await stall(strict_receiver.admin_port, head + body, "127.0.0.1"))
    assert answer.status == 413
    assert answer.is_contract_json()
