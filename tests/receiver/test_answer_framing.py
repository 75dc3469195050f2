"""The 200 answer is written pre-serialized (`errors.Success`): on the wire it must frame and
keep or close connections exactly as HTTP/1.x says, alone, pipelined and mixed with aiohttp's
own answers, against a real `retrieve receiver` process over raw sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.support.fleet import INTEGRATION, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

URL = f"/integration/{INTEGRATION}"
SUCCESS = b'{"result": true, "error": ""}'
BOUND = 10.0


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    redis = RedisServer().start()
    tmp: Path = tmp_path_factory.mktemp("framing")
    server = Receiver(write_fleet_config(tmp / "config", "http://127.0.0.1:9"), redis.url).start()
    try:
        yield server
    finally:
        server.process.stop()
        redis.stop()


def post(version: str = "1.1", connection: str | None = None, body: bytes = b'{"n": 1}') -> bytes:
    lines = [f"POST {URL} HTTP/{version}", "Host: 127.0.0.1", "Content-Type: application/json"]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One answer: its status line, headers (lower-case names) and exactly its body."""
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(BOUND):
        return await reader.read(1) == b""


def assert_success(status: bytes, headers: dict[str, str], body: bytes, version: str) -> None:
    assert status == f"HTTP/{version} 200 OK".encode()
    assert body == SUCCESS
    assert headers["content-type"] == "application/json"
    assert abs(parsedate_to_datetime(headers["date"]).timestamp() - time.time()) < 60
    assert "transfer-encoding" not in headers


async def test_pipelined_requests_get_one_framed_answer_each_on_a_kept_connection(
    receiver: Receiver,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    try:
        bad = post(body=b'{"n": ')  # an aiohttp Response between two of ours
        writer.write(post() + bad + post(body=b'{"n": 3}'))
        first, refused, third = [await read_answer(reader) for _ in range(3)]
        assert_success(*first, "1.1")
        assert "connection" not in first[1]
        assert refused[0] == b"HTTP/1.1 400 Bad Request"
        assert refused[2].startswith(b'{"result": false, "error": "Invalid JSON payload')
        assert_success(*third, "1.1")
        writer.write(post())  # still open after all three
        assert_success(*await read_answer(reader), "1.1")
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("version", "connection", "kept", "says"),
    [
        ("1.1", "close", False, "close"),
        ("1.0", None, False, None),
        ("1.0", "keep-alive", True, "keep-alive"),
    ],
)
async def test_the_answer_keeps_or_closes_the_connection_as_http_says(
    receiver: Receiver, version: str, connection: str | None, kept: bool, says: str | None
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    try:
        writer.write(post(version, connection))
        status, headers, body = await read_answer(reader)
        assert_success(status, headers, body, version)
        assert headers.get("connection") == says
        if kept:
            writer.write(post(version, connection))
            assert_success(*await read_answer(reader), version)
        else:
            assert await closed(reader)
    finally:
        writer.close()
