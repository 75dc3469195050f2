"""`retrieve sink`: a throwaway HTTP destination that prints each request it receives.

The same `Sink` is the destination the tests run: it records every request, answers with a status
that can be set for all paths, per path, or scripted per request, and can stall.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .terminal import safe_text


@dataclass
class SinkRequest:
    """One request as the sink saw it; `status` is the answer (0 until answered)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    """The JSON body decoded, else the text; None when empty."""
    status: int = 0


@dataclass
class Sink:
    """An HTTP destination on `host:port` (a free port by default, kept across restarts).

    `requests` holds every request, in the order they arrived; `received` the deliveries: those
    answered 2xx whose sender was still there to read the answer (a sender killed while the sink
    stalled delivered nothing).
    """

    host: str = "127.0.0.1"
    port: int = 0
    status: int = 200
    """The answer on every path without `always` or a script."""
    delay: float = 0.0
    """Seconds every request stalls before its answer (`delays` per path)."""
    on_request: Callable[[SinkRequest], None] | None = None
    """Called with each request once answered (`retrieve sink` prints it)."""
    always: dict[str, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    scripts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    requests: list[SinkRequest] = field(default_factory=list)
    received: list[SinkRequest] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first request."""
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """The next answers on `path`, in order; after them `always`, else `status`."""
        self.scripts[path].extend(statuses)

    def requests_to(self, path: str) -> list[SinkRequest]:
        """Every request to `path` (whatever it was answered)."""
        return [r for r in self.requests if r.path == path]

    def bodies(self, path: str) -> list[Any]:
        """The bodies delivered to `path`."""
        return [r.body for r in self.received if r.path == path]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        seen = SinkRequest(
            request.method, request.path, request.query_string, dict(request.headers), body
        )
        self.requests.append(seen)
        self.arrived.set()
        delay = self.delays.get(request.path, self.delay)
        if delay:
            await asyncio.sleep(delay)
        script = self.scripts[request.path]
        seen.status = script.pop(0) if script else self.always.get(request.path, self.status)
        if self.on_request is not None:
            self.on_request(seen)
        transport = request.transport
        if transport is None or transport.is_closing():
            # The sender went away while we stalled (e.g. a SIGKILLed worker): not a delivery.
            raise web.HTTPServiceUnavailable()
        if seen.status < 300:
            self.received.append(seen)
        return web.json_response({"received": True}, status=seen.status)

    async def start(self) -> Sink:
        """Listens (again, on the same port after `stop`)."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_answered(self, count: int, timeout: float = 20.0) -> None:
        """Waits until `count` requests were answered (delivered or not), stalls included."""
        deadline = time.monotonic() + timeout
        while sum(1 for r in self.requests if r.status) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"sink answered fewer than {count}: {self.requests}")
            await asyncio.sleep(0.05)

    async def wait_for(self, count: int, path: str | None = None, timeout: float = 60.0) -> None:
        """Waits until `count` deliveries (to `path`, if given) arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for r in self.received if path is None or r.path == path) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"sink got {len(self.received)} deliveries, wanted {count} on {path}: {self.received}"
        )


def print_request(request: SinkRequest) -> None:
    body = request.body
    shown = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    shown = "" if body is None else shown
    path = request.path + (f"?{request.query}" if request.query else "")
    print(f"{request.method} {safe_text(path)} {safe_text(shown)}", flush=True)


def run_sink(args: argparse.Namespace) -> int:
    print(
        f"sink listening on http://{args.host}:{args.port}/ (answers {args.status})",
        file=sys.stderr,
    )
    sink = Sink(host=args.host, port=args.port, status=args.status, on_request=print_request)
    web.run_app(sink.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0
