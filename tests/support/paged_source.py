"""A paginated JSON API the tests run on loopback: the source a scheduled integration polls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .ports import free_port


@dataclass
class PagedSource:
    """`GET /orders` answers `{"data": [...], "links": {"next": "/orders?cursor=N"}}` (nextLink
    style) or, with `?page=N`, page N of `page_size` items (pageParam style, 1-based)."""

    items: list[dict[str, Any]]
    page_size: int = 10
    status: int = 200
    required_headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    queries: list[dict[str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/orders"

    async def _orders(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return web.json_response({"error": "unauthorized"}, status=401)
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        if "page" in request.query:
            start = (int(request.query["page"]) - 1) * self.page_size
            return web.json_response({"data": self.items[start : start + self.page_size]})
        start = int(request.query.get("cursor", "0"))
        end = start + self.page_size
        body: dict[str, Any] = {"data": self.items[start:end], "links": {}}
        if end < len(self.items):
            body["links"]["next"] = f"/orders?cursor={end}"
        return web.json_response(body)

    async def start(self) -> PagedSource:
        app = web.Application()
        app.router.add_get("/orders", self._orders)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
