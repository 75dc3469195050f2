"""What a Redis Cluster failover costs accepted webhooks, with and without durability.

For each setting, a fresh 3-master, 3-replica cluster on loopback; `--concurrency` callers store
deliveries of one application (the receiver's `Enqueuer`, as the receiver calls it) for
`--seconds`. After a third of that the replica of the application's master lags (SIGSTOPped for
`--lag` seconds, as a slow network would make it), then the master is SIGKILLed and the replica,
resumed, takes over (cluster-node-timeout 2 s). Then every job id the stream holds is read back:
"lost" counts deliveries that were acknowledged (a receiver would have answered 200) but are not
there.
Usage: .venv/bin/python bench/failover_bench.py [--seconds 9] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from redis.crc import key_slot  # noqa: E402

from retrieve_core.enqueue import Delivery, Enqueuer  # noqa: E402
from retrieve_core.keys import AppKeys  # noqa: E402
from retrieve_core.redisclient import Timeouts, connect_redis  # noqa: E402
from tests.support.redis_cluster import ClusterServers, wait_for  # noqa: E402


@dataclass
class Tally:
    sent: int = 0
    acked: set[str] = field(default_factory=set)
    failed: int = 0


async def load(url: str, keys: AppKeys, seconds: float, concurrency: int, wait: tuple[int, int],
               kill: asyncio.Event) -> tuple[Tally, set[str]]:  # fmt: skip
    redis = connect_redis(url, Timeouts(socket=1.0, connect=0.5))
    enqueuer = Enqueuer(redis, timeout=2.0)
    tally = Tally()
    stop_at = time.monotonic() + seconds

    async def caller(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            job_id = f"job-{n}-{i}"
            i += 1
            tally.sent += 1
            delivery = Delivery(job_id, b'{"id": "%b"}' % job_id.encode(), "ABC123",
                                time.time(), "127.0.0.1", "json", b"{}", 100, 3600,
                                wait=wait)  # fmt: skip
            try:
                await enqueuer.store(keys, delivery)
                tally.acked.add(job_id)
            except Exception:  # what a receiver answers 503
                tally.failed += 1
                await asyncio.sleep(0.05)
            if time.monotonic() > stop_at - seconds * 2 / 3:
                kill.set()

    try:
        await asyncio.gather(*(caller(n) for n in range(concurrency)))
        present: set[str] = set()
        for _ in range(100):  # the promoted replica, once the client knows it
            try:
                entries: Any = await redis.xrange(keys.jobs)
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError("the stream never became readable again")
        for _, fields in entries:
            raw: bytes = fields[b"job"]
            present.add(raw.decode().split('"id": "')[1].split('"')[0])
    finally:
        await redis.aclose()
    return tally, present


def one(label: str, args: argparse.Namespace, wait: tuple[int, int]) -> None:
    with ClusterServers() as cluster:
        keys = AppKeys("bench", "failover")
        master = cluster.master_of_slot(key_slot(keys.jobs.encode()))
        replica = next(
            port for port in cluster.replicas()
            if cluster_info(port).get("master_port") == str(master)
        )  # fmt: skip

        async def run() -> tuple[Tally, set[str]]:
            kill = asyncio.Event()

            def fail_over() -> None:
                lagging = cluster.processes[replica]
                lagging.send_signal(signal.SIGSTOP)
                time.sleep(args.lag)
                cluster.kill(master)
                lagging.send_signal(signal.SIGCONT)

            async def killer() -> None:
                await kill.wait()
                await asyncio.to_thread(fail_over)

            task = asyncio.create_task(killer())
            try:
                return await load(cluster.url, keys, args.seconds, args.concurrency, wait, kill)
            finally:
                task.cancel()

        tally, present = asyncio.run(run())
        wait_for("the replica took over", lambda: cluster_info(replica).get("role") == "master")
    lost = tally.acked - present
    print(
        f"{label:<26} sent {tally.sent:>6}  200 {len(tally.acked):>6}  503 {tally.failed:>5}  "
        f"stored {len(present):>6}  lost {len(lost):>4}"
    )


def cluster_info(port: int) -> dict[str, str]:
    from tests.support.redis_cluster import info

    return info(port, "replication")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=9.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lag", type=float, default=1.0)
    args = parser.parse_args()
    one("durability off", args, (0, 0))
    one("durability WAIT 1 500ms", args, (1, 500))


if __name__ == "__main__":
    main()
