"""Fault tests: real receiver and worker processes, a real Redis, a sink the test owns.

Each test prints one line of counts (run pytest with -s to see them) and asserts that every
request answered 200 was delivered to the sink or is in the dead letters, and nothing else was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from retrieve_cli.sink import Sink
from tests.support.fleet import Fleet
from tests.support.redis_server import RedisServer


@pytest.fixture
async def fleet(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> AsyncIterator[Fleet]:
    """The test's fleet over its own Redis and sink: `fleet.configure(...)` (optional), then
    `fleet.receiver()` / `fleet.worker()`; every process is stopped at the end."""
    fleet = Fleet(tmp_path / "config", private_redis_server, sink)
    try:
        yield fleet
    finally:
        await fleet.close()
