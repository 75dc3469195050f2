"""Cost of the operator's status poll (a script, not a test).

Starts a private `redis-server`, writes what receivers and workers write for APPS applications
x INTEGRATIONS integrations (a full hour of per-minute counter buckets, last-received times,
queued jobs, dead letters and their per-integration counts), then times full poll rounds: every
application's counters read the way the operator's status timer reads them (status_counters.py, one
pipelined round trip per application) and turned into status patches (the pure part).

    python bench/status_poll_bench.py [--apps 50] [--integrations 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieve_cli.redis_server import RedisServer  # noqa: E402
from retrieve_core.keys import (  # noqa: E402
    COUNTER_FAILED,
    COUNTER_RECEIVED,
    COUNTER_REJECTED,
    COUNTER_TTL_SECONDS,
    AppKeys,
)
from retrieve_operator.status_counters import (  # noqa: E402
    ApplicationCounts,
    live_patch,
    live_status,
    read_counts,
    window_buckets,
)


def integration_ids(app: int, count: int) -> list[str]:
    return [f"int{app:03d}x{n:03d}" for n in range(count)]


async def fill(redis: Redis, apps: int, integrations: int, now: float) -> None:
    for app in range(apps):
        keys = AppKeys("bench", f"app{app:03d}")
        async with redis.pipeline(transaction=False) as pipe:
            for integration_id in integration_ids(app, integrations):
                for bucket in window_buckets(now):
                    key = keys.counters(integration_id, bucket)
                    pipe.hset(
                        key, mapping={COUNTER_RECEIVED: 20, COUNTER_REJECTED: 1, COUNTER_FAILED: 1}
                    )
                    pipe.expire(key, COUNTER_TTL_SECONDS)
                pipe.hset(keys.last_received, integration_id, repr(now))
                pipe.hset(keys.dead_counts, integration_id, 2)
                for _ in range(2):
                    fields = {"job": "{}", "integration_id": integration_id, "error": "503"}
                    pipe.xadd(keys.dead_letters, fields)  # type: ignore[arg-type]
            for n in range(100):
                pipe.xadd(keys.jobs, {"job": f'{{"n": {n}}}'})
            await pipe.execute()


class CountingRedis(Redis):
    """Counts commands sent (a pipeline counts once): each is one network round trip."""

    round_trips = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.round_trips += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        CountingRedis.round_trips += 1
        return super().pipeline(transaction, shard_hint)


async def poll_round(redis: Redis, apps: int, integrations: int) -> tuple[float, int]:
    """One round as the operator runs it: one timer per application, concurrently."""
    now = time.time()
    started = time.perf_counter()

    async def one(app: int) -> int:
        ids = integration_ids(app, integrations)
        counts: ApplicationCounts = await read_counts(
            redis, AppKeys("bench", f"app{app:03d}"), ids, now
        )
        patches = 0
        for integration_id in ids:
            desired = live_status(counts.integrations[integration_id], counts.queue_depth)
            patches += live_patch(desired, desired) is None  # the no-churn decision
        return patches

    decided = sum(await asyncio.gather(*(one(app) for app in range(apps))))
    return time.perf_counter() - started, decided


async def main(apps: int, integrations: int, rounds: int) -> None:
    with RedisServer() as server:
        redis = CountingRedis.from_url(server.url)
        await fill(redis, apps, integrations, time.time())
        await poll_round(redis, apps, integrations)  # warm-up: loads the script once
        await redis.config_resetstat()
        CountingRedis.round_trips = 0
        times = []
        cpu = time.process_time()
        for _ in range(rounds):
            elapsed, decided = await poll_round(redis, apps, integrations)
            assert decided == apps * integrations
            times.append(elapsed)
        cpu = time.process_time() - cpu
        round_trips = CountingRedis.round_trips
        stats = await redis.info("stats")
        commandstats = await redis.info("commandstats")
        # Commands run by a script are counted twice (alone and in EVALSHA): take EVALSHA's.
        script_us = float(commandstats.get("cmdstat_evalsha", {}).get("usec", 0))
        memory = (await redis.info("memory"))["used_memory_human"]
        await redis.aclose()
    total = apps * integrations
    print(f"{apps} applications x {integrations} integrations = {total} integrations")
    print(f"Redis memory with an hour of counters: {memory}")
    print(f"round trips per poll round: {round_trips / rounds:g} (one per application)")
    commands = stats["total_commands_processed"] // rounds
    print(f"commands Redis runs per poll round (inside the scripts): {commands}")
    print(
        "wall time per poll round (all applications at once): "
        f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
        f"({rounds} rounds)"
    )
    print(f"Redis time per poll round: {script_us / rounds / 1000:.1f} ms")
    print(f"operator-side CPU per poll round: {cpu / rounds * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--integrations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.apps, args.integrations, args.rounds))
