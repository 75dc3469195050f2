"""Fault tests: real receiver and worker processes, a real Redis, a sink the test owns.

Each test prints one line of counts (run pytest with -s to see them) and asserts that every
request answered 200 was delivered to the sink or is in the dead letters, and nothing else was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.processes import Sink


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink().start()
    try:
        yield server
    finally:
        await server.stop()
