"""The lean HTTP path (`retrieve_receiver.lean`): what it serves, what it hands to aiohttp, and
that the two never disagree about the bytes of a request.

The receiver's other tests run on both paths (`receiver_client` is parametrized); these are
about the lean path's own parser and connection handling.
"""

from __future__ import annotations

import asyncio
import json
import socket
import string
import time
from typing import Any, cast

import pytest
from aiohttp import http_parser, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from retrieve_receiver.app import GUARD_KEY, METRICS_KEY, init_app
from retrieve_receiver.lean import (
    MAX_BUFFERED,
    MAX_LEAN_BODY,
    MAX_LEAN_HEAD,
    HandOver,
    LeanConnection,
    PlainRequest,
    parse_plain_request,
)
from retrieve_receiver.serving import public_site, stop_public_site
from retrieve_receiver.settings import ReceiverSettings
from tests.receiver.conftest import ORDER_ID, ClientFactory, make_app, make_integration
from tests.receiver.conftest import make_provider as provider_of

PLAIN = (
    b"POST /integration/" + ORDER_ID.encode() + b" HTTP/1.1\r\n"
    b"Host: webhook-yourapp.retrievetl.com\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 11\r\n"
    b"\r\n"
    b'{"total":1}'
)


def plain(body: bytes = b'{"total":1}', *, path: str = f"/integration/{ORDER_ID}") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: webhook-yourapp.retrievetl.com\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ---------------------------------------------------------------- the parser


@pytest.mark.unit
def test_a_plain_request_is_parsed_whole() -> None:
    request = parsed(PLAIN + b"POST /next")
    assert (request.path, request.integration_id, request.xml_route) == (
        f"/integration/{ORDER_ID}",
        ORDER_ID,
        False,
    )
    assert request.host == "webhook-yourapp.retrievetl.com"
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"total":1}'
    assert request.size == len(PLAIN)  # the next request starts right after it


@pytest.mark.unit
def test_the_xml_route_and_optional_whitespace_are_read_as_aiohttp_reads_them() -> None:
    raw = plain(b"<a/>", path="/integration/abc-1.2_x~/xml").replace(
        b"Content-Type: application/json", b"Content-Type:\t application/xml"
    )
    request = parsed(raw)
    assert (request.integration_id, request.xml_route) == ("abc-1.2_x~", True)
    assert request.headers["Content-Type"] == "application/xml"


@pytest.mark.unit
@pytest.mark.parametrize("cut", [1, 20, len(PLAIN) - 12, len(PLAIN) - 1])
def test_an_incomplete_request_waits_for_more(cut: int) -> None:
    head_complete = cut >= PLAIN.index(b"\r\n\r\n") + 4
    assert parse_plain_request(PLAIN[:cut]) == (len(PLAIN) if head_complete else 0)


def parsed(raw: bytes | bytearray) -> PlainRequest:
    request = parse_plain_request(raw)
    assert isinstance(request, PlainRequest)
    return request


@pytest.mark.unit
def test_a_whitespace_flood_in_a_header_costs_what_an_ordinary_header_costs() -> None:
    """A header line of thousands of tabs that then fails must fail at once: with
    backtracking quantifiers it cost ~3,000 times an ordinary line of the same length (55 ms,
    on the event loop). Compared with an ordinary header in the same run, not timed alone."""
    prefix = f"POST /integration/{ORDER_ID} HTTP/1.1\r\nHost: x\r\nX: ".encode()
    hostile = prefix + b"\t" * 8000 + b"\x01\r\n\r\n"
    ordinary = prefix + b"a" * 8000 + b"\x01\r\n\r\n"

    def cost(raw: bytes) -> float:
        started = time.perf_counter()
        for _ in range(20):
            with pytest.raises(HandOver):
                parse_plain_request(raw)
        return time.perf_counter() - started

    cost(ordinary)  # warm
    assert cost(hostile) < 20 * cost(ordinary) + 0.005


NOT_PLAIN = {
    "GET": PLAIN.replace(b"POST ", b"GET ", 1),
    "lower-case method": PLAIN.replace(b"POST ", b"post ", 1),
    "HTTP/1.0": PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "absolute form": PLAIN.replace(b"POST /", b"POST http://x/", 1),
    "query": PLAIN.replace(b" HTTP/1.1", b"?a=1 HTTP/1.1", 1),
    "percent in the id": PLAIN.replace(ORDER_ID.encode(), b"%2e%2e", 1),
    "dot segment id": PLAIN.replace(ORDER_ID.encode(), b"..", 1),
    "trailing slash": PLAIN.replace(b" HTTP/1.1", b"/ HTTP/1.1", 1),
    "other route": PLAIN.replace(b"/integration/", b"/integrations/", 1),
    "id over 255": PLAIN.replace(ORDER_ID.encode(), b"a" * 256, 1),
    "chunked": PLAIN.replace(b"Content-Length: 11", b"Transfer-Encoding: chunked", 1),
    "CL and TE": PLAIN.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1),
    "Expect": PLAIN.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1),
    "Upgrade": PLAIN.replace(b"\r\n\r\n", b"\r\nUpgrade: websocket\r\n\r\n", 1),
    "Proxy-Connection": PLAIN.replace(b"\r\n\r\n", b"\r\nProxy-Connection: close\r\n\r\n", 1),
    "Sec-WebSocket-Key1": PLAIN.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Key1: x\r\n\r\n", 1),
    "Connection: close": PLAIN.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1),
    "Connection: upgrade": PLAIN.replace(b"\r\n\r\n", b"\r\nConnection: upgrade\r\n\r\n", 1),
    "two Content-Length": PLAIN.replace(b"\r\n\r\n", b"\r\nContent-Length: 11\r\n\r\n", 1),
    "a header twice": PLAIN.replace(b"\r\n\r\n", b"\r\nX-A: 1\r\nx-a: 2\r\n\r\n", 1),
    "signed Content-Length": PLAIN.replace(b"Length: 11", b"Length: +11", 1),
    "Content-Length list": PLAIN.replace(b"Length: 11", b"Length: 11, 11", 1),
    "no Content-Length": PLAIN.replace(b"Content-Length: 11\r\n", b"", 1),
    "no Host": PLAIN.replace(b"Host: webhook-yourapp.retrievetl.com\r\n", b"", 1),
    "body over the lean bound": plain(b"x" * (MAX_LEAN_BODY + 1)),
    "space before the colon": PLAIN.replace(b"Content-Type:", b"Content-Type :", 1),
    "space after the value": PLAIN.replace(b"application/json", b"application/json ", 1),
    "tab after the value": PLAIN.replace(b"application/json", b"application/json\t", 1),
    "line folding": PLAIN.replace(b"\r\n\r\n", b"\r\nX-A: 1\r\n 2\r\n\r\n", 1),
    "bare LF": PLAIN.replace(b"Content-Type: application/json\r\n", b"X: 1\nY: 2\r\n", 1),
    "NUL in a value": PLAIN.replace(b"application/json", b"application/\x00json", 1),
    "DEL in a value": PLAIN.replace(b"application/json", b"application/\x7fjson", 1),
    "non-token name": PLAIN.replace(b"Content-Type:", b"Content(Type):", 1),
    "empty name": PLAIN.replace(b"\r\n\r\n", b"\r\n: x\r\n\r\n", 1),
    "head over the lean bound": PLAIN.replace(
        b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * MAX_LEAN_HEAD + b"\r\n\r\n", 1
    ),
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "too many headers": PLAIN.replace(
        b"\r\n\r\n", b"".join(b"\r\nX-%d: 1" % i for i in range(70)) + b"\r\n\r\n", 1
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", NOT_PLAIN)
def test_a_request_that_is_not_plain_is_handed_over(name: str) -> None:
    with pytest.raises(HandOver):
        parse_plain_request(NOT_PLAIN[name])


class _Protocol(BaseProtocol):
    pass


def aiohttp_parse(raw: bytes) -> list[tuple[Any, bytes]]:
    """What aiohttp's own server parser makes of `raw`: (message, body) pairs."""
    loop = asyncio.new_event_loop()
    try:
        protocol = _Protocol(loop)
        parser = http_parser.HttpRequestParserC(  # the C parser (llhttp) aiohttp serves with
            protocol, loop, 2**16, max_line_size=8190, max_field_size=8190, max_headers=128
        )
        messages, _, _ = parser.feed_data(raw)
        return [(message, payload.read_nowait()) for message, payload in messages]
    finally:
        loop.close()


# Mostly plain requests with a few perturbations, so that the lean parser takes about half of
# them and the comparison happens; the other half are its refusals.
_TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_SAFE_NAMES = st.sampled_from(
    ["Content-Type", "X-Shopify-Topic", "X-Forwarded-For", "User-Agent", "X-Hub-Signature",
     "cookie", "accept-encoding", "X-WC-Webhook-Signature"]
)  # fmt: skip
_SPECIAL_NAMES = st.sampled_from(
    ["Transfer-Encoding", "Connection", "Expect", "Content-Length", "Host", "Upgrade",
     "Proxy-Connection", "Sec-WebSocket-Key1"]
)  # fmt: skip
_NAMES = st.one_of(
    *[_SAFE_NAMES] * 6, *[st.text(_TOKEN_CHARS, min_size=1, max_size=12)] * 3, _SPECIAL_NAMES
)
_PLAIN_VALUE = st.lists(
    st.sampled_from(
        [b"a", b"Z", b"0", b"/", b";", b"=", b'"', b",", b"-", b"\xc3\xa9", b"\xff", b" ", b"\t"]
    ),
    max_size=12,
).map(b"".join)
_ODD_VALUE = st.sampled_from(
        [b"keep-alive", b"close", b"chunked", b"100-continue", b"\x00", b"\x7f", b"\x01", b"x\ry",
         b"x\ny", b"\x0b", b"+1", b"-1", b"00011", b"1 1"]
)  # fmt: skip
_VALUE_BYTES = st.one_of(*[_PLAIN_VALUE] * 12, _ODD_VALUE)
_LINE = st.tuples(
    _NAMES.map(str.encode), st.sampled_from([b": "] * 12 + [b":", b":\t", b" :"]), _VALUE_BYTES
).map(lambda p: p[0] + p[1] + p[2])
_ODD_LINE = st.sampled_from([b" folded", b"\tfolded", b"nocolon", b":novalue", b"X\x00: 1"])
_LINES = st.lists(st.one_of(*[_LINE] * 16, _ODD_LINE), max_size=5)
_ID = st.text(string.ascii_letters + string.digits + "._~-", min_size=1, max_size=24)
_TARGETS = st.one_of(
    *[_ID.map(lambda i: f"/integration/{i}")] * 4,
    *[_ID.map(lambda i: f"/integration/{i}/xml")] * 4,
    st.sampled_from(
        ["/integration/..", "/integration/%41", "/integration/a?b=c", "/integration//x",
         "//integration/a", "/integration/a/xml/", "*", "http://h/integration/a"]
    ),
)  # fmt: skip


@pytest.mark.unit
def test_the_c_parser_is_the_one_aiohttp_serves_with() -> None:
    assert http_parser.HttpRequestParser is http_parser.HttpRequestParserC


@given(
    method=st.sampled_from([b"POST"] * 24 + [b"GET", b"post", b"POST "]),
    target=_TARGETS,
    version=st.sampled_from([b"HTTP/1.1"] * 24 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]),
    lines=_LINES,
    body=st.binary(max_size=40),
    length=st.sampled_from(["exact"] * 24 + ["missing", "short", "long"]),
    host=st.sampled_from([True] * 24 + [False]),
    ending=st.sampled_from([b"\r\n"] * 24 + [b"\n"]),
)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(
    method=b"POST", target=f"/integration/{ORDER_ID}", version=b"HTTP/1.1",
    lines=[b"Content-Type:\t application/json"], body=b"{}", length="exact", host=True,
    ending=b"\r\n",
)  # fmt: skip
@pytest.mark.unit
def test_whatever_the_lean_parser_serves_aiohttp_parses_the_same(
    method: bytes,
    target: str,
    version: bytes,
    lines: list[bytes],
    body: bytes,
    length: str,
    host: bool,
    ending: bytes,
) -> None:
    """A differential test: for generated requests, malformed ones included, each time the
    lean parser takes a request, aiohttp's parser reads the same method, path, version,
    headers and body from the same bytes, and the next request starts at the same byte."""
    head = [method + b" " + target.encode() + b" " + version]
    if host:
        head.append(b"Host: x")
    head += lines
    if length != "missing":
        declared = {"exact": len(body), "short": max(len(body) - 1, 0), "long": len(body) + 1}
        head.append(b"Content-Length: %d" % declared[length])
    raw = ending.join(head) + ending + ending + body
    follower = plain(b"{}")
    try:
        lean = parse_plain_request(raw + follower)
    except HandOver:
        return  # aiohttp decides: nothing to compare
    if not isinstance(lean, PlainRequest):
        return  # incomplete: nothing served yet
    assert_aiohttp_reads_the_same(raw + follower, lean, follower)


def assert_aiohttp_reads_the_same(raw: bytes, lean: PlainRequest, follower: bytes) -> None:
    """aiohttp's parser reads from `raw[:lean.size]` the request the lean parser took, and the
    clean `follower` after it (what a sender declared too short leaves behind is the next
    request's business)."""
    theirs = aiohttp_parse(raw[: lean.size] + follower)
    assert len(theirs) == 2, "aiohttp reads a different boundary"
    message, their_body = theirs[0]
    assert message.method == "POST"
    assert message.version == (1, 1)
    assert message.path == lean.path
    # Names compare case-insensitively: aiohttp writes the names it knows its own way
    # (`cookie` -> `Cookie`); every lookup of ours is case-insensitive.
    assert [(k.lower(), v) for k, v in message.headers.items()] == [
        (k.lower(), v) for k, v in lean.headers.items()
    ]
    assert message.headers.get("Host") == lean.host
    assert not message.should_close
    assert not message.chunked
    assert not message.upgrade
    assert their_body == lean.body
    assert theirs[1][1] == b"{}"


_FIELD_VALUE = st.lists(
    st.sampled_from(
        [b"a", b"Z", b"0", b"/", b";", b"=", b'"', b",", b"-", b"\xc3\xa9", b"\xff", b"\x80",
         b" ", b"\t", b"  ", b"(", b"~"]
    ),
    max_size=16,
).map(b"".join).map(lambda v: v.strip(b" \t"))  # fmt: skip


@given(
    integration_id=_ID.filter(lambda i: i[0].isalnum()),
    xml=st.booleans(),
    fields=st.dictionaries(
        _SAFE_NAMES | st.text(_TOKEN_CHARS, min_size=1, max_size=12).map(lambda n: "X-" + n),
        st.tuples(st.sampled_from([b": ", b":", b":\t", b":  \t "]), _FIELD_VALUE),
        max_size=6,
    ),
    keep_alive=st.sampled_from([None, b"keep-alive", b"Keep-Alive", b"KEEP-ALIVE"]),
    zeros=st.integers(0, 3),
    body=st.binary(max_size=64),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.unit
def test_every_plain_request_is_served_lean_and_read_as_aiohttp_reads_it(
    integration_id: str,
    xml: bool,
    fields: dict[str, tuple[bytes, bytes]],
    keep_alive: bytes | None,
    zeros: int,
    body: bytes,
) -> None:
    """Requests plain by construction (the lean path must take each one, so this cannot pass
    by handing everything over): whitespace around values, non-ASCII bytes, any `keep-alive`
    spelling, leading zeros in `Content-Length`; aiohttp reads each the same way."""
    target = f"/integration/{integration_id}" + ("/xml" if xml else "")
    lines = [f"POST {target} HTTP/1.1".encode(), b"Host: webhook-a.example"]
    names = {"host", "content-length", "connection"}
    for name, (colon, value) in fields.items():
        if name.lower() in names:
            continue
        names.add(name.lower())
        lines.append(name.encode() + colon + value)
    if keep_alive is not None:
        lines.append(b"Connection: " + keep_alive)
    lines.append(b"Content-Length: " + b"0" * zeros + str(len(body)).encode())
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    follower = plain(b"{}")
    lean = parse_plain_request(raw + follower)
    assert isinstance(lean, PlainRequest), raw
    assert lean.size == len(raw)
    assert (lean.integration_id, lean.xml_route, lean.body) == (integration_id, xml, body)
    assert_aiohttp_reads_the_same(raw + follower, lean, follower)


# ---------------------------------------------------------------- the connection


def lean_only(test: Any) -> Any:
    """A test of lean connections (with Redis): `receiver_client` on the lean path only."""
    test = pytest.mark.parametrize("receiver_client", ["lean"], indirect=True)(test)
    return pytest.mark.redis(test)


@pytest.fixture
async def lean_client(receiver_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    return await receiver_client(provider_of(app), header_timeout=0.5, body_timeout=1.0)


async def connect(client: TestClient[web.Request, web.Application]) -> socket.socket:
    assert client.server.port is not None
    sock = socket.create_connection(("127.0.0.1", client.server.port))
    sock.setblocking(False)
    return sock


async def read_answers(sock: socket.socket, count: int, timeout: float = 10) -> list[bytes]:
    """`count` answers (status line to the end of the body), in the order they came."""
    loop = asyncio.get_running_loop()
    raw = bytearray()
    at = 0
    answers: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(answers) < count:
            head_end = raw.find(b"\r\n\r\n", at)
            if head_end >= 0:
                head = bytes(raw[at:head_end]).decode("latin-1")
                size = int(head.lower().split("content-length: ", 1)[1].split("\r\n")[0])
                end = head_end + 4 + size
                if len(raw) >= end:
                    answers.append(bytes(raw[at:end]))
                    at = end
                    continue
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            raw += chunk
    return answers


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def handovers(client: TestClient[web.Request, web.Application]) -> float:
    return float(client.app[METRICS_KEY].lean_handovers._value.get())


@lean_only
async def test_plain_requests_stay_lean_and_the_first_other_one_hands_over_in_order(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    chunked = (
        f"POST /integration/{ORDER_ID} HTTP/1.1\r\nHost: webhook-yourapp.retrievetl.com\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\n{x}\r\n0\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    sock = await connect(lean_client)
    try:
        await loop.sock_sendall(sock, PLAIN + PLAIN)
        first = await read_answers(sock, 2)
        assert [status(a) for a in first] == [200, 200]
        assert handovers(lean_client) == 0
        # One write: a plain request, one aiohttp must parse, then plain ones again.
        unknown = plain(path="/integration/nope")
        await loop.sock_sendall(sock, PLAIN + chunked + unknown + PLAIN)
        rest = await read_answers(sock, 4)
    finally:
        sock.close()
    assert [status(a) for a in rest] == [200, 400, 404, 200]  # in the order asked
    assert b"Invalid JSON" in rest[1]
    assert json.loads(rest[2].split(b"\r\n\r\n", 1)[1]) == {
        "result": False,
        "error": "Integration nope not found",
    }
    assert handovers(lean_client) == 1
    exported = generate_latest(lean_client.app[METRICS_KEY].registry).decode()
    assert "retrieve_receiver_lean_handovers_total 1.0" in exported.splitlines()
    counts = lean_client.app[METRICS_KEY].requests.counts
    assert counts[(ORDER_ID, 200)] == 4


@lean_only
async def test_a_body_slower_than_the_head_deadline_is_finished_by_aiohttp(
    receiver_client: ClientFactory,
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(provider_of(app), header_timeout=0.5, body_timeout=10)
    loop = asyncio.get_running_loop()
    sock = await connect(client)
    try:
        await loop.sock_sendall(sock, PLAIN[:-5])
        await asyncio.sleep(0.8)  # past header_timeout=0.5, well within body_timeout
        await loop.sock_sendall(sock, PLAIN[-5:])
        answers = await read_answers(sock, 1)
    finally:
        sock.close()
    assert [status(a) for a in answers] == [200]
    assert handovers(client) == 1


@lean_only
async def test_a_body_that_never_completes_gets_aiohttps_408(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    loop = asyncio.get_running_loop()
    sock = await connect(lean_client)
    try:
        await loop.sock_sendall(sock, PLAIN[:-5])
        answers = await read_answers(sock, 1, timeout=5)
        assert await loop.sock_recv(sock, 1) == b""  # and the connection is closed
    finally:
        sock.close()
    assert [status(a) for a in answers] == [408]
    assert b"Request body not received within 1 s" in answers[0]


@lean_only
async def test_a_slow_head_is_closed_at_the_deadline_without_an_answer(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    loop = asyncio.get_running_loop()
    sock = await connect(lean_client)
    try:
        await loop.sock_sendall(sock, PLAIN[:30])
        async with asyncio.timeout(5):
            assert await loop.sock_recv(sock, 100) == b""
    finally:
        sock.close()
    assert handovers(lean_client) == 0
    assert lean_client.app[GUARD_KEY].timed_out == 1


@lean_only
async def test_a_sender_that_half_closes_after_its_requests_gets_every_answer(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    loop = asyncio.get_running_loop()
    sock = await connect(lean_client)
    try:
        await loop.sock_sendall(sock, PLAIN * 3)
        sock.shutdown(socket.SHUT_WR)
        answers = await read_answers(sock, 3)
        async with asyncio.timeout(5):
            assert await loop.sock_recv(sock, 100) == b""  # then closed
    finally:
        sock.close()
    assert [status(a) for a in answers] == [200, 200, 200]


@lean_only
async def test_a_sender_that_does_not_read_its_answers_is_paused_not_buffered(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    """Pipelined requests from a sender that never reads: the answers fill the socket, the
    connection stops reading, and what it holds stays bounded; once the sender reads, every
    request is answered, in order."""
    count = 8_000
    batch = PLAIN * count  # ~1.2 MB in, ~1.6 MB of answers out: 8 times what may be held
    loop = asyncio.get_running_loop()
    assert lean_client.server.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", lean_client.server.port))
    await asyncio.sleep(0.05)  # accepted
    connection = next(
        c for c in lean_client.app[GUARD_KEY].open.values() if isinstance(c, LeanConnection)
    )
    # Small socket buffers on both sides, so that a few MB are enough to fill them.
    server_socket = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = 0
    try:
        async with asyncio.timeout(30):
            stalled = 0
            while sent < len(batch) and stalled < 5:  # until the server holds back for 1 s
                try:
                    sent += sock.send(batch[sent : sent + 16384])
                    stalled = 0
                    await asyncio.sleep(0)
                except BlockingIOError:
                    stalled += 1
                    await asyncio.sleep(0.2)
        assert sent < len(batch), "the server read everything: nothing was held back"
        assert connection.buffered <= MAX_BUFFERED + 2**18
        rest = asyncio.create_task(loop.sock_sendall(sock, batch[sent:]))
        answers = await read_answers(sock, count, timeout=120)
        await rest
    finally:
        sock.close()
    assert len(answers) == count
    assert {status(a) for a in answers} == {200}
    assert handovers(lean_client) == 0


@lean_only
async def test_the_head_is_read_once_while_its_body_comes_in_small_pieces(
    receiver_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieve_receiver import lean

    app = make_app(integrations=[make_integration(ORDER_ID)])
    # A deadline far away: fifty small sleeps on a loaded machine must not hand the request over.
    lean_client = await receiver_client(provider_of(app), header_timeout=10)

    calls = 0
    parse = lean.parse_plain_request

    def counted(buffer: bytes | bytearray) -> Any:
        nonlocal calls
        calls += 1
        return parse(buffer)

    monkeypatch.setattr(lean, "parse_plain_request", counted)
    body = b'{"pad": "' + b"x" * 190 + b'"}'
    raw = plain(body)
    head_end = raw.index(b"\r\n\r\n") + 4
    loop = asyncio.get_running_loop()
    sock = await connect(lean_client)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_sendall(sock, raw[:head_end])
        await asyncio.sleep(0.05)
        for at in range(head_end, len(raw), 4):  # 50 packets of body
            await loop.sock_sendall(sock, raw[at : at + 4])
            await asyncio.sleep(0.002)
        answers = await read_answers(sock, 1)
    finally:
        sock.close()
    assert [status(a) for a in answers] == [200]
    assert calls <= 3  # the head, then the whole request (not once per packet)
    assert handovers(lean_client) == 0


@pytest.mark.redis
@pytest.mark.parametrize("receiver_client", ["lean"], indirect=True)
async def test_without_a_head_deadline_a_slow_body_goes_to_aiohttps_body_timeout(
    receiver_client: ClientFactory,
) -> None:
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(provider_of(app), header_timeout=0, body_timeout=0.5)
    loop = asyncio.get_running_loop()
    sock = await connect(client)
    try:
        await loop.sock_sendall(sock, PLAIN[:-5])
        answers = await read_answers(sock, 1, timeout=5)
    finally:
        sock.close()
    assert [status(a) for a in answers] == [408]
    assert handovers(client) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "expected"), [("", True), ("1", True), ("true", True), ("0", False), ("off", False)]
)
def test_retrieve_lean_http_turns_the_lean_path_on_or_off(raw: str, expected: bool) -> None:
    assert ReceiverSettings.from_env({"RETRIEVE_LEAN_HTTP": raw}).lean_http is expected


@pytest.mark.unit
def test_a_retrieve_lean_http_that_is_not_a_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="RETRIEVE_LEAN_HTTP='maybe' is not a flag"):
        ReceiverSettings.from_env({"RETRIEVE_LEAN_HTTP": "maybe"})


@pytest.mark.unit
@pytest.mark.parametrize("lean_http", [True, False])
async def test_the_public_site_serves_lean_connections_only_when_the_settings_say_so(
    lean_http: bool,
) -> None:
    app = init_app(ReceiverSettings(lean_http=lean_http), provider_of(make_app()))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = public_site(runner, "127.0.0.1", 0)
        assert runner.server is not None
        made = site.guard.connection(site.guard, runner.server)
    finally:
        await runner.cleanup()
    assert isinstance(made, LeanConnection) is lean_http


@lean_only
async def test_a_request_under_way_is_not_closed_as_idle(receiver_client: ClientFactory) -> None:
    """The idle timeout counts from the last answer only while nothing is under way: a head
    that came in time, with its body still arriving past the idle timeout, is answered."""
    app = make_app(integrations=[make_integration(ORDER_ID)])
    client = await receiver_client(provider_of(app), idle_timeout=2, header_timeout=10)
    loop = asyncio.get_running_loop()
    sock = await connect(client)
    try:
        await loop.sock_sendall(sock, PLAIN)
        assert [status(a) for a in await read_answers(sock, 1)] == [200]
        await loop.sock_sendall(sock, PLAIN[:-5])  # the head and part of the body, in time
        await asyncio.sleep(2.5)  # past the idle timeout since the answer
        await loop.sock_sendall(sock, PLAIN[-5:])
        answers = await read_answers(sock, 1)
    finally:
        sock.close()
    assert [status(a) for a in answers] == [200]


@pytest.mark.unit
async def test_connections_accepted_as_the_listener_stops_are_closed() -> None:
    """Connections accepted just before the listener closed (their `connection_made` runs
    after the stop began) are closed too, not left serving after shutdown."""
    loop = asyncio.get_running_loop()
    for _ in range(5):
        app = init_app(ReceiverSettings(), provider_of(make_app()))
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = public_site(runner, "127.0.0.1", 0)
        await site.start()
        port = site.bound_port

        def flood(port: int = port) -> list[socket.socket]:
            opened = []
            for _ in range(50):
                try:
                    opened.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                except OSError:
                    break
            return opened

        floods = [loop.run_in_executor(None, flood) for _ in range(4)]
        await asyncio.sleep(0.003)
        await stop_public_site(site, 1)
        opened = [s for group in await asyncio.gather(*floods) for s in group]
        await asyncio.sleep(0.05)
        try:
            still_serving = [
                c
                for c in app[GUARD_KEY].open.values()
                if not cast("asyncio.Transport", c._transport).is_closing()
            ]
            assert still_serving == []
        finally:
            await runner.cleanup()
            for sock in opened:
                sock.close()


@lean_only
async def test_a_head_started_while_answers_cannot_be_written_keeps_its_deadline(
    lean_client: TestClient[web.Request, web.Application],
) -> None:
    """A sender that does not read its answers pauses the connection's writing; a partial
    head it sends meanwhile gets its deadline once the answers are read (before, the deadline
    was dropped and only the idle timeout closed the connection)."""
    loop = asyncio.get_running_loop()
    assert lean_client.server.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", lean_client.server.port))
    await asyncio.sleep(0.05)
    connection = next(
        c for c in lean_client.app[GUARD_KEY].open.values() if isinstance(c, LeanConnection)
    )
    # Small buffers on the server's side, so that a few dozen answers fill them.
    transport = cast("asyncio.Transport", connection._transport)
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport.set_write_buffer_limits(high=2048)
    counts = lean_client.app[METRICS_KEY].requests.counts
    sent = 0
    try:
        async with asyncio.timeout(30):
            while not connection._write_paused:  # one request at a time, each one answered
                await loop.sock_sendall(sock, PLAIN)
                sent += 1
                while counts.get((ORDER_ID, 200), 0) < sent or connection.task:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        assert connection.buffered == 0
        await loop.sock_sendall(sock, PLAIN[:30])  # a next head starts
        await asyncio.sleep(0.8)  # past header_timeout=0.5, while writing is paused
        answers = await read_answers(sock, sent, timeout=10)
        async with asyncio.timeout(5):  # then the partial head has its 0.5 s, not 120
            assert await loop.sock_recv(sock, 100) == b""
    finally:
        sock.close()
    assert len(answers) == sent
    assert {status(a) for a in answers} == {200}
