"""`retrieve sink`: a throwaway HTTP destination that prints each request it receives."""

from __future__ import annotations

import argparse
import json
import sys

from aiohttp import web

from .terminal import safe_text


def make_sink_app(status: int = 200) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            shown = json.dumps(json.loads(body), ensure_ascii=False)
        except ValueError:
            shown = body.decode("utf-8", "replace")
        print(f"{request.method} {safe_text(request.path_qs)} {safe_text(shown)}", flush=True)
        return web.json_response({"received": True}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


def run_sink(args: argparse.Namespace) -> int:
    print(
        f"sink listening on http://{args.host}:{args.port}/ (answers {args.status})",
        file=sys.stderr,
    )
    web.run_app(
        make_sink_app(args.status), host=args.host, port=args.port, print=None, access_log=None
    )
    return 0
