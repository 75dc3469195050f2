"""The baseline of the receiver benchmark: a bare aiohttp handler returning the same JSON."""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = b'{"result": true, "error": ""}'


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/integration/{id}", accept)
    # Same event loop as `retrieve receiver` (uvloop when installed), so the comparison is fair.
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop
    )


if __name__ == "__main__":
    main()
