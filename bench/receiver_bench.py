"""Receiver benchmark: bare aiohttp vs. our receiver accepting a 1 KiB JSON order into Redis.

Prints, from one run on loopback, requests/s and p50/p99 latency at a fixed concurrency (wrk,
a separate process) and latency at a fixed rate of 1,000 requests/s (an open-loop generator in
a separate process). Usage: .venv/bin/python bench/receiver_bench.py [--seconds 8] [--rounds 3]
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
import urllib.request
from pathlib import Path

import redis as redis_sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieve_cli.redis_process import PrivateRedis  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.processes import write_config  # noqa: E402

INTEGRATION = "507f1f77bcf86cd799439011"
SETTLE_SECONDS = 2.0
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
"""


def order_body(size: int = 1024) -> bytes:
    order = {
        "event": "order.created",
        "order": {
            "id": 123456,
            "order_number": "#1001",
            "email": "customer@example.com",
            "total_price": "99.99",
            "currency": "USD",
            "items": [{"product_id": 789, "sku": "TSHIRT-001", "quantity": 2, "price": "29.99"}],
            "shipping_address": {"first_name": "John", "last_name": "Doe", "city": "New York"},
            "note": "",
        },
        "created_at": "2025-12-10T14:30:00Z",
    }
    raw = json.dumps(order).encode()
    order["order"]["note"] = "x" * (size - len(raw))  # type: ignore[index]
    return json.dumps(order).encode()


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_ticks() -> tuple[int, int]:
    """(steal, total) ticks of all CPUs: time the hypervisor gave to other machines."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[7], sum(values[:8])


def fresh_redis(url: str) -> None:
    """Every run starts from an empty Redis with a small AOF, as a deployment whose workers
    keep the stream short: without workers the bench fills Redis with hundreds of MB of jobs,
    and Redis then forks to rewrite its AOF again and again (10 ms pauses, copy-on-write)."""
    client = redis_sync.Redis.from_url(url)
    try:
        client.flushall()
        wait_for_rewrite(client)
        client.bgrewriteaof()
        time.sleep(0.2)
        wait_for_rewrite(client)
    finally:
        client.close()
    time.sleep(SETTLE_SECONDS)  # quiet before measuring: no work left from the run before


def wait_for_rewrite(client: redis_sync.Redis, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.1)


def wrk(url: str, script: Path, seconds: int, connections: int, pid: int) -> dict[str, float]:
    cpu_before, (steal_before, total_before) = cpu_seconds(pid), steal_ticks()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    cpu = cpu_seconds(pid) - cpu_before
    steal, total = steal_ticks()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert rps, out
    assert requests, out
    return {
        "rps": float(rps.group(1)),
        "cpu_us": cpu / max(int(requests.group(1)), 1) * 1e6,
        "steal": (steal - steal_before) / max(total - total_before, 1),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def rate(url: str, body_file: Path, seconds: float, rps: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "rate_client.py"),
            url,
            "--rate",
            str(rps),
            "--seconds",
            str(seconds),
            "--body-file",
            str(body_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare and receiver alternate; medians are printed"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="retrieve-bench-"))
    body_file = work / "order.json"
    body_file.write_bytes(order_body())
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file))
    config = write_config(work / "config", "http://127.0.0.1:9")
    procs: list[subprocess.Popen[bytes]] = []
    names = ("bare aiohttp (no Redis)", "retrieve receiver (XADD + log)")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    rates: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with PrivateRedis() as redis:
        try:
            bare_port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "bare_app.py"), str(bare_port)]
                )
            )
            port, admin = free_port(), free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "retrieve_cli.main",
                        "--log-level",
                        "WARNING",
                        "receiver",
                        "--config-dir",
                        str(config),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--admin-port",
                        str(admin),
                        "--redis-url",
                        redis.url,
                    ],
                    env={**os.environ, "PYTHONOPTIMIZE": "1"},
                )
            )
            wait_ready(f"http://127.0.0.1:{admin}/readyz")
            time.sleep(0.5)
            urls = dict(
                zip(
                    names,
                    (
                        f"http://127.0.0.1:{bare_port}/integration/{INTEGRATION}",
                        f"http://127.0.0.1:{port}/integration/{INTEGRATION}",
                    ),
                    strict=True,
                )
            )
            pids = dict(zip(names, (procs[0].pid, procs[1].pid), strict=True))
            for name, url in urls.items():
                wrk(url, script, 2, args.connections, pids[name])  # warm-up
            # Alternating runs: a noisy moment of the machine (other VMs, CPU steal) hits
            # both sides instead of skewing the comparison.
            for _ in range(args.rounds):
                for name, url in urls.items():
                    fresh_redis(redis.url)
                    runs[name].append(wrk(url, script, args.seconds, args.connections, pids[name]))
                for name, url in urls.items():
                    fresh_redis(redis.url)
                    rates[name].append(rate(url, body_file, args.seconds, args.rate))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nReceiver benchmark: 1 KiB JSON order, loopback, {os.cpu_count()} cores, "
        f"wrk -c{args.connections} and {args.rate} req/s open loop, {args.seconds} s each, "
        f"median of {args.rounds} alternating rounds"
    )
    print(
        f"{'':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} | "
        f"{'@' + str(args.rate) + '/s p50':>12} {'p99':>7} {'max':>7} {'ok':>6}"
    )
    for name in names:
        w, f = runs[name], rates[name]
        print(
            f"{name:34} {median([r['rps'] for r in w]):9.0f} "
            f"{median([r['p50_ms'] for r in w]):8.2f} {median([r['p99_ms'] for r in w]):8.2f} "
            f"{median([r['cpu_us'] for r in w]):10.0f} | "
            f"{median([r['p50_ms'] for r in f]):12.2f} {median([r['p99_ms'] for r in f]):7.2f} "
            f"{median([r['max_ms'] for r in f]):7.2f} {median([r['ok'] for r in f]):6.0f}"
        )
    bare, ours = runs[names[0]], runs[names[1]]
    ratios = [o["rps"] / b["rps"] for b, o in zip(bare, ours, strict=True)]
    p99 = median([r["p99_ms"] for r in rates[names[1]]])
    print(f"per-round throughput ratio: {', '.join(f'{r:.0%}' for r in ratios)}")
    steal = median([r["steal"] for r in bare + ours])
    cost = median([b["cpu_us"] for b in bare]) / median([o["cpu_us"] for o in ours])
    print(
        f"server CPU per request, bare / receiver = {cost:.0%}; "
        f"CPU steal by the hypervisor during the runs: {steal:.1%}"
    )
    print(
        f"receiver throughput = {median(ratios):.0%} of bare aiohttp (target >= 50%); "
        f"p99 at {args.rate}/s = {p99:.2f} ms (target < 10 ms)"
    )
    non_2xx = sum(r["non_2xx"] for r in ours)
    if non_2xx:
        print(f"WARNING: the receiver answered {non_2xx:.0f} requests with non-2xx")


if __name__ == "__main__":
    main()
