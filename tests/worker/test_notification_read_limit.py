"""SECURITY.md: of a notification target's answer "at most 64 KiB" is read (`notify`).

A target answering with an endless body cannot make a worker read (and hold) it: the target
below offers 32 MiB and gets to write only what the socket buffers take before the worker closes
the connection, having read its 64 KiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from retrieve_core.config import SecretStore
from retrieve_core.models import NotificationEvent, NotificationSpec
from retrieve_core.notifications import Notice
from retrieve_worker.notify import READ_LIMIT_BYTES, Notifier
from tests.support.ports import free_port

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

OFFERED = 32 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Flood:
    url: str
    written: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def flood() -> AsyncIterator[Flood]:
    port = free_port()
    state = Flood(f"http://127.0.0.1:{port}/hook")

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while state.written < OFFERED:
                await response.write(b"x" * CHUNK)
                state.written += CHUNK
        except (ConnectionError, RuntimeError):
            pass  # the worker hung up, as it should
        finally:
            state.done.set()
        return response

    app = web.Application()
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_a_notification_target_cannot_make_the_worker_read_more_than_64_kib(
    flood: Flood,
) -> None:
    spec = NotificationSpec.model_validate(
        {"name": "ops", "url": flood.url, "events": ["deadLetter"]}
    )
    notice = Notice(
        notification="ops", event=NotificationEvent.DEAD_LETTER, namespace="ns",
        application="app", integration="orders", integration_id="ORDERS", job_id="j1",
        error="boom", at=1_700_000_000.0, count=1,
    )  # fmt: skip
    notifier = Notifier(attempts=1)
    try:
        attempt = await notifier.send(spec, notice, SecretStore())
    finally:
        await notifier.close()
    assert (attempt.result, attempt.http_status) == ("sent", 200)
    async with asyncio.timeout(30):
        await flood.done.wait()
    # What the kernel's socket buffers took, not the 32 MiB offered.
    assert READ_LIMIT_BYTES <= flood.written < OFFERED // 2
