"""Fixtures shared by every tier. Servers are real processes on loopback, stopped by pid."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from harness.redis_cluster import ClusterServers, SentinelServers
from retrieve_cli.sink import Sink
from tests.support.redis_server import RedisServer

# Every test carries exactly one tier marker; the hook fails collection otherwise.
pytest_plugins = ["tests.support.tiers"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests isolate themselves with unique app names.
    Every acknowledged write is on disk (`appendfsync always`), as in the restart tests."""
    server = RedisServer(appendfsync="always").start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it: a restart keeps
    every acknowledged write (`appendfsync always`)."""
    server = RedisServer(appendfsync="always").start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterServers]:
    """A real 3-master, 3-replica Redis Cluster for the session (tests use unique app names)."""
    with ClusterServers() as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelServers]:
    """A primary, a replica and three sentinels of the test's own (tests fail it over)."""
    with SentinelServers() as servers:
        yield servers


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """The HTTP destination of a test (the product's `retrieve sink`): records every request
    and the deliveries; answers and stalls as the test sets, for all paths or per path."""
    server = await Sink().start()
    try:
        yield server
    finally:
        await server.stop()
