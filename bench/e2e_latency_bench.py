"""End-to-end latency benchmark (a script, not a test): webhook sent -> record received.

One `retrieve receiver` and one `retrieve worker` process over a private redis-server (AOF, as
dev mode), a destination that is an aiohttp server in its own process, and an open-loop sender
in its own process posting at a fixed rate. Each webhook carries the time it was sent; the
destination notes, for every record it receives, now minus that time. Printed per rate: p50,
p99 and max of that latency, without batching and with `batch: {maxRecords: 100, maxWaitMs: 50}`,
and beside them the receiver's answer latency as the sender saw it (sent to the answer's last
byte: what a source system waits for).

    .venv/bin/python bench/e2e_latency_bench.py [--rates 1000,2000] [--seconds 5] [--wait-ms 50]
        [--senders 2] [--warmup 1]

Each sender first sends at the measured rate for `--warmup` seconds, those webhooks marked and
left out of every figure, and goes straight on with the measured ones. From a cold start the
first ~200 ms are the sender opening keep-alive connections as fast as requests come: that
costs a server that does nothing (`bench/bare_app.py PORT llhttp`) up to ~300 ms per answer,
and it, not the servers, was a 5-second run's p99 before the warm-up was measured this way.

`--senders N` splits each rate over N sender processes (one Python sender may not keep up on a
busy machine: `sent/s` below the rate means the figures include the sender's own lag). Each row
ends with the 1-minute load average and the number of CPUs, so a figure from a shared machine
says how shared it was, and the CPU each server spent per webhook sent (receiver, worker, sink,
Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cpu import cpu_seconds  # noqa: E402
from harness.gobuild import build_go  # noqa: E402
from harness.waits import free_port, wait_http  # noqa: E402
from retrieve_cli.redis_server import RedisServer  # noqa: E402

SINK = r"""
import json, sys, time
from aiohttp import web
latencies = []
async def take(request):
    now = time.time()
    body = json.loads(await request.read())
    for record in body if isinstance(body, list) else [body]:
        if not record.get("warmup"):
            latencies.append(now - record["sent_at"])
    return web.Response(text='{"ok":true}', content_type="application/json")
async def stats(request):
    data = sorted(latencies)
    latencies.clear()
    return web.json_response(data)
app = web.Application()
app.router.add_post("/{tail:.*}", take)
app.router.add_get("/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

SENDER = r"""
import asyncio, json, sys, time
from retrieve_worker.httpclient import DestinationClient
async def main(url, rate, seconds, warmup):
    client = DestinationClient(user_agent="retrieve-bench")
    statuses, warm_statuses, answered = {}, {}, []
    headers = {"Content-Type": "application/json"}
    warm = int(rate * warmup)
    async def one(n):
        sent = time.perf_counter()
        body = json.dumps({"n": n, "sent_at": time.time(), "warmup": n < warm,
                           "note": "x" * 900}).encode()
        answer = await client.request("POST", url, headers, body, 30)
        counts = warm_statuses if n < warm else statuses
        counts[answer.status] = counts.get(answer.status, 0) + 1
        if n >= warm:
            answered.append((time.perf_counter() - sent) * 1000)
    total = int(rate * seconds)
    begin = time.perf_counter()
    tasks = []
    for n in range(warm + total):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if n == warm:
            measured = time.perf_counter()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - measured
    await client.close()
    answered.sort()
    at = lambda p: answered[min(len(answered) - 1, int(p * len(answered)))]
    print(json.dumps({"sent": total, "rps": total / elapsed, "statuses": statuses,
                      "warmup_statuses": warm_statuses,
                      "answer_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1)}}))
args = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
try:
    import uvloop
    uvloop.run(main(*args))
except ImportError:
    asyncio.run(main(*args))
"""

PLAIN, BATCHED = "LATENCY1", "LATENCY2"


def write_config(directory: Path, sink_url: str, wait_ms: int) -> None:
    def integration(name: str, integration_id: str, http: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "application": "latency",
                "integrationId": integration_id,
                "destinations": [{"name": "sink", "http": http}],
            },
        }

    documents = [
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "RetrieveApplication",
            "metadata": {"name": "latency", "namespace": "bench"},
            "spec": {
                "webhook": {"enabled": True, "domain": "retrievetl.com"},
                "allowedList": ["127.0.0.1"],
                "worker": {"concurrency": 128},
            },
        },
        integration("plain", PLAIN, {"url": f"{sink_url}/plain"}),
        integration(
            "batched",
            BATCHED,
            {"url": f"{sink_url}/batched", "batch": {"maxRecords": 100, "maxWaitMs": wait_ms}},
        ),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))


def retrieve(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "retrieve_cli.main", "--log-level", "WARNING", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def send(
    url: str,
    rate: int,
    seconds: float,
    senders: int,
    gosender: Path | None = None,
    warmup: float = 0,
) -> dict[str, Any]:
    """`rate` webhooks/s for `seconds` after `warmup` seconds at that rate (marked, not
    measured), from `senders` processes at once; what they sent, and the answer latency they
    saw (of several senders, the worst one's p50/p99/max)."""
    share = [rate // senders + (1 if n < rate % senders else 0) for n in range(senders)]

    def command(part: int) -> list[str]:
        if gosender is not None:
            return [str(gosender), "-url", url, "-rate", str(part), "-seconds", str(seconds),
                    "-warmup", str(warmup)]  # fmt: skip
        return [sys.executable, "-c", SENDER, url, str(part), str(seconds), str(warmup)]

    env = {**os.environ, "GOMAXPROCS": "1"}
    running = [
        subprocess.Popen(command(part), stdout=subprocess.PIPE, env=env) for part in share if part
    ]
    total: dict[str, Any] = {
        "sent": 0, "warmup": 0, "rps": 0.0, "statuses": {}, "warmup_statuses": {},
        "answer_ms": {"p50": 0.0, "p99": 0.0, "max": 0.0},
    }  # fmt: skip
    for process in running:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"a sender failed ({process.returncode})")
        one = json.loads(out)
        total["sent"] += one["sent"]
        total["rps"] += one["rps"]
        for key in ("statuses", "warmup_statuses"):
            for status, count in one[key].items():
                total[key][status] = total[key].get(status, 0) + count
        total["warmup"] += sum(one["warmup_statuses"].values())
        for p, value in one["answer_ms"].items():
            total["answer_ms"][p] = max(total["answer_ms"][p], value)
    return total


def percentile(data: list[float], p: float) -> float:
    return data[min(len(data) - 1, int(p * len(data)))] * 1000 if data else float("nan")


def main(args: argparse.Namespace) -> None:
    gosender = build_go(REPO / "bench" / "gosender") if args.sender == "go" else None
    workdir = Path(tempfile.mkdtemp(prefix="retrieve-latency-"))
    redis = RedisServer().start()
    sink_port, port, admin, worker_admin = free_port(), free_port(), free_port(), free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    write_config(workdir, sink_url, args.wait_ms)
    processes = [subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])]
    common = ["--config-dir", str(workdir), "--redis-url", redis.url]
    try:
        processes.append(
            retrieve("receiver", *common, "--host", "127.0.0.1", "--port", str(port),
                     "--admin-port", str(admin))
        )  # fmt: skip
        processes.append(
            retrieve("worker", *common, "--host", "127.0.0.1", "--admin-port", str(worker_admin))
        )
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        wait_http(f"http://127.0.0.1:{worker_admin}/readyz")
        wait_http(f"{sink_url}/stats")
        print(f"senders: {args.senders} x {args.sender}")
        print(
            f"{'':28} {'sent/s':>8} {'records':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
            f" | {'answer p50':>10} {'p99':>6} {'max':>6}"
        )
        for rate in args.rates:
            for label, integration in (("unbatched", PLAIN), ("batched", BATCHED)):
                url = f"http://127.0.0.1:{port}/integration/{integration}"
                urllib.request.urlopen(f"{sink_url}/stats").read()
                load = os.getloadavg()[0]
                servers = {"receiver": processes[1].pid, "worker": processes[2].pid,
                           "sink": processes[0].pid, "redis": redis.pid}  # fmt: skip
                cpu_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
                # The senders warm up at the rate first (keep-alive connections, caches), those
                # webhooks marked and not measured; the measured ones follow without a pause.
                sent = send(url, rate, args.seconds, args.senders, gosender, args.warmup)
                webhooks = sent["sent"] + sent["warmup"]
                busy = {
                    name: (cpu_seconds(pid) - cpu_before[name]) / max(webhooks, 1) * 1e6
                    for name, pid in servers.items()
                }
                time.sleep(2 + args.wait_ms / 1000)  # the last records arrive
                with urllib.request.urlopen(f"{sink_url}/stats") as answer:
                    latencies: list[float] = json.loads(answer.read())
                name = f"{label} @ {rate}/s"
                warmed = {"200": sent["warmup"]} if sent["warmup"] else {}
                statuses = sent["statuses"], sent["warmup_statuses"]
                refused = "" if statuses == ({"200": sent["sent"]}, warmed) else f" {statuses}"
                worst = latencies[-1] * 1000 if latencies else float("nan")
                answer = sent["answer_ms"]
                print(
                    f"{name:<28} {sent['rps']:8.0f} {len(latencies):8d} "
                    f"{percentile(latencies, 0.5):8.2f} {percentile(latencies, 0.99):8.2f} "
                    f"{worst:8.2f} | {answer['p50']:10.2f} {answer['p99']:6.2f} "
                    f"{answer['max']:6.2f}"
                    f"  load {load:.1f}/{os.cpu_count()} CPUs{refused}"
                    + "  CPU us/webhook: "
                    + ", ".join(f"{name} {us:.0f}" for name, us in busy.items()),
                    flush=True,
                )
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=lambda v: [int(r) for r in v.split(",")], default=[1000, 2000]
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--wait-ms", type=int, default=50, help="batch.maxWaitMs")
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds each sender sends at the rate before the measured webhooks (marked, not "
        "measured): a cold start is the sender opening connections, not the servers",
    )
    parser.add_argument("--senders", type=int, default=1, help="sender processes per rate")
    parser.add_argument(
        "--sender",
        choices=["go", "python"],
        default="go" if shutil.which("go") else "python",
        help="go: bench/gosender on one core (default when Go is installed); python: the "
        "worker's HTTP client on uvloop, which takes CPU from what is measured",
    )
    main(parser.parse_args())
