"""A flood of refused requests against a real receiver process and a Redis of its own (issue 12, 4).

Before: log bounds held only after the periodic trim (every 60 s), and a refused request stored
up to `payloadBytes` (64 KiB) of its body: 1,500 unsigned 64 KiB bodies took Redis from 3.8 MB to
124 MB in 2 s. Now the count bound holds at every write, and a refused request stores at most
`RETRIEVE_REJECTED_PAYLOAD_BYTES` (1 KiB) of its body: the flood below grows Redis by less than
the bound SECURITY.md states (`maxRecords` x (1 KiB + 1.5 KiB of record overhead)).

Accepted requests too: before, their records were bounded only by the periodic trim (an
application with `maxRecords: 100` held 3,500 records); now the enqueue script removes the
oldest past the bound in the same call, so the bound holds during and right after a flood.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_core.logstore import LogStore
from tests.support.fleet import INTEGRATION, KEYS, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAX_RECORDS = 100
REJECTED_PAYLOAD = 1024
RECORD_OVERHEAD = 1536
SLACK = 2 * 1024 * 1024
FLOOD = 1500
BODY = b'{"junk": "' + b"x" * (64 * 1024 - 12) + b'"}'
BINARY = b"\xff\xfe" * (32 * 1024)  # no UTF-8 at all: each byte is stored as U+FFFD (3 bytes)
SIGNED = "SIGNED1"


@pytest.fixture
def receiver(tmp_path: Path, private_redis_server: RedisServer) -> Iterator[Receiver]:
    signed = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "signed", "namespace": KEYS.namespace},
        "spec": {
            "application": KEYS.app,
            "integrationId": SIGNED,
            "verify": {"preset": "github", "secretRefs": [{"name": "gh", "key": "secret"}]},
            "destinations": [{"name": "none", "http": {"url": "http://127.0.0.1:9/x"}}],
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gh", "namespace": KEYS.namespace},
        "data": {"secret": base64.b64encode(b"flood-test-secret").decode()},
    }
    config = write_fleet_config(
        tmp_path / "config",
        "http://127.0.0.1:9",
        application={"webhookLogs": {"maxRecords": MAX_RECORDS}},
        extra=[signed, secret],
    )
    server = Receiver(config, private_redis_server.url).start()
    try:
        yield server
    finally:
        server.process.stop()


async def flood(
    url: str, source: str, count: int, concurrency: int = 16, body: bytes = BODY
) -> list[int]:
    statuses: list[int] = []
    numbers = iter(range(count))
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def lane() -> None:
            for _ in numbers:
                async with session.post(url, data=body) as answer:
                    await answer.read()
                    statuses.append(answer.status)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return statuses


async def used_memory(redis: Redis) -> int:
    """Redis's memory without its clients' buffers (which hold requests in flight, not data)."""
    info = await redis.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


@pytest.mark.parametrize("body", [BODY, BINARY], ids=["json", "binary"])
async def test_a_flood_of_refused_requests_stays_within_the_log_bound(
    receiver: Receiver, private_redis_server: RedisServer, body: bytes
) -> None:
    redis = Redis.from_url(private_redis_server.url)
    try:
        before = await used_memory(redis)
        refused = await flood(
            f"{receiver.url}/integration/{INTEGRATION}", "127.0.0.9", FLOOD, body=body
        )
        unsigned = await flood(
            f"{receiver.url}/integration/{SIGNED}", "127.0.0.1", FLOOD, body=body
        )
        after = await used_memory(redis)

        assert set(unsigned) == {401}
        assert set(refused) == {403}
        assert await redis.zcard(KEYS.log_index) == MAX_RECORDS
        hashes = [key async for key in redis.scan_iter(match=f"{KEYS.log_record_prefix}*")]
        assert len(hashes) == MAX_RECORDS
        # What the application's keys hold, exactly; and Redis as a whole, where the script
        # cache, key tables and the allocator add their own (SLACK).
        stored = 0
        async for key in redis.scan_iter(match=f"*{KEYS.tag}*"):
            stored += int(await redis.memory_usage(key, samples=0) or 0)  # exact, not sampled
        bound = MAX_RECORDS * (REJECTED_PAYLOAD + RECORD_OVERHEAD)
        print(f"\nRedis used_memory {before} -> {after} bytes; the app's keys {stored} bytes")
        assert stored < bound
        assert after - before < bound + SLACK

        # The records kept are the newest, the 401s: each with 1 KiB of its 64 KiB body, in
        # bytes as stored (a binary body's U+FFFD take 3 bytes each: fewer of its bytes fit).
        records = await LogStore(redis, KEYS).query(limit=MAX_RECORDS)
        assert {r.http_status for r in records} == {401}
        for key in hashes:
            assert REJECTED_PAYLOAD - 3 <= await redis.hstrlen(key, "payload") <= REJECTED_PAYLOAD
        if body is BODY:
            assert {len(r.payload) for r in records} == {REJECTED_PAYLOAD}
        else:
            assert all(set(r.payload) == {"\ufffd"} for r in records)
        assert all(r.payload_truncated for r in records)
    finally:
        await redis.aclose()


async def test_a_flood_of_accepted_requests_is_held_to_max_records_during_and_after_it(
    receiver: Receiver, private_redis_server: RedisServer
) -> None:
    redis = Redis.from_url(private_redis_server.url)
    sizes: list[int] = []
    flooding = True

    async def watch() -> None:  # the log's size all along the flood, not only at its end
        while flooding:
            sizes.append(await redis.zcard(KEYS.log_index))
            await asyncio.sleep(0.01)

    try:
        watcher = asyncio.create_task(watch())
        try:
            accepted = await flood(
                f"{receiver.url}/integration/{INTEGRATION}", "127.0.0.1", FLOOD, body=b'{"n": 1}'
            )
        finally:
            flooding = False
            await watcher
        assert set(accepted) == {200}
        assert await redis.xlen(KEYS.jobs) == FLOOD  # every job kept, only records bounded
        assert await redis.zcard(KEYS.log_index) == MAX_RECORDS
        hashes = [key async for key in redis.scan_iter(match=f"{KEYS.log_record_prefix}*")]
        assert len(hashes) == MAX_RECORDS
        assert max(sizes) <= MAX_RECORDS
        records = await LogStore(redis, KEYS).query(limit=MAX_RECORDS)
        assert {r.status for r in records} == {"queued"}
    finally:
        await redis.aclose()
