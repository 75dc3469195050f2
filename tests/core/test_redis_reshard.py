"""A slot moved with `redis-cli --cluster reshard` while webhooks arrive, on a real 3-master
cluster: 503s only while the slot migrates, every 200 delivered to a real sink."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from redis.crc import key_slot

from harness.redis_cluster import ClusterServers, redis_cli
from harness.waits import wait_for
from retrieve_cli.sink import Sink
from retrieve_core.config import ApplicationConfig
from retrieve_core.keys import AppKeys
from retrieve_receiver.app import init_app
from retrieve_receiver.settings import ReceiverSettings
from retrieve_worker import Worker, WorkerSettings
from tests.receiver.conftest import make_app, make_integration, make_provider

pytestmark = pytest.mark.redis
WAIT = 60.0
CALLERS = 8
BEFORE = AFTER = 120  # webhooks answered before the reshard starts and after it ends
DURING_AT_MOST = 3000  # a bound on the webhooks sent while it runs
RESHARD_SECONDS = 60
FILLER_KEYS = 20_000


@dataclass
class Phases:
    """What the callers saw, by when they saw it. `window` is True from just before the reshard
    starts until just after it ends; a request overlaps it if it was sent or answered then."""

    window: bool = False
    reshard_ended: bool = False
    answered_after: int = 0
    sent_during: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # webhook id -> app
    statuses: Counter[tuple[str, int, bool]] = field(default_factory=Counter)


def lowest_slot(port: int, cluster: ClusterServers) -> int:
    """The lowest slot a master serves: the one `reshard --cluster-slots 1` moves."""
    node_id = redis_cli(port, "CLUSTER", "MYID").strip()
    for line in redis_cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if fields[0] == node_id:
            starts = [int(p.partition("-")[0]) for p in fields[8:] if p[0].isdigit()]
            return min(starts)
    raise LookupError(f"node {port} not in CLUSTER NODES")


def app_name_in_slot(namespace: str, slot: int) -> str:
    for n in range(400_000):
        name = f"moving-{n}"
        if key_slot(AppKeys(namespace, name).jobs.encode()) == slot:
            return name
    raise AssertionError(f"no application name found for slot {slot}")


def _delivered(sink: Sink) -> set[str]:
    return {r.body["id"] for r in sink.received if isinstance(r.body, dict) and "id" in r.body}


def _names(prefix: str) -> list[str]:
    return [f"{prefix}-{n}" for n in range(1000)]


def _master(cluster: ClusterServers, namespace: str, name: str) -> int:
    return cluster.master_of_slot(key_slot(AppKeys(namespace, name).jobs.encode()))


def consistent(cluster: ClusterServers) -> bool:
    done = subprocess.run(
        ["redis-cli", "--cluster", "check", f"127.0.0.1:{cluster.ports[0]}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.returncode == 0 and "[OK] All 16384 slots covered." in done.stdout


def reshard(cluster: ClusterServers, source: int, target: int) -> str:
    source_id = redis_cli(source, "CLUSTER", "MYID").strip()
    target_id = redis_cli(target, "CLUSTER", "MYID").strip()
    done = subprocess.run(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}",
         "--cluster-from", source_id, "--cluster-to", target_id, "--cluster-slots", "1",
         "--cluster-pipeline", "2", "--cluster-yes"],
        capture_output=True, text=True, timeout=RESHARD_SECONDS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


async def test_a_slot_resharded_under_load_refuses_only_while_it_moves_and_loses_nothing(
    redis_cluster: ClusterServers,
    aiohttp_client: AiohttpClient,
    sink: Sink,
    record_property: Callable[[str, object], None],
) -> None:
    await asyncio.to_thread(
        wait_for, "the cluster is consistent", lambda: consistent(redis_cluster)
    )
    masters = redis_cluster.masters()
    source, target = masters[0], masters[1]
    slot = lowest_slot(source, redis_cluster)
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    names = [app_name_in_slot(namespace, slot)]
    for port in masters[1:]:  # one application on each of the other masters, left in place
        names.append(
            next(
                name for name in _names("still") if _master(redis_cluster, namespace, name) == port
            )
        )
    apps = [
        make_app(
            name,
            namespace=namespace,
            integrations=[
                make_integration(
                    f"INT{i}",
                    app=name,
                    destinations=[{"name": "sink", "http": {"url": f"{sink.url}/app/{name}"}}],
                )
            ],
        )
        for i, name in enumerate(names)
    ]
    provider = make_provider(*apps)
    settings = ReceiverSettings(redis_url=redis_cluster.url, dev_mode=True)
    receiver = await aiohttp_client(init_app(settings, provider))
    worker = Worker(
        WorkerSettings(redis_url=redis_cluster.url, consumer="w1", block_ms=200,
                       claim_idle_ms=3000, claim_interval_seconds=1.0,
                       shutdown_timeout_seconds=5),
        provider,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    phases = Phases()
    started = asyncio.Event()
    try:
        assert await _post_many(receiver, apps, phases, BEFORE) == BEFORE
        # Other data in the slot (a real slot holds many applications' keys), so that the
        # migration lasts long enough for the load to meet it.
        filler = Redis(port=source)
        try:
            pipe = filler.pipeline(transaction=False)
            for n in range(FILLER_KEYS):
                pipe.set(f"{AppKeys(namespace, names[0]).tag}:filler:{n}", "x" * 1000)
            await pipe.execute()
        finally:
            await filler.aclose()
        callers = asyncio.create_task(_load_during(receiver, apps, phases, started))
        await started.wait()
        moving_since = time.monotonic()
        output = await asyncio.to_thread(reshard, redis_cluster, source, target)
        window_seconds = time.monotonic() - moving_since  # reported, not asserted
        phases.reshard_ended = True
        phases.window = False
        during = await callers
        after = await _post_many(receiver, apps, phases, AFTER)

        assert redis_cluster.master_of_slot(slot) == target, output
        for _ in range(int(WAIT / 0.05)):  # bounded wait for every 200 to arrive (or not)
            if set(phases.accepted) <= _delivered(sink):
                break
            await asyncio.sleep(0.05)
        delivered = _delivered(sink)
        lost = set(phases.accepted) - delivered
        refused = {k: v for k, v in phases.statuses.items() if k[1] != 200}
        report = (
            f"reshard of slot {slot} under load: sent {sum(phases.statuses.values())} "
            f"({during} during the {window_seconds:.1f} s migration), 200 {len(phases.accepted)}, "
            f"503 {sum(v for k, v in refused.items() if k[1] == 503)} "
            f"(all inside the migration window: {all(k[2] for k in refused)}), "
            f"delivered {len(delivered & set(phases.accepted))}, lost {len(lost)}"
        )
        print(f"\n{report}")
        record_property("reshard", report)
        assert not lost, sorted(lost)[:20]
        # A refusal only while the slot moved, only 503, only for the application moving.
        assert set(refused) <= {(names[0], 503, True)}, refused
        assert after == AFTER  # once moved, every webhook of every application is accepted
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT)


async def _send(
    receiver: TestClient[Request, Application],
    app: ApplicationConfig,
    integration: str,
    phases: Phases,
) -> int:
    webhook = uuid.uuid4().hex
    overlaps = phases.window
    response = await receiver.post(
        f"/integration/{integration}",
        json={"id": webhook},
        headers={"Host": f"webhook-{app.name}.retrievetl.com"},
    )
    await response.read()
    overlaps = overlaps or phases.window
    phases.statuses[(app.name, response.status, overlaps)] += 1
    if response.status == 200:
        phases.accepted[webhook] = app.name
    return response.status


async def _post_many(
    receiver: TestClient[Request, Application],
    apps: list[ApplicationConfig],
    phases: Phases,
    count: int,
) -> int:
    numbers = iter(range(count))
    accepted = 0

    async def caller() -> None:
        nonlocal accepted
        for n in numbers:
            i = n % len(apps)
            status = await _send(receiver, apps[i], f"INT{i}", phases)
            accepted += status == 200

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return accepted


async def _load_during(
    receiver: TestClient[Request, Application],
    apps: list[ApplicationConfig],
    phases: Phases,
    started: asyncio.Event,
) -> int:
    """Sends from just before the reshard starts until it has ended (at most DURING_AT_MOST)."""
    phases.window = True
    started.set()

    async def caller() -> None:
        while not phases.reshard_ended and phases.sent_during < DURING_AT_MOST:
            i = phases.sent_during % len(apps)
            phases.sent_during += 1
            await _send(receiver, apps[i], f"INT{i}", phases)

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return phases.sent_during
