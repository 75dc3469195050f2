"""Enqueue benchmark: the receiver's hot path alone (`Enqueuer.store`), one Redis vs a cluster.

In one process on uvloop, `--concurrency` callers store 1 KiB deliveries for `--apps`
applications as fast as they can; prints deliveries/s and the process's CPU per delivery for a
private redis-server and, with `--cluster`, for a 3-master, 3-replica Redis Cluster on loopback
(the apps spread over its slots), there also with `spec.redis.durability` (WAIT 1 replica, the
cost of a confirmed copy). Usage:
.venv/bin/python bench/enqueue_bench.py [--deliveries 20000] [--rounds 3] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieve_core.enqueue import Delivery, Enqueuer  # noqa: E402
from retrieve_core.keys import AppKeys  # noqa: E402
from retrieve_core.redisclient import connect_redis  # noqa: E402
from tests.support.redis_cluster import ClusterServers  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

BODY = b'{"order": "' + b"x" * 1000 + b'"}'


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_round(
    url: str, deliveries: int, concurrency: int, apps: int, wait: tuple[int, int]
) -> tuple[float, float]:
    redis = connect_redis(url)
    keys = [AppKeys("bench", f"app-{n}") for n in range(apps)]
    enqueuer = Enqueuer(redis)
    counter = iter(range(deliveries))

    async def caller() -> None:
        for n in counter:
            delivery = Delivery(
                job_id=f"job-{n}", job_json=b'{"payload": %b}' % BODY, integration_id="ABC123",
                received_at=time.time(), source_ip="127.0.0.1", format="json", body=BODY,
                payload_limit=65536, log_max_age_seconds=3600, wait=wait,
            )  # fmt: skip
            await enqueuer.store(keys[n % apps], delivery)

    try:
        await enqueuer.store(keys[0], Delivery("warm", b"{}", "A", time.time(), "", "json",
                                               b"", 0, 60))  # fmt: skip
        started, cpu_started = time.perf_counter(), cpu()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall, used = time.perf_counter() - started, cpu() - cpu_started
    finally:
        await redis.aclose()
    return deliveries / wall, used / deliveries * 1e6


def measure(
    label: str, url: str, flush: list[int], args: argparse.Namespace, wait: tuple[int, int] = (0, 0)
) -> None:
    import redis as redis_sync

    rates, cpus = [], []
    for _ in range(args.rounds):
        for port in flush:
            redis_sync.Redis(port=port).flushall()
        rate, cpu_us = asyncio.run(
            one_round(url, args.deliveries, args.concurrency, args.apps, wait)
        )
        rates.append(rate)
        cpus.append(cpu_us)
    print(
        f"{label:<28} {statistics.median(rates):>9,.0f} deliveries/s "
        f"{statistics.median(cpus):>6.1f} µs CPU/delivery (rounds: "
        + ", ".join(f"{r:,.0f}" for r in rates) + ")"
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--apps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with RedisServer(appendonly=False) as server:
        measure("one redis-server", server.url, [server.port], args)
    if args.cluster:
        with ClusterServers() as cluster:
            measure("3-master cluster", cluster.url, cluster.masters(), args)
            measure("cluster, WAIT 1 replica", cluster.url, cluster.masters(), args, (1, 1000))


if __name__ == "__main__":
    main()
