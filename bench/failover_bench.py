"""What a Redis Cluster failover costs accepted webhooks, with `spec.redis.durability` off and on.

For each fault and setting: a fresh 3-master, 3-replica cluster on loopback, a real receiver and
a real worker (`retrieve receiver|worker --config-dir`, as subprocesses) serving one application,
and a sink (an HTTP server in this process) as its destination. `--concurrency` senders POST
webhooks with unique ids for `--seconds`; after a third of that, the application's master is
failed over:

- `failover`: `CLUSTER FAILOVER` on its replica (the manual, coordinated one: the master pauses
  its clients until the replica has caught up);
- `takeover`: the master SIGSTOPped (hung), `CLUSTER FAILOVER TAKEOVER` on the replica, the old
  master resumed `--lag` s later (it rejoins as a replica);
- `partition`: the replication link cut (the replica SIGSTOPped and the master's replica
  connection killed, what a network partition between them does) for `--lag` s while the master
  keeps answering, then the master SIGKILLed and the replica resumed and promoted (TAKEOVER).

Then the worker drains the stream and the bench prints, per run: sent, answered 200, answered 503,
delivered (200s whose webhook reached the sink) and lost (200s that never did).
Usage: .venv/bin/python bench/failover_bench.py [--seconds 9] [--concurrency 16] [--lag 1]
       [--faults failover,takeover,partition] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from redis.crc import key_slot  # noqa: E402

from harness.processes import stop_group  # noqa: E402
from harness.redis_cluster import ClusterServers, info, redis_cli  # noqa: E402
from harness.waits import free_port, wait_for, wait_http  # noqa: E402
from retrieve_core.keys import AppKeys  # noqa: E402
from retrieve_core.redisclient import Timeouts, connect_redis  # noqa: E402

INTEGRATION = "f00000000000000000000001"
SETTINGS = {"durability off": None, "durability WAIT 1 500ms": {"replicas": 1, "timeoutMs": 500}}


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)


def write_manifests(directory: Path, sink_url: str, durability: dict[str, int] | None) -> None:
    directory.mkdir(parents=True)
    spec: dict[str, Any] = {"webhook": {"enabled": True, "domain": "retrievetl.com"},
                            "allowedList": ["127.0.0.1"]}  # fmt: skip
    if durability:
        spec["redis"] = {"durability": durability}
    documents = [
        {"apiVersion": "retrievetl.com/v1alpha1", "kind": "RetrieveApplication",
         "metadata": {"name": "failover", "namespace": "bench"}, "spec": spec},
        {"apiVersion": "retrievetl.com/v1alpha1", "kind": "Integration",
         "metadata": {"name": "orders", "namespace": "bench"},
         "spec": {"application": "failover", "integrationId": INTEGRATION, "enabled": True,
                  "destinations": [{"name": "sink", "http": {"url": f"{sink_url}/orders"}}]}},
    ]  # fmt: skip
    (directory / "app.yaml").write_text("\n---\n".join(json.dumps(d) for d in documents))


class Sinkhole:
    """The destination: records the id of every webhook delivered to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.delivered: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.delivered[str(body.get("id"))] += 1
        return web.json_response({"ok": True})

    async def __aenter__(self) -> Sinkhole:
        app = web.Application()
        app.router.add_post("/orders", self._receive)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def start(args: list[str], url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "retrieve_cli.main", "--log-level", "ERROR", *args,
         "--redis-url", url],
        env={**os.environ, "RETRIEVE_CLAIM_IDLE_SECONDS": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def fail_over(cluster: ClusterServers, fault: str, master: int, lag: float) -> None:
    replica = cluster.replica_of(master)
    if fault == "failover":
        redis_cli(replica, "CLUSTER", "FAILOVER")
    elif fault == "takeover":
        cluster.signal(master, signal.SIGSTOP)
        redis_cli(replica, "CLUSTER", "FAILOVER", "TAKEOVER")
        time.sleep(lag)
        cluster.signal(master, signal.SIGCONT)
    else:  # partition
        cluster.signal(replica, signal.SIGSTOP)
        redis_cli(master, "CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag)  # the master keeps answering; nothing reaches the replica
        cluster.kill(master)
        cluster.signal(replica, signal.SIGCONT)
        wait_for(
            "the replica runs again",
            lambda: redis_cli(replica, "PING", timeout=2).strip() == "PONG",
        )
        redis_cli(replica, "CLUSTER", "FAILOVER", "TAKEOVER")
    wait_for("the replica took over", lambda: info(replica, "replication").get("role") == "master")


async def load(url: str, seconds: float, concurrency: int, fault: asyncio.Event) -> Tally:
    tally = Tally()
    stop_at = time.monotonic() + seconds
    fault_at = time.monotonic() + seconds / 3
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def sender() -> None:
            while time.monotonic() < stop_at:
                if time.monotonic() > fault_at:
                    fault.set()
                webhook = uuid.uuid4().hex
                tally.sent += 1
                try:
                    async with session.post(url, json={"id": webhook}) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # no answer: the sender retries, as for a 503
                tally.statuses[status] += 1
                if status == 200:
                    tally.accepted.add(webhook)
                else:
                    tally.refused.add(webhook)
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return tally


async def drained(url: str, keys: AppKeys, within: float = 90.0) -> bool:
    """Waits (bounded) until the worker has nothing queued or pending for the application."""
    redis = connect_redis(url, Timeouts(socket=1.0, connect=0.5))
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            try:
                queued = await redis.xlen(keys.jobs)
                pending: Any = await redis.xpending(keys.jobs, "retrieve-workers")
                if queued == 0 and pending["pending"] == 0:
                    return True
            except Exception:  # the cluster still settling: ask again
                pass
            await asyncio.sleep(0.5)
        return False
    finally:
        await redis.aclose()


async def one_run(fault: str, setting: str, args: argparse.Namespace) -> str:
    keys = AppKeys("bench", "failover")
    work = Path(tempfile.mkdtemp(prefix="retrieve-failover-"))
    with ClusterServers(masters=3, replicas=1) as cluster:
        master = cluster.master_of_slot(key_slot(keys.jobs.encode()))
        async with Sinkhole() as sink:
            write_manifests(work / "config", f"http://127.0.0.1:{sink.port}", SETTINGS[setting])
            port, admin, worker_admin = free_port(), free_port(), free_port()
            config = ["--config-dir", str(work / "config"), "--host", "127.0.0.1"]
            receiver = start(
                ["receiver", *config, "--port", str(port), "--admin-port", str(admin)],
                cluster.url,
            )
            worker = start(["worker", *config, "--admin-port", str(worker_admin)], cluster.url)
            try:
                await asyncio.to_thread(wait_http, f"http://127.0.0.1:{admin}/readyz", 60.0)
                faulted = asyncio.Event()

                async def fault_when_due() -> None:
                    await faulted.wait()
                    await asyncio.to_thread(fail_over, cluster, fault, master, args.lag)

                task = asyncio.create_task(fault_when_due())
                tally = await load(
                    f"http://127.0.0.1:{port}/integration/{INTEGRATION}",
                    args.seconds, args.concurrency, faulted,
                )  # fmt: skip
                await task
                emptied = await drained(cluster.url, keys)
                await asyncio.sleep(1.0)  # the last deliveries' answers
            finally:
                stop_group(receiver)
                stop_group(worker)
            delivered = set(sink.delivered)
    lost = tally.accepted - delivered
    other = sum(n for status, n in tally.statuses.items() if status not in (200, 503))
    return (
        f"{fault:<10} {setting:<24} {tally.sent:>7} {len(tally.accepted):>7} "
        f"{tally.statuses[503]:>6} {other:>6} {len(tally.accepted & delivered):>9} "
        f"{len(lost):>5} {len(tally.refused & delivered):>15}"
        + ("" if emptied else "  (stream not drained in time)")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=9.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lag", type=float, default=1.0)
    parser.add_argument("--faults", default="failover,takeover,partition")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    header = (
        f"{'fault':<10} {'setting':<24} {'sent':>7} {'200':>7} {'503':>6} {'other':>6} "
        f"{'delivered':>9} {'lost':>5} {'503s delivered':>15}"
    )
    lines = []
    for _ in range(args.rounds):  # every line is one run: a fresh cluster, receiver and worker
        for fault in args.faults.split(","):
            for setting in SETTINGS:
                line = asyncio.run(one_run(fault, setting, args))
                print(line, flush=True)
                lines.append(line)
    lines.sort(key=lambda line: (line[:10], "WAIT" in line[11:35]))  # rounds side by side
    print(
        f"\nFailover: one application, {args.concurrency} senders for {args.seconds:.0f} s, "
        f"fault after a third, lag {args.lag:.1f} s, loopback, {os.cpu_count()} cores"
    )
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
