"""Scale-out benchmark: accepted webhooks/s with one Redis vs a 3-master Redis Cluster, for 1, 2 and
4 receiver processes (`retrieve receiver --processes N`, SO_REUSEPORT on one port).

`--apps` applications (one integration each, so their hash slots spread over the cluster's
masters) get 1 KiB JSON orders from wrk (`--connections`, one thread, round robin over the
integrations) for `--seconds` per run; no workers run, every run starts from emptied servers.
The cluster has no replicas (on one machine they would only take CPU from the masters). Prints,
per setting, the median over `--rounds` alternating rounds of: accepted webhooks/s (answered 200),
the ratio to linear (rate / (N x the rate of 1 process on the same Redis)), Redis CPU and receiver
CPU per accepted webhook (from /proc), and how busy the machine's cores were (every process
on them, other work included). Loopback only,
bounded: 2 x 3 x rounds runs of `--seconds` each, then it stops.
Usage: .venv/bin/python bench/scaleout_bench.py [--seconds 5] [--rounds 3] [--apps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis as redis_sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cpu import cpu_seconds  # noqa: E402
from harness.processes import stop_group  # noqa: E402
from harness.redis_cluster import ClusterServers  # noqa: E402
from harness.waits import free_port, wait_http  # noqa: E402
from retrieve_cli.redis_server import RedisServer  # noqa: E402

PROCESSES = (1, 2, 4)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
local paths = {{{paths}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""


@dataclass
class Run:
    accepted_per_s: float
    refused: int
    redis_us: float  # Redis CPU per accepted webhook
    receiver_us: float
    busy: float  # share of all cores busy (user + system + steal) during the run


def manifests(directory: Path, apps: int) -> list[str]:
    """`apps` applications with one integration each; returns the integration ids."""
    directory.mkdir(parents=True)
    ids = [f"{n:024x}" for n in range(1, apps + 1)]
    documents: list[dict[str, object]] = []
    for n, integration in enumerate(ids):
        documents.append({
            "apiVersion": "retrievetl.com/v1alpha1", "kind": "RetrieveApplication",
            "metadata": {"name": f"app-{n}", "namespace": "bench"},
            "spec": {"webhook": {"enabled": True, "domain": "retrievetl.com"},
                     "allowedList": ["127.0.0.1"]},
        })  # fmt: skip
        documents.append({
            "apiVersion": "retrievetl.com/v1alpha1", "kind": "Integration",
            "metadata": {"name": f"orders-{n}", "namespace": "bench"},
            "spec": {"application": f"app-{n}", "integrationId": integration, "enabled": True,
                     "destinations": [{"name": "nowhere",
                                       "http": {"url": "http://127.0.0.1:9/orders"}}]},
        })  # fmt: skip
    text = "\n---\n".join(json.dumps(document) for document in documents)
    (directory / "apps.yaml").write_text(text)
    return ids


def order_body(size: int = 1024) -> bytes:
    order = {"event": "order.created", "order": {"id": 123456, "email": "customer@example.com",
             "total_price": "99.99", "note": ""}}  # fmt: skip
    raw = json.dumps(order).encode()
    order["order"]["note"] = "x" * (size - len(raw))  # type: ignore[index]
    return json.dumps(order).encode()


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (Linux /proc)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return pids


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all cores; busy counts user, nice, system, irq, softirq, steal."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def flush(servers: dict[int, int]) -> None:
    """Empties every server (`servers`: port -> pid)."""
    for port in servers:
        client = redis_sync.Redis(port=port)
        try:
            client.flushall()
        finally:
            client.close()


def one_run(
    servers: dict[int, int], url: str, processes: int, config: Path, script: Path,
    args: argparse.Namespace,
) -> Run:  # fmt: skip
    port, admin = free_port(), free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "retrieve_cli.main", "--log-level", "WARNING", "receiver",
         "--config-dir", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--admin-port", str(admin), "--redis-url", url, "--processes", str(processes)],
        env={**os.environ, "PYTHONOPTIMIZE": "1"}, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz", 60, receiver)
        target = f"http://127.0.0.1:{port}"
        wrk(target, script, 1, args.connections)  # warm-up: connections, scripts loaded
        flush(servers)
        time.sleep(0.5)
        receivers = process_tree(receiver.pid)
        redis_pids = list(servers.values())
        before = tree_cpu(receivers), tree_cpu(redis_pids), cpu_ticks()
        requests, refused, seconds = wrk(target, script, args.seconds, args.connections)
        after = tree_cpu(receivers), tree_cpu(redis_pids), cpu_ticks()
    finally:
        stop_group(receiver)
    accepted = max(requests - refused, 1)
    busy = (after[2][0] - before[2][0]) / max(after[2][1] - before[2][1], 1)
    return Run(
        accepted_per_s=accepted / seconds,
        refused=refused,
        redis_us=(after[1] - before[1]) / accepted * 1e6,
        receiver_us=(after[0] - before[0]) / accepted * 1e6,
        busy=busy,
    )


def wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[int, int, float]:
    """(requests, non-2xx answers, seconds) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if done is None:
        raise RuntimeError(out)
    elapsed = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    return int(done.group(1)), int(errors.group(1)) if errors else 0, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--apps", type=int, default=12)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="retrieve-scaleout-"))
    body = work / "order.json"
    body.write_bytes(order_body())
    ids = manifests(work / "config", args.apps)
    script = work / "post.lua"
    paths = ", ".join(f'"/integration/{integration}"' for integration in ids)
    script.write_text(WRK_SCRIPT.format(body=body, paths=paths))
    labels = {"one": "one redis-server", "cluster": "3-master cluster"}
    results: dict[tuple[str, int], list[Run]] = {}
    try:
        with (
            RedisServer(appendonly=False) as one,
            ClusterServers(masters=3, replicas=0) as cluster,
        ):
            backends = {
                "one": ({one.port: one.pid}, one.url),
                "cluster": ({port: cluster.pid(port) for port in cluster.ports}, cluster.url),
            }
            masters = {cluster.master_of_slot(_slot(n)) for n in range(args.apps)}
            print(f"{args.apps} applications on {len(masters)} of the cluster's 3 masters")
            for round_ in range(args.rounds):  # alternating: a noisy moment hits every setting
                for name, (servers, url) in backends.items():
                    for processes in PROCESSES:
                        run = one_run(servers, url, processes, work / "config", script, args)
                        results.setdefault((name, processes), []).append(run)
                        print(
                            f"  round {round_ + 1}: {labels[name]}, {processes} receiver(s): "
                            f"{run.accepted_per_s:,.0f}/s", flush=True,
                        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nScale-out: 1 KiB JSON orders to {args.apps} applications, wrk -t1 "
        f"-c{args.connections}, {args.seconds} s a run, loopback, {os.cpu_count()} cores, "
        f"medians of {args.rounds} alternating rounds"
    )
    print(
        f"{'Redis':18} {'receivers':>9} {'accepted/s':>11} {'vs linear':>9} "
        f"{'Redis µs/webhook':>16} {'receiver µs/webhook':>19} {'machine busy':>12} {'non-200':>7}"
    )
    for name, label in labels.items():
        base = statistics.median(r.accepted_per_s for r in results[(name, 1)])
        for processes in PROCESSES:
            runs = results[(name, processes)]
            rate = statistics.median(r.accepted_per_s for r in runs)
            print(
                f"{label:18} {processes:>9} {rate:>11,.0f} "
                f"{rate / (processes * base):>9.0%} "
                f"{statistics.median(r.redis_us for r in runs):>16.1f} "
                f"{statistics.median(r.receiver_us for r in runs):>19.1f} "
                f"{statistics.median(r.busy for r in runs):>12.0%} "
                f"{sum(r.refused for r in runs):>7}"
            )
    for name, label in labels.items():
        runs = results[(name, 1)]
        redis_us = statistics.median(r.redis_us for r in runs)
        receiver_us = statistics.median(r.receiver_us for r in runs)
        cores = 3 if name == "cluster" else 1
        print(
            f"{label}: one receiver core takes ~{1e6 / receiver_us:,.0f} webhooks/s, one Redis "
            f"core ~{1e6 / redis_us:,.0f}/s: Redis saturates at ~{receiver_us / redis_us:.1f} "
            f"busy receiver cores{' per master' if cores > 1 else ''} "
            f"(~{cores * 1e6 / redis_us:,.0f} webhooks/s with {cores} Redis core(s))"
        )
    print("per-round accepted/s: " + "; ".join(
        f"{labels[n]} x{p}: " + ", ".join(f"{r.accepted_per_s:,.0f}" for r in runs)
        for (n, p), runs in results.items()
    ))  # fmt: skip


def _slot(n: int) -> int:
    from redis.crc import key_slot

    from retrieve_core.keys import AppKeys

    return key_slot(AppKeys("bench", f"app-{n}").jobs.encode())


if __name__ == "__main__":
    main()
