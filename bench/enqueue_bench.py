"""Enqueue benchmark: the receiver's hot path alone (`Enqueuer.store`), one Redis vs a cluster.

In one process on uvloop, `--concurrency` callers store 1 KiB deliveries for `--apps`
applications as fast as they can; prints deliveries/s and the process's CPU per delivery for a
private redis-server and, with `--cluster`, for a 3-master, 3-replica Redis Cluster on loopback
(the apps spread over its slots), there also with `spec.redis.durability` (WAIT 1 replica, the
cost of a confirmed copy). `--compare` measures the RESP packer (`retrieve_core.resp`, what the
receiver runs) against redis-py's pipeline sending the same EVALSHA calls
(`bench/pipeline_enqueuer.py`), rounds alternating on one redis-server, with Redis's CPU per
delivery too. Usage:
.venv/bin/python bench/enqueue_bench.py [--deliveries 20000] [--rounds 3] [--cluster | --compare]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline_enqueuer import PipelineEnqueuer, check_same_calls  # noqa: E402
from harness.cpu import cpu_seconds  # noqa: E402
from harness.redis_cluster import ClusterServers  # noqa: E402
from retrieve_cli.redis_server import RedisServer  # noqa: E402
from retrieve_core.enqueue import Delivery, Enqueuer  # noqa: E402
from retrieve_core.keys import AppKeys  # noqa: E402
from retrieve_core.redisclient import connect_redis  # noqa: E402

BODY = b'{"order": "' + b"x" * 1000 + b'"}'


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_round(
    url: str, deliveries: int, concurrency: int, apps: int, wait: tuple[int, int],
    enqueuer_type: type[Enqueuer], redis_pids: list[int],
) -> tuple[float, float, float]:  # fmt: skip
    redis = connect_redis(url)
    keys = [AppKeys("bench", f"app-{n}") for n in range(apps)]
    enqueuer = enqueuer_type(redis)
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
        redis_started = sum(cpu_seconds(pid) for pid in redis_pids)
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall, used = time.perf_counter() - started, cpu() - cpu_started
        redis_used = sum(cpu_seconds(pid) for pid in redis_pids) - redis_started
    finally:
        await redis.aclose()
    return deliveries / wall, used / deliveries * 1e6, redis_used / deliveries * 1e6


def measure(
    url: str, flush: dict[int, int], args: argparse.Namespace, modes: dict[str, type[Enqueuer]],
    wait: tuple[int, int] = (0, 0),
) -> None:  # fmt: skip
    """Each of `modes` (label: enqueuer) `args.rounds` times, rounds alternating; medians.
    `flush`: port -> pid of the servers emptied before each round and charged its Redis CPU."""
    import redis as redis_sync

    figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in modes}
    for _ in range(args.rounds):
        for label, enqueuer_type in modes.items():
            for port in flush:
                redis_sync.Redis(port=port).flushall()
            pids = list(flush.values())
            figures[label].append(asyncio.run(one_round(
                url, args.deliveries, args.concurrency, args.apps, wait, enqueuer_type, pids
            )))  # fmt: skip
    for label, rounds in figures.items():
        rate, cpu_us, redis_us = (statistics.median(column) for column in zip(*rounds, strict=True))
        print(
            f"{label:<28} {rate:>9,.0f} deliveries/s {cpu_us:>6.1f} µs client CPU/delivery "
            f"{redis_us:>6.1f} µs Redis CPU/delivery (rounds: "
            + ", ".join(f"{r:,.0f}" for r, _, _ in rounds) + ")"
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--apps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument(
        "--compare", action="store_true", help="the RESP packer vs redis-py's pipeline"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.compare:
        check_same_calls()  # the same calls, byte for byte: only the packing differs
        modes = {"RESP packer": Enqueuer, "redis-py pipeline": PipelineEnqueuer}
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        with RedisServer(appendonly=False) as server:
            measure(server.url, {server.port: server.pid}, args, modes)
        return
    with RedisServer(appendonly=False) as server:
        measure(server.url, {server.port: server.pid}, args, {"one redis-server": Enqueuer})
    if args.cluster:
        with ClusterServers(masters=3, replicas=1) as cluster:
            masters = {port: cluster.pid(port) for port in cluster.masters()}
            measure(cluster.url, masters, args, {"3-master cluster": Enqueuer})
            wait_1 = {"cluster, WAIT 1 replica": Enqueuer}
            measure(cluster.url, masters, args, wait_1, (1, 1000))


if __name__ == "__main__":
    main()
