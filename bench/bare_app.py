"""The baselines of the receiver benchmark: the same JSON answer with no Redis, on three HTTP
layers, to show what the HTTP layer itself costs per request.

    python bench/bare_app.py PORT            # aiohttp web.Application, one route (the ceiling)
    python bench/bare_app.py PORT lowlevel   # aiohttp's low-level web.Server (no router)
    python bench/bare_app.py PORT llhttp     # an asyncio Protocol on httptools (llhttp) alone
    python bench/bare_app.py PORT prepared   # web.Application, the answer written pre-serialized

The `llhttp` server is a floor, not a server anyone should deploy: keep-alive HTTP/1.1 with
Content-Length bodies only, no limits, no timeouts, no error answers.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web

ANSWER = b'{"result": true, "error": ""}'
RAW_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
    % (len(ANSWER), ANSWER)
)


async def accept(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def accept_prepared(request: web.BaseRequest) -> web.StreamResponse:
    from retrieve_receiver.errors import success

    await request.read()
    return success()


class LlhttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's TCPTransport is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        self._transport.write(RAW_ANSWER)


async def serve(port: int, kind: str) -> None:
    if kind == "llhttp":
        server = await asyncio.get_running_loop().create_server(LlhttpProtocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    runner: web.BaseRunner
    if kind == "lowlevel":
        runner = web.ServerRunner(web.Server(accept, access_log=None))
    else:
        app = web.Application()
        app.router.add_post("/integration/{id}", accept_prepared if kind == "prepared" else accept)
        runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "app"
    # Same event loop as `retrieve receiver` (uvloop when installed), so the comparison is fair.
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, kind))
    else:
        uvloop.run(serve(port, kind))


if __name__ == "__main__":
    main()
