"""A real 3-master, 3-replica Redis Cluster: applications on every shard, the packed hot paths
grouped by node, MOVED after a failover, NOSCRIPT on a node, one slot per script call."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import TryAgainError

import retrieve_core.resp
from harness.redis_cluster import ClusterServers, redis_cli, slot_owner
from harness.waits import wait_for
from retrieve_cli.sink import Sink
from retrieve_core.config import ApplicationConfig
from retrieve_core.enqueue import Delivery, Enqueuer, Outcome
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogRecord, LogStatus, LogStore, add_record
from retrieve_core.models import RateLimitSpec
from retrieve_core.redisclient import RedisClient, connect_redis
from retrieve_core.resp import DurabilityError
from retrieve_operator.status_counters import read_counts, rebuild_dead_counts
from retrieve_receiver.admin import init_admin_app
from retrieve_receiver.app import init_app
from retrieve_receiver.ratelimit import Bucket, RateLimiter
from retrieve_receiver.settings import ReceiverSettings
from retrieve_worker import Worker, WorkerSettings
from retrieve_worker.queue import Committer, Completion, DelayedMover, Finish, ensure_group
from retrieve_worker.replay import replay_dead_letters
from tests.receiver.conftest import make_app, make_integration, make_provider

pytestmark = pytest.mark.redis
WAIT = 30.0


@pytest.fixture
async def cluster_client(redis_cluster: ClusterServers) -> AsyncIterator[RedisClient]:
    client = connect_redis(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


def apps_on_distinct_masters(cluster: ClusterServers, count: int = 3) -> list[tuple[str, str]]:
    """(namespace, name) of `count` applications whose slots live on different masters."""
    chosen: dict[int, tuple[str, str]] = {}
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    for n in range(1000):
        keys = AppKeys(namespace, f"app-{n}")
        master = cluster.master_of_slot(key_slot(keys.jobs.encode()))
        chosen.setdefault(master, (namespace, keys.app))
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("no applications found on distinct masters")


def delivery(n: int, dedupe_id: str | None = None) -> Delivery:
    return Delivery(
        job_id=f"job-{uuid.uuid4().hex}", job_json=b'{"n": %d}' % n, integration_id="ABC123",
        received_at=time.time(), source_ip="127.0.0.1", format="json", body=b"{}",
        payload_limit=100, log_max_age_seconds=600,
        dedupe_id=dedupe_id, dedupe_ttl_seconds=60 if dedupe_id else 0,
    )  # fmt: skip


async def test_applications_whose_slots_live_on_different_masters_all_accept_and_deliver(
    redis_cluster: ClusterServers,
    cluster_client: RedisClient,
    aiohttp_client: AiohttpClient,
    sink: Sink,
) -> None:
    placed = apps_on_distinct_masters(redis_cluster)
    apps: list[ApplicationConfig] = [
        make_app(
            name,
            namespace=namespace,
            integrations=[
                make_integration(
                    f"INT{i}",
                    app=name,
                    destinations=[{"name": "sink", "http": {"url": f"{sink.url}/app/{i}"}}],
                )
            ],
        )
        for i, (namespace, name) in enumerate(placed)
    ]
    provider = make_provider(*apps)
    settings = ReceiverSettings(redis_url=redis_cluster.url, dev_mode=True)
    receiver = await aiohttp_client(init_app(settings, provider))
    admin = await aiohttp_client(init_admin_app(settings, provider))
    worker = Worker(
        WorkerSettings(redis_url=redis_cluster.url, consumer="w1", block_ms=200,
                       shutdown_timeout_seconds=5),
        provider,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        per_app = 20
        answers = await asyncio.gather(
            *(
                _post(receiver, app, f"INT{i}", {"app": i, "n": n})
                for i, app in enumerate(apps)
                for n in range(per_app)
            )
        )
        assert answers == [(200, {"result": True, "error": ""})] * (per_app * len(apps))
        await sink.wait_for(per_app * len(apps), timeout=WAIT)
        for i in range(len(apps)):
            assert sorted(b["n"] for b in sink.bodies(f"/app/{i}")) == list(range(per_app))
        for app in apps:
            records = await LogStore(cluster_client, app.keys).query(limit=100)
            assert len(records) == per_app
            await _eventually(lambda k=app.keys: _all_succeeded(cluster_client, k, per_app))
        ready = await admin.get("/readyz")
        assert ready.status == 200, await ready.text()
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT)


async def _post(
    client: TestClient[Request, Application], app: ApplicationConfig, integration: str, body: Any
) -> tuple[int, Any]:
    response = await client.post(
        f"/integration/{integration}",
        json=body,
        headers={"Host": f"webhook-{app.name}.retrievetl.com"},
    )
    return response.status, await response.json()


async def _all_succeeded(redis: RedisClient, keys: AppKeys, count: int) -> bool:
    records = await LogStore(redis, keys).query(limit=count + 10)
    return len(records) == count and all(r.status is LogStatus.SUCCEEDED for r in records)


async def _eventually(check: Any, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_one_enqueue_batch_is_one_packed_write_per_master(
    redis_cluster: ClusterServers,
    cluster_client: RedisClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [AppKeys(ns, name) for ns, name in apps_on_distinct_masters(redis_cluster)]
    writes: Counter[str] = Counter()
    roundtrip = retrieve_core.resp._roundtrip

    async def counting(pool: Any, data: bytes, count: int) -> list[Any]:
        writes[getattr(pool, "name", "pool")] += 1
        return await roundtrip(pool, data, count)

    monkeypatch.setattr(retrieve_core.resp, "_roundtrip", counting)
    enqueuer = Enqueuer(cluster_client)
    await enqueuer.store(keys[0], delivery(0))  # loads the script where needed, warms up
    writes.clear()

    # Stored together: the first alone, the other nine (three per app) in the next batch.
    outcomes = await asyncio.gather(
        *(enqueuer.store(k, delivery(n)) for n in range(4) for k in keys)
    )

    assert outcomes == [Outcome.QUEUED] * 12
    assert sum(writes.values()) <= 2 * len(keys)
    assert set(writes) <= {f"127.0.0.1:{port}" for port in redis_cluster.masters()}
    for k in keys:
        assert await cluster_client.xlen(k.jobs) == 4 + (k == keys[0])


async def test_calls_follow_moved_after_a_replica_takes_over_its_masters_slots(
    redis_cluster: ClusterServers, cluster_client: RedisClient
) -> None:
    namespace, name = apps_on_distinct_masters(redis_cluster, 1)[0]
    keys = AppKeys(namespace, name)
    enqueuer = Enqueuer(cluster_client)
    assert await enqueuer.store(keys, delivery(0)) is Outcome.QUEUED
    await ensure_group(cluster_client, keys)

    slot = key_slot(keys.jobs.encode())
    old_master = redis_cluster.master_of_slot(slot)
    replica = redis_cluster.replica_of(old_master)
    assert redis_cli(replica, "CLUSTER", "FAILOVER").strip() == "OK"
    wait_for("the replica serves the slot", lambda: redis_cluster.master_of_slot(slot) == replica)
    wait_for(
        "every node agrees",
        lambda: all(slot_owner(port, slot) == replica for port in redis_cluster.ports),
    )

    # The client's topology still names the old master: MOVED, refresh, sent again.
    assert await enqueuer.store(keys, delivery(1)) is Outcome.QUEUED
    entries = await _read_entries(cluster_client, keys)
    assert len(entries) == 2
    committer = Committer(cluster_client, keys)
    await asyncio.gather(*(committer.commit(Completion(entry_id)) for entry_id in entries))
    assert await cluster_client.xlen(keys.jobs) == 0


async def _read_entries(redis: RedisClient, keys: AppKeys) -> list[str]:
    """Entry ids the consumer `c1` reads (RESP2 and RESP3 shapes)."""
    read: Any = await redis.xreadgroup("retrieve-workers", "c1", {keys.jobs: ">"}, count=10)
    entries = read[0][1] if isinstance(read, list) else read[keys.jobs.encode()][0]
    return [entry_id.decode() for entry_id, _ in entries]


async def test_durability_waits_for_the_replicas_of_each_applications_master(
    redis_cluster: ClusterServers, cluster_client: RedisClient
) -> None:
    keys = [AppKeys(ns, name) for ns, name in apps_on_distinct_masters(redis_cluster)]
    enqueuer = Enqueuer(cluster_client)

    def durable(n: int, replicas: int) -> Delivery:
        stored = delivery(n)
        stored.wait = (replicas, 200)
        return stored

    confirmed = await asyncio.gather(*(enqueuer.store(k, durable(0, 1)) for k in keys))
    assert confirmed == [Outcome.QUEUED] * len(keys)  # each master has one replica

    short = await asyncio.gather(
        *(enqueuer.store(k, durable(1, 2)) for k in keys), return_exceptions=True
    )
    assert all(isinstance(r, DurabilityError) for r in short), short
    assert "1 of 2 replica(s) confirmed" in str(short[0])


async def test_a_call_during_a_slot_migration_follows_ask_then_the_new_owner(
    redis_cluster: ClusterServers, cluster_client: RedisClient
) -> None:
    """A fresh application's slot, migrating: the source answers ASK, the importing node (asked
    with ASKING) answers TRYAGAIN (the call's keys are not all there yet), so the call fails
    as a whole and stores nothing; once the slot has moved, MOVED leads to the new owner."""
    namespace, name = apps_on_distinct_masters(redis_cluster, 1)[0]
    keys = AppKeys(namespace, name)
    slot = key_slot(keys.jobs.encode())
    source = redis_cluster.master_of_slot(slot)
    target = next(port for port in redis_cluster.masters() if port != source)
    source_id = redis_cli(source, "CLUSTER", "MYID").strip()
    target_id = redis_cli(target, "CLUSTER", "MYID").strip()
    enqueuer = Enqueuer(cluster_client)
    await enqueuer.store(AppKeys(namespace, "warm"), delivery(0))  # topology known
    assert (
        redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id).strip() == "OK"
    )
    assert (
        redis_cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id).strip() == "OK"
    )

    with pytest.raises(TryAgainError):
        await enqueuer.store(keys, delivery(1))

    for port in redis_cluster.masters():  # the (empty) slot now belongs to the target
        redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    wait_for("every node agrees", lambda: all(
        slot_owner(port, slot) == target for port in redis_cluster.ports
    ))  # fmt: skip
    assert await enqueuer.store(keys, delivery(2)) is Outcome.QUEUED
    assert await cluster_client.xlen(keys.jobs) == 1
    assert redis_cluster.master_of_slot(slot) == target


async def test_scripts_are_loaded_on_the_node_that_answers_noscript(
    redis_cluster: ClusterServers, cluster_client: RedisClient
) -> None:
    keys = [AppKeys(ns, name) for ns, name in apps_on_distinct_masters(redis_cluster)]
    enqueuer = Enqueuer(cluster_client)
    await asyncio.gather(*(enqueuer.store(k, delivery(0)) for k in keys))
    for port in redis_cluster.masters():
        assert redis_cli(port, "SCRIPT", "FLUSH").strip() == "OK"

    outcomes = await asyncio.gather(*(enqueuer.store(k, delivery(1)) for k in keys))

    assert outcomes == [Outcome.QUEUED] * len(keys)
    for k in keys:
        assert await cluster_client.xlen(k.jobs) == 2


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


async def test_every_key_a_script_touches_for_one_call_shares_one_slot(
    redis_cluster: ClusterServers, cluster_client: RedisClient
) -> None:
    """MONITOR on the application's master while every script and MULTI of the product runs:
    each key any of them touches (inside Lua included) is in the application's slot."""
    namespace, name = apps_on_distinct_masters(redis_cluster, 1)[0]
    keys = AppKeys(namespace, name)
    slot = key_slot(keys.jobs.encode())
    master = redis_cluster.master_of_slot(slot)
    reader, writer = await asyncio.open_connection("127.0.0.1", master)
    writer.write(b"MONITOR\r\n")
    assert await reader.readline() == b"+OK\r\n"
    try:
        await _run_every_script(cluster_client, keys)
        marker = f"end-{uuid.uuid4().hex}"
        assert redis_cli(master, "ECHO", marker).strip() == marker
        lines = await _monitor_until(reader, marker)
    finally:
        writer.close()

    touched: set[str] = set()
    script_commands = 0
    for line in lines:
        words = [w.encode().decode("unicode_escape") for w in _QUOTED.findall(line)]
        if "lua]" in line:
            script_commands += 1
        touched.update(w for w in words[1:] if w.startswith("retrieve:"))
    assert script_commands >= 20, lines
    assert touched
    assert {key_slot(k.encode()) for k in touched} == {slot}, sorted(touched)


async def _run_every_script(redis: RedisClient, keys: AppKeys) -> None:
    enqueuer = Enqueuer(redis)
    for n in range(3):
        assert await enqueuer.store(keys, delivery(n, dedupe_id="same")) in set(Outcome)
    await ensure_group(redis, keys)
    entries = await _read_entries(redis, keys)
    committer = Committer(redis, keys)
    await committer.commit(
        Completion(entries[0], Finish.RETRY, job_id="j1", job_json="{}", due=0.0,
                   integration_id="ABC123", log_fields={"status": "retrying"})
    )  # fmt: skip
    await DelayedMover(redis).move_due(keys)
    entries = await _read_entries(redis, keys)
    await committer.commit(
        Completion(entries[0], Finish.DEAD, job_id="j1",
                   job_json='{"id": "j1"}', integration_id="ABC123", error="boom", failed=True)
    )  # fmt: skip
    await replay_dead_letters(redis, keys, "ABC123")
    spec = RateLimitSpec.model_validate({"requestsPerSecond": 10, "burst": 5})
    buckets = [Bucket(keys.rate_limit("app"), spec), Bucket(keys.rate_limit("int:A"), spec)]
    await RateLimiter(redis).acquire(buckets)
    await read_counts(redis, keys, ["ABC123"], time.time())
    assert await rebuild_dead_counts(redis, keys) is not None
    pipe = redis.pipeline(transaction=True)
    record = LogRecord(id="r1", ts=time.time(), source_ip="127.0.0.1", integration_id="ABC123",
                       http_status=403, status=LogStatus.REJECTED, format="json")  # fmt: skip
    add_record(pipe, keys, record, 600)
    await pipe.execute()
    assert await LogStore(redis, keys).trim(max_records=1, max_age_seconds=600) > 0
    assert await redis.zcard(keys.log_index) == 1
    assert isinstance(redis, RedisCluster)


async def _monitor_until(reader: asyncio.StreamReader, marker: str) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(WAIT):
        while True:
            line = (await reader.readline()).decode("utf-8", "replace").strip()
            if marker in line:
                return lines
            lines.append(line)
