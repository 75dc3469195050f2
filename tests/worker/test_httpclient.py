"""The destinations' HTTP client against real servers on loopback (aiohttp and raw sockets)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from retrieve_worker.destinations import create_client
from retrieve_worker.httpclient import DestinationClient, HttpError
from tests.support.ports import free_port

pytestmark = pytest.mark.unit

Serve = Callable[[web.Application], Awaitable[str]]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Runs aiohttp apps on loopback; returns each one's base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
        runners.append(runner)
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """Runs a socket-level server whose answers the test writes byte by byte."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[DestinationClient]:
    http = DestinationClient(user_agent="retrieve-test")
    yield http
    await http.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def test_requests_share_a_keep_alive_connection_and_carry_what_was_asked(
    serve: Serve, client: DestinationClient
) -> None:
    seen: list[tuple[object, str, str, dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((peer, request.method, request.path_qs, dict(request.headers),
                     await request.read()))  # fmt: skip
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_route("*", "/orders", record)
    base = await serve(app)
    for n in range(5):
        answer = await client.request(
            "PUT", f"{base}/orders?n={n}", {"X-Token": "t", "Content-Length": "999"}, b"{}", 5
        )
        assert (answer.status, answer.body) == (201, b'{"ok": true}')

    assert len({peer for peer, *_ in seen}) == 1  # one connection for all five
    _, method, path, headers, body = seen[-1]
    assert (method, path, body) == ("PUT", "/orders?n=4", b"{}")
    assert headers["Host"] == base.removeprefix("http://")
    assert headers["X-Token"] == "t"
    assert headers["Content-Length"] == "2"  # the client's own, not the header passed in
    assert headers["User-Agent"] == "retrieve-test"


async def test_requests_in_flight_are_bounded(serve: Serve) -> None:
    current = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.05)
        current -= 1
        return web.Response()

    app = web.Application()
    app.router.add_post("/", slow)
    base = await serve(app)
    bounded = DestinationClient(user_agent="t", max_connections=2)
    try:
        answers = await asyncio.gather(
            *(bounded.request("POST", base + "/", {}, b"", 5) for _ in range(8))
        )
    finally:
        await bounded.close()
    assert [a.status for a in answers] == [200] * 8
    assert peak == 2


async def test_chunked_answers_are_read_and_long_ones_cut_at_the_read_limit(
    serve: Serve,
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=502)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"x" * 1000)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", chunked)
    base = await serve(app)
    small = DestinationClient(user_agent="t", read_limit=100, drain_limit=10_000)
    try:
        answer = await small.request("POST", base + "/", {}, b"", 5)
        assert (answer.status, answer.body) == (502, b"x" * 100)
        # 40 kB is past the drain limit: that connection was closed, a new one works.
        again = await small.request("POST", base + "/", {}, b"", 5)
        assert again.status == 502
    finally:
        await small.close()


async def test_an_answer_without_length_ends_at_eof(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    async def eof_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    base = await raw_server(eof_delimited)
    for _ in range(3):  # and each time on a new connection
        answer = await client.request("POST", base + "/", {}, b"{}", 5)
        assert (answer.status, answer.body) == (200, b"all of it")


async def test_interim_answers_are_skipped(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    async def continue_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    base = await raw_server(continue_then_ok)
    answer = await client.request("POST", base + "/", {}, b"{}", 5)
    assert (answer.status, answer.body) == (204, b"")


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    """Keep-alive answered, then the server hangs up: the next request still gets through."""
    connections = 0

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    base = await raw_server(one_answer_per_connection)
    for _ in range(10):
        answer = await client.request("POST", base + "/", {}, b"{}", 5)
        assert answer.status == 200
    assert connections == 10


async def test_a_request_on_a_connection_dropped_unanswered_goes_once_more_on_a_new_one(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    """The keep-alive race, made certain: each connection answers one request, then takes the
    next one and hangs up without a word (as a server closing an idle connection does)."""
    requests = 0

    async def one_answer_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal requests
        await _read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_request(reader)
        requests += 1
        writer.close()

    base = await raw_server(one_answer_then_drop)
    first = await client.request("POST", base + "/", {}, b"{}", 5)
    second = await client.request("POST", base + "/", {}, b"{}", 5)
    assert (first.status, second.status) == (200, 200)
    assert requests == 3  # the second was sent twice: dropped unanswered, then answered


async def test_a_server_that_hangs_up_without_answering_is_an_error(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    base = await raw_server(hang_up)
    with pytest.raises(HttpError, match="before any answer"):
        await client.request("POST", base + "/", {}, b"{}", 5)


async def test_garbage_is_not_an_answer(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    base = await raw_server(garbage)
    with pytest.raises(HttpError, match="invalid HTTP answer"):
        await client.request("POST", base + "/", {}, b"{}", 5)


async def test_a_silent_server_times_out(
    raw_server: Callable[[RawHandler], Awaitable[str]], client: DestinationClient
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    base = await raw_server(silent)
    with pytest.raises(TimeoutError):
        await client.request("POST", base + "/", {}, b"{}", 0.3)


async def test_nothing_listening_is_a_refused_connection(client: DestinationClient) -> None:
    with pytest.raises(ConnectionRefusedError):
        await client.request("POST", f"http://127.0.0.1:{free_port()}/", {}, b"{}", 5)


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://127.0.0.1:9/", {"X-Evil": "a\r\nX-Injected: 1"}),
        ("http://127.0.0.1:9/", {"X-Evil\r\nX-Injected": "1"}),
        ("http://127.0.0.1:9/", {"X-Evil": "a\x00b"}),
        ("ftp://127.0.0.1/", {}),
    ],
)
async def test_requests_that_would_smuggle_headers_are_refused_unsent(
    client: DestinationClient, url: str, headers: dict[str, str]
) -> None:
    with pytest.raises(HttpError):
        await client.request("POST", url, headers, b"{}", 5)


async def test_credentials_in_the_url_are_sent_as_basic_authentication(
    serve: Serve, client: DestinationClient
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response()

    app = web.Application()
    app.router.add_post("/", record)
    base = await serve(app)
    await client.request("POST", base.replace("://", "://user:p%40ss@") + "/", {}, b"", 5)
    assert seen == ["Basic dXNlcjpwQHNz"]  # user:p@ss


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_verified_against_the_trusted_certificates(
    serve: Callable[..., Awaitable[str]], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="secure")

    app = web.Application()
    app.router.add_post("/", ok)
    base = await serve(app, server_context)

    trusting = DestinationClient(
        user_agent="t", ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    default = DestinationClient(user_agent="t")  # the system's CAs do not know this one
    try:
        answer = await trusting.request("POST", base + "/", {}, b"{}", 5)
        assert (answer.status, answer.body) == (200, b"secure")
        with pytest.raises(ssl.SSLCertVerificationError):
            await default.request("POST", base + "/", {}, b"{}", 5)
    finally:
        await trusting.close()
        await default.close()


async def test_of_an_endless_destination_answer_64_kib_are_kept_and_about_1_mib_is_read(
    serve: Serve,
) -> None:
    """SECURITY.md: "of an answer, the first 64 KiB are kept and at most 1 MiB is read".

    The client as every worker makes it (`destinations.create_client`, its default limits)
    against a destination offering a 32 MiB answer: the worker keeps 64 KiB of it and hangs
    up after reading about 1 MiB; the destination gets to write only that and what the socket
    buffers take (its own send buffer is kept small, so the bound below is tight).
    """
    offered, chunk = 32 * 1024 * 1024, 16 * 1024
    written = 0
    done = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal written
        await request.read()
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while written < offered:
                await response.write(b"x" * chunk)
                written += chunk
        except (ConnectionError, RuntimeError):
            pass  # the worker hung up, as it should
        finally:
            done.set()
        return response

    app = web.Application()
    app.router.add_post("/", endless)
    base = await serve(app)
    client = create_client()
    try:
        answer = await client.request("POST", base + "/", {}, b"{}", 30)
    finally:
        await client.close()
    async with asyncio.timeout(30):
        await done.wait()
    assert (answer.status, len(answer.body)) == (200, 64 * 1024)
    assert answer.body == b"x" * (64 * 1024)
    # About 1 MiB read, plus what the kernel's socket buffers took: far from the 32 MiB offered.
    assert 1024 * 1024 <= written < 3 * 1024 * 1024, f"{written} bytes written"
