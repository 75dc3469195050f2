"""The contract's answers: `{"result": bool, "error": str}` and the error carrying one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .routing import AppRoute

SUCCESS_BODY = b'{"result": true, "error": ""}'


def success() -> web.Response:
    return web.Response(body=SUCCESS_BODY, content_type="application/json")


def failure(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"result": False, "error": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@dataclass(eq=False)
class WebhookError(Exception):
    """A refused request. `app.answered` answers it and writes its log record."""

    status: int
    message: str
    app: AppRoute | None = None
    """The application the log record goes to (None: nobody to attribute it to)."""
    integration_id: str = ""
    source_ip: str = ""
    payload: bytes = b""
    format: str = ""
    headers: dict[str, str] | None = None
    """Extra answer headers (`Retry-After` of a 429)."""

    def __str__(self) -> str:
        return f"{self.status} {self.message}"
