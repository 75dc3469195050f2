"""Hostile input against a real `retrieve receiver` process, over raw sockets.

Every case must get an answer from the contract (a status in `CONTRACT_STATUSES`, and the
contract's JSON body whenever the request got past aiohttp's HTTP parser), or a closed connection
for bytes that are not HTTP at all; the process must stay up with bounded memory.
`HTTP_LAYER` lists the cases refused by aiohttp's parser before any of our code runs: those
answers are aiohttp's plain-text 400s, and the test says so instead of pretending otherwise.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fleet import INTEGRATION, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONTRACT_STATUSES = {200, 400, 401, 403, 404, 405, 408, 409, 413, 415, 429, 503}
DEADLINE_SECONDS = 3  # the receiver's request-head and body deadlines in this test
LIMIT = 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 96 * 1024
MUTATIONS = 250

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<lolz>&lol4;</lolz>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""
XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]><r/>"""
QUADRATIC_BLOWUP = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "'
    + b"A" * 50_000
    + b'">]><r>'
    + b"&a;" * 10_000
    + b"</r>"
)


def _gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about 1 KiB per MiB), without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


GZIP_BOMB = _gzip_bomb(64 << 20)


@dataclass(frozen=True)
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes

    @property
    def json_body(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def is_contract_json(self) -> bool:
        body = self.json_body
        return (
            isinstance(body, dict)
            and set(body) == {"result", "error"}
            and body["result"] is (self.status == 200)
            and isinstance(body["error"], str)
            and self.headers.get("content-type", "").startswith("application/json")
        )


def parse_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        return Answer(None, {}, raw)
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status, headers, body)


async def exchange(
    port: int,
    parts: Sequence[bytes | float],
    timeout: float = 10.0,
    read_limit: int = 1 << 20,
    source: str | None = None,
) -> Answer:
    """Writes `parts` (a float is a pause, in seconds) then reads until the server closes or a
    whole answer arrived. Write errors are fine: the server may answer and close early.
    `source` binds the client socket to that loopback address."""
    local = (source, 0) if source is not None else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    raw = b""
    try:
        async with asyncio.timeout(timeout):
            try:
                for part in parts:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
            except (ConnectionError, OSError):
                pass
            while len(raw) < read_limit:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                raw += chunk
                answer = parse_answer(raw)
                length = answer.headers.get("content-length")
                if length is not None and len(answer.body) >= int(length):
                    break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return parse_answer(raw)


def request(
    path: str,
    body: bytes = b"{}",
    headers: Sequence[tuple[str, str]] = (("Content-Type", "application/json"),),
    method: str = "POST",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape") + body


def chunked(path: str, total: int, chunk: int = 64 * 1024) -> list[bytes | float]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    parts: list[bytes | float] = [head]
    sent = 0
    while sent < total:
        parts.append(f"{chunk:x}\r\n".encode() + b"a" * chunk + b"\r\n")
        sent += chunk
    parts.append(b"0\r\n\r\n")
    return parts


URL = f"/integration/{INTEGRATION}"

# name -> (what is sent, the statuses allowed, whether it reaches our code: JSON answer required)
CASES: dict[str, tuple[list[bytes | float], set[int | None], bool]] = {
    "valid JSON": ([request(URL, b'{"ok": 1}')], {200}, True),
    "invalid UTF-8 JSON": ([request(URL, b'{"a": "\xff\xfe"}')], {400}, True),
    "invalid UTF-8 form": (
        [
            request(
                URL, b"a=%ff%fe&b=\xff", (("Content-Type", "application/x-www-form-urlencoded"),)
            )
        ],
        {400},
        True,
    ),
    "JSON NaN constant": ([request(URL, b'{"a": NaN}')], {400}, True),
    "deeply nested JSON arrays": ([request(URL, b"[" * 200_000 + b"]" * 200_000)], {400}, True),
    "deeply nested JSON objects": (
        [request(URL, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)],
        {400},
        True,
    ),
    "nested JSON within limits": ([request(URL, b"[" * 500 + b"]" * 500)], {200, 400}, True),
    "deeply nested XML": (
        [request(f"{URL}/xml", b"<a>" * 100_000 + b"</a>" * 100_000)],
        {200, 400},
        True,
    ),
    "XML billion laughs": ([request(f"{URL}/xml", BILLION_LAUGHS)], {400}, True),
    "XML quadratic blowup": ([request(f"{URL}/xml", QUADRATIC_BLOWUP)], {400}, True),
    "XML external entity": ([request(f"{URL}/xml", XXE)], {400}, True),
    "XML external parameter entity": ([request(f"{URL}/xml", XXE_PARAMETER)], {400}, True),
    "XML on the JSON route by Content-Type": (
        [request(URL, XXE, (("Content-Type", "application/xml"),))],
        {400},
        True,
    ),
    "empty body": ([request(URL, b"")], {400}, True),
    "Content-Length over the limit, no body": (
        [
            (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Length: {LIMIT * 100}\r\n\r\n"
            ).encode()
        ],
        {413},
        True,
    ),
    "chunked body over the limit": (chunked(URL, 3 * LIMIT), {413}, True),
    "chunked body within the limit": (chunked(URL, 64 * 1024), {400}, True),
    "slow body, then complete": (
        [request(URL, b'{"slow": true}')[:-8], 0.5, b" true}"[:0], 0.5, b'": true}'[-8:]],
        {200, 400},
        True,
    ),
    "gzip body": (
        [request(URL, gzip.compress(b'{"zipped": 1}'), (("Content-Encoding", "gzip"),))],
        {200},
        True,
    ),
    "Content-Encoding gzip, body not gzip": (
        [request(URL, b'{"plain": 1}', (("Content-Encoding", "gzip"),))],
        {400},
        True,
    ),
    "Content-Encoding deflate, body garbage": (
        [request(URL, b"\x78\x9c" + b"\xff" * 64, (("Content-Encoding", "deflate"),))],
        {400},
        True,
    ),
    "Content-Encoding br (not decoded)": (
        [request(URL, b"{}", (("Content-Encoding", "br"),))],
        {415},
        True,
    ),
    "Content-Encoding unknown": (
        [request(URL, b"{}", (("Content-Encoding", "x-evil"),))],
        {415},
        True,
    ),
    "gzip bomb (64 MiB of zeros inflated)": (
        [request(URL, GZIP_BOMB, (("Content-Encoding", "gzip"),))],
        {413},
        True,
    ),
    "JSON number past a double's range": ([request(URL, b'{"n": 1e400}')], {400}, True),
    "request head never completed: closed, no answer": (
        [request(URL)[:40], DEADLINE_SECONDS + 1.5],
        {None},
        False,
    ),
    "body slower than its deadline": (
        [request(URL, b'{"slow": "body"}')[:-5], DEADLINE_SECONDS + 1.5, b'ody"}'],
        {408},
        True,
    ),
    "path traversal %2F": ([request("/integration/..%2F..%2Fetc%2Fpasswd")], {404}, True),
    "path dot segments": (
        [request(f"/integration/../integration/{INTEGRATION}")],
        {200, 404},
        True,
    ),
    "encoded slash to xml route": ([request(f"/integration/{INTEGRATION}%2Fxml")], {404}, True),
    "very long id": ([request("/integration/" + "A" * 6000)], {404, 400}, True),
    "unicode id": ([request("/integration/%E2%98%83%F0%9F%92%A9")], {404}, True),
    "raw UTF-8 bytes in the path": (
        [request("/integration/\udce2\udc98\udc83")],
        {400, 404},
        False,
    ),
    "NUL in the id": ([request("/integration/abc%00def")], {404}, True),
    "raw NUL in the path": ([request("/integration/abc\x00def")], {400, 404}, False),
    "unknown method": ([request(URL, method="BREW")], {405, 400}, False),
    "GET on the webhook": ([request(URL, b"", method="GET")], {405}, True),
    "unknown path": ([request("/admin/../metrics", b"")], {404}, True),
    # aiohttp's parser refuses these before the app runs (plain-text 400, not our JSON).
    "not HTTP at all": (
        [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64],
        {400},
        False,
    ),
    "garbage request line": ([b"GARBAGE\r\n\r\n"], {400}, False),
    "header without a colon": (
        [
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nContent-Length: 2\r\n\r\n".encode()
            + b"{}"
        ],
        {400},
        False,
    ),
    "huge header value (64 KiB)": (
        [request(URL, headers=(("X-Big", "v" * 65536), ("Content-Type", "application/json")))],
        {400, 431},
        False,
    ),
    # SECURITY.md: "aiohttp's own HTTP parser bounds the request line and each header (8 KiB)".
    "request line just under 8 KiB": (
        [request(f"{URL}?pad={'p' * (8000 - len(URL))}")],
        {200},
        True,
    ),
    "request line past 8 KiB": ([request(f"{URL}?pad={'p' * 9000}")], {400}, False),
    "header line just under 8 KiB": (
        [request(URL, headers=(("X-Big", "v" * 8000), ("Content-Type", "application/json")))],
        {200},
        True,
    ),
    "header line past 8 KiB": (
        [request(URL, headers=(("X-Big", "v" * 8200), ("Content-Type", "application/json")))],
        {400},
        False,
    ),
    "very many headers (5000)": (
        [request(URL, headers=[(f"X-H{i}", "v") for i in range(5000)])],
        {200, 400, 431},
        False,
    ),
    "NUL in a header value": ([request(URL, headers=(("X-Evil", "a\x00b"),))], {400}, False),
    "CR in a header value": ([request(URL, headers=(("X-Evil", "a\rb"),))], {400}, False),
    "conflicting Content-Length": (
        [
            (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n"
                "Connection: close\r\n\r\n{}"
            ).encode()
        ],
        {400},
        False,
    ),
    "Content-Length and chunked together (smuggling)": (
        [
            (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            ).encode()
        ],
        {400},
        False,
    ),
    "negative Content-Length": (
        [f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode()],
        {400},
        False,
    ),
    "bad chunk size": (
        [
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        ],
        {400},
        False,
    ),
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def mutations(seed: int, count: int) -> Iterator[bytes]:
    """Random byte-level mutations of a valid request (bounded count, fixed seed)."""
    rng = random.Random(seed)
    base = request(URL, b'{"order": {"id": 1, "items": [1, 2, 3]}}')
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[position] = rng.randrange(256)
            elif action < 0.7:
                del data[position : position + rng.randint(1, 16)]
            else:
                data[position:position] = bytes(
                    rng.randrange(256) for _ in range(rng.randint(1, 16))
                )
        yield bytes(data)


@pytest.fixture
def receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    deadlines = {
        "RETRIEVE_HEADER_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        "RETRIEVE_BODY_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
    }
    server = Receiver(config, redis_server.url, env=deadlines).start()
    try:
        yield server
    finally:
        server.process.stop()


async def test_hostile_requests_get_contract_answers_and_the_receiver_stays_up(
    receiver: Receiver,
) -> None:
    process = receiver.process.process
    assert process is not None
    warm = await exchange(receiver.port, [request(URL, b'{"warm": 1}')])
    assert warm.status == 200
    rss_before = rss_kib(process.pid)

    seen: dict[str, str] = {}
    failures: list[str] = []
    for name, (parts, allowed, reaches_app) in CASES.items():
        answer = await exchange(receiver.port, parts)
        layer = "app" if answer.is_contract_json() else "aiohttp" if answer.status else "closed"
        seen[name] = f"{answer.status} ({layer})"
        if answer.status not in allowed:
            failures.append(f"{name}: {answer.status} {answer.body[:200]!r}, wanted {allowed}")
        elif reaches_app and not answer.is_contract_json():
            failures.append(
                f"{name}: not the contract's JSON: {answer.headers} {answer.body[:200]!r}"
            )
        elif answer.status is not None and answer.status != 400 and not answer.is_contract_json():
            failures.append(f"{name}: a {answer.status} that is not the contract's JSON")
        assert process.poll() is None, f"receiver died on {name}:\n{receiver.process.output()}"

    # A sender that promises 100 bytes, sends 2 and hangs up: nobody to answer, no error of ours.
    cut = f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{}}".encode()
    hung_up = await exchange(receiver.port, [cut], timeout=0.5)
    seen["body shorter than Content-Length, then closed"] = f"{hung_up.status} (client gone)"

    # Slow requests in parallel must not block others: a slowloris of 20 connections that
    # trickle headers for 3 s while normal requests are answered.
    async def slowloris() -> Answer:
        head = request(URL, b"{}")
        return await exchange(receiver.port, [head[:30], 1.0, head[30:40], 1.0, head[40:50], 1.0])

    trickles = [asyncio.create_task(slowloris()) for _ in range(20)]
    await asyncio.sleep(0.5)
    normal = await exchange(receiver.port, [request(URL, b'{"during": "slowloris"}')], timeout=5)
    if normal.status != 200:
        failures.append(f"normal request during slowloris: {normal.status}")
    await asyncio.gather(*trickles)

    mutated_statuses: dict[str, int] = {}
    for blob in mutations(seed=20261128, count=MUTATIONS):
        # A mutation that raised Content-Length leaves the server waiting: give up after 1 s.
        answer = await exchange(receiver.port, [blob], timeout=1)
        layer = "app" if answer.is_contract_json() else "aiohttp" if answer.status else "none"
        key = f"{answer.status} ({layer})"
        mutated_statuses[key] = mutated_statuses.get(key, 0) + 1
        if answer.status is not None and answer.status not in CONTRACT_STATUSES:
            failures.append(f"mutation {blob[:80]!r}: {answer.status}")
        assert process.poll() is None, f"receiver died on {blob!r}"

    after = await exchange(receiver.port, [request(URL, b'{"after": 1}')])
    rss_after = rss_kib(process.pid)
    print("\nhostile input answers:")
    for name, result in seen.items():
        print(f"  {name}: {result}")
    print(f"  {MUTATIONS} random mutations: {mutated_statuses}")
    print(f"  RSS before {rss_before} KiB, after {rss_after} KiB")
    output = receiver.process.output()
    parser_errors = output.count("aiohttp.server: Error handling request")
    print(
        f"  aiohttp.server ERROR records with a traceback (its parser's refusals): {parser_errors}"
    )

    assert failures == []
    assert after.status == 200
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    # Our code never failed: no 500 from `answered`, no traceback but aiohttp's own.
    assert "unexpected error" not in output
    assert output.count("Traceback") == parser_errors
