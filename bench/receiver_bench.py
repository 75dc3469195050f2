"""Receiver benchmark: bare aiohttp, our receiver (1 and 2 processes) and two Go peers, accepting
a 1 KiB JSON order on loopback.

From one run, in alternating rounds with Redis emptied before each measurement, it prints the
median requests/s, p50/p99 at a fixed concurrency (wrk, a separate process), server CPU per
request and, optionally, latency at a fixed rate (an open-loop generator, `rate_client.py`):

- bare aiohttp: the same JSON answer with no Redis (`bare_app.py`), the ceiling; with
  `--floors` also on aiohttp's low-level server and on llhttp alone (a Protocol on httptools):
  what the HTTP layer itself costs per request;
- `retrieve receiver`: whitelist, routing, size and JSON checks, enqueue (job + log record +
  counters in one script call), 200 once Redis acknowledged; with `--processes 2` as well;
- Go peers (`gopeer/`, built here from Go modules, cached under ~/.cache/retrieve-bench):
  net/http with the same whitelist, size and JSON checks, then an asynq enqueue, or one XADD.

Placement on a 2-core machine: the one-core servers run on CPU 0; wrk, the rate client and
Redis on CPU 1. `retrieve receiver --processes 2` may use both CPUs (so it shares CPU 1 with
the load generator and Redis). Usage:

    .venv/bin/python bench/receiver_bench.py [--seconds 8] [--rounds 3] [--rate 1000]
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
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.gobuild import build_go  # noqa: E402
from harness.waits import free_port, wait_http, wait_listening  # noqa: E402
from retrieve_cli.redis_server import RedisServer  # noqa: E402

GOPEER = REPO / "bench" / "gopeer"
INTEGRATION = "507f1f77bcf86cd799439011"
SETTLE_SECONDS = 2.0
SERVER_CPUS = {0}
LOAD_CPUS = {1}
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


def cpus(wanted: set[int]) -> set[int]:
    """`wanted` if this machine has those CPUs, else every CPU (no pinning)."""
    available = os.sched_getaffinity(0)
    return wanted if wanted <= available and len(available) > 1 else available


def pin(process: subprocess.Popen[bytes] | subprocess.Popen[str], wanted: set[int]) -> None:
    """Pin a just-started process; what it starts later inherits the CPUs."""
    os.sched_setaffinity(process.pid, cpus(wanted))


def pin_threads(pid: int, wanted: set[int]) -> None:
    """Pin every thread of a running process (Redis's background threads too)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus(wanted))


def run_pinned(command: list[str], wanted: set[int]) -> str:
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        pin(process, wanted)
        out, _ = process.communicate()
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, out)
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of a process and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in times.items():
        walk = pid
        while walk > 1 and walk != root:
            walk = parents.get(walk, 0)
        if walk == root:
            total += seconds
    return total


def steal_ticks() -> tuple[int, int]:
    """(steal, total) ticks of all CPUs: time the hypervisor gave to other machines."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[7], sum(values[:8])


def fresh_redis(url: str) -> None:
    """Every measurement starts from an empty Redis with a small AOF: without workers the bench
    fills Redis with hundreds of MB of jobs, and Redis then forks to rewrite its AOF again and
    again (10 ms pauses, copy-on-write)."""
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


def load_average() -> float:
    return os.getloadavg()[0]


def wrk(url: str, script: Path, seconds: int, connections: int, pid: int) -> dict[str, float]:
    cpu_before, (steal_before, total_before) = tree_cpu_seconds(pid), steal_ticks()
    load = load_average()
    out = run_pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), "--latency", url],
        LOAD_CPUS,
    )

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    cpu = tree_cpu_seconds(pid) - cpu_before
    steal, total = steal_ticks()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    assert rps, out
    assert requests, out
    return {
        "rps": float(rps.group(1)),
        "cpu_us": cpu / max(int(requests.group(1)), 1) * 1e6,
        "steal": (steal - steal_before) / max(total - total_before, 1),
        "load": load,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


_BUCKET = re.compile(r'^retrieve_receiver_request_seconds_bucket\{(?:[^}]*,)?le="([^"]+)"', re.M)


def handler_buckets(metrics_url: str) -> dict[str, float]:
    """The receiver's own answer-time histogram (cumulative counts by `le`, summed over the
    processes of a `--processes N` supervisor): handler start to answer, without the queueing
    in the kernel, the event loop and the load generator that wrk's latency also holds."""
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match:
            buckets[match.group(1)] = buckets.get(match.group(1), 0.0) + float(line.split()[-1])
    return buckets


def handler_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    share = {}
    for bound, key in (("0.005", "handler_le_5ms"), ("0.01", "handler_le_10ms")):
        share[key] = (after.get(bound, 0.0) - before.get(bound, 0.0)) / total if total else 0.0
    return share


def rate(url: str, body_file: Path, seconds: float, rps: int) -> dict[str, float]:
    out = run_pinned(
        [sys.executable, str(REPO / "bench" / "rate_client.py"), url, "--rate", str(rps),
         "--seconds", str(seconds), "--body-file", str(body_file)],
        LOAD_CPUS,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


@dataclass
class Candidate:
    name: str
    command: list[str]
    port: int
    ready_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    server_cpus: set[int] = field(default_factory=lambda: set(SERVER_CPUS))
    process: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    rates: list[dict[str, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/integration/{INTEGRATION}"

    @property
    def metrics_url(self) -> str | None:
        """A receiver's admin `/metrics` (None for the bare servers and the Go peers)."""
        return self.ready_url.rsplit("/", 1)[0] + "/metrics" if self.ready_url else None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stderr=subprocess.DEVNULL,
        )
        pin(self.process, self.server_cpus)
        if self.ready_url:
            wait_http(self.ready_url)
        else:
            wait_listening(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


def receiver(name: str, redis_url: str, processes: int, source: Path | None = None) -> Candidate:
    port, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "retrieve_cli.main", "--log-level", "WARNING", "receiver",
        "--config-dir", str(REPO / "examples"), "--host", "127.0.0.1", "--port", str(port),
        "--admin-port", str(admin), "--redis-url", redis_url,
    ]  # fmt: skip
    if processes > 1:
        command += ["--processes", str(processes)]
    return Candidate(
        name,
        command,
        port,
        ready_url=f"http://127.0.0.1:{admin}/readyz",
        env={"PYTHONOPTIMIZE": "1", **({"PYTHONPATH": source_path(source)} if source else {})},
        server_cpus=set(SERVER_CPUS) if processes == 1 else SERVER_CPUS | LOAD_CPUS,
    )


def source_path(tree: Path) -> str:
    """PYTHONPATH running the packages of another tree (e.g. `git archive HEAD | tar -x`)."""
    return os.pathsep.join(str(tree / c / "src") for c in ("receiver", "core", "cli", "worker"))


def gopeer(name: str, binary: Path, mode: str, redis_port: int) -> Candidate:
    port = free_port()
    command = [str(binary), "-mode", mode, "-listen", f"127.0.0.1:{port}",
               "-redis", f"127.0.0.1:{redis_port}", "-allow", "127.0.0.0/8,::1/128"]  # fmt: skip
    return Candidate(name, command, port, env={"GOMAXPROCS": "1"})


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000, help="0: no fixed-rate runs")
    parser.add_argument("--rounds", type=int, default=3, help="candidates alternate; medians")
    parser.add_argument("--no-go", action="store_true", help="leave the Go peers out")
    parser.add_argument("--no-processes", action="store_true", help="leave --processes 2 out")
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also the bare answer on aiohttp's low-level server and on llhttp alone "
        "(what the HTTP layer costs per request)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the receiver of this source tree (before/after in one run)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    binary = None if args.no_go else build_go(GOPEER)

    work = Path(tempfile.mkdtemp(prefix="retrieve-bench-"))
    body_file = work / "order.json"
    body_file.write_bytes(order_body())
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file))
    redis = RedisServer().start()  # AOF everysec, Redis's default; pinned with the load
    pin_threads(redis.pid, LOAD_CPUS)
    bare_port = free_port()
    bare = [sys.executable, str(REPO / "bench" / "bare_app.py"), str(bare_port)]
    candidates = [
        Candidate("bare aiohttp (no Redis)", bare, bare_port),
        receiver("retrieve receiver", redis.url, 1),
    ]
    if args.baseline is not None:
        candidates.append(receiver("retrieve receiver (baseline)", redis.url, 1, args.baseline))
    if args.floors:
        floors = (("lowlevel", "bare aiohttp low-level Server"), ("llhttp", "bare llhttp"))
        for kind, name in floors:
            port = free_port()
            candidates.append(Candidate(name, [*bare[:-1], str(port), kind], port))
    if not args.no_processes:
        candidates.append(receiver("retrieve receiver --processes 2", redis.url, 2))
    if binary is not None:
        candidates.append(gopeer("Go net/http + asynq", binary, "asynq", redis.port))
        candidates.append(gopeer("Go net/http + XADD", binary, "xadd", redis.port))
    try:
        for candidate in candidates:
            candidate.start()
        time.sleep(0.5)
        for candidate in candidates:
            assert candidate.process is not None
            wrk(candidate.url, script, 2, args.connections, candidate.process.pid)  # warm-up
        # Alternating runs: a noisy moment of the machine (other VMs, CPU steal, neighbours)
        # hits every candidate instead of skewing the comparison.
        for _ in range(args.rounds):
            for candidate in candidates:
                assert candidate.process is not None
                fresh_redis(redis.url)
                metrics = candidate.metrics_url
                before = handler_buckets(metrics) if metrics else {}
                run = wrk(candidate.url, script, args.seconds, args.connections,
                          candidate.process.pid)  # fmt: skip
                if metrics:
                    run |= handler_shares(before, handler_buckets(metrics))
                candidate.runs.append(run)
            if args.rate:
                for candidate in candidates:
                    fresh_redis(redis.url)
                    candidate.rates.append(rate(candidate.url, body_file, args.seconds, args.rate))
    finally:
        for candidate in candidates:
            candidate.stop()
        redis.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    report(args, candidates)


def report(args: argparse.Namespace, candidates: list[Candidate]) -> None:
    print(
        f"\nReceiver benchmark: 1 KiB JSON order, loopback, {os.cpu_count()} cores, "
        f"wrk -t1 -c{args.connections} {args.seconds} s"
        + (f" and {args.rate} req/s open loop" if args.rate else "")
        + f", median of {args.rounds} alternating rounds; servers on CPU "
        f"{sorted(cpus(SERVER_CPUS))}, wrk and Redis on CPU {sorted(cpus(LOAD_CPUS))}"
    )
    print(
        f"{'':34} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'load':>5}"
        + (f" | {'@' + str(args.rate) + '/s p50':>12} {'p99':>6} {'max':>7}" if args.rate else "")
    )
    for c in candidates:
        w, f = c.runs, c.rates
        line = (
            f"{c.name:34} {median([r['rps'] for r in w]):8.0f} "
            f"{median([r['p50_ms'] for r in w]):7.2f} {median([r['p99_ms'] for r in w]):7.2f} "
            f"{median([r['cpu_us'] for r in w]):10.0f} {median([r['load'] for r in w]):5.2f}"
        )
        if f:
            line += (
                f" | {median([r['p50_ms'] for r in f]):12.2f} "
                f"{median([r['p99_ms'] for r in f]):6.2f} {median([r['max_ms'] for r in f]):7.2f}"
            )
        print(line)
    by_name = {c.name: c for c in candidates}
    bare, ours = by_name["bare aiohttp (no Redis)"], by_name["retrieve receiver"]

    def ratio(a: Candidate, b: Candidate) -> tuple[float, str]:
        per_round = [x["rps"] / y["rps"] for x, y in zip(a.runs, b.runs, strict=True)]
        return median(per_round), ", ".join(f"{r:.0%}" for r in per_round)

    def cost(a: Candidate, b: Candidate) -> float:
        """Requests per CPU-second of `a` relative to `b`: per core, whatever else ran."""
        return median([r["cpu_us"] for r in b.runs]) / median([r["cpu_us"] for r in a.runs])

    value, rounds = ratio(ours, bare)
    print(
        f"retrieve receiver = {value:.0%} of bare aiohttp in req/s (target >= 65%; rounds "
        f"{rounds}), {cost(ours, bare):.0%} in requests per CPU-second; p99 at "
        f"c{args.connections} = {median([r['p99_ms'] for r in ours.runs]):.2f} ms (target <= 5 ms)"
    )
    for c in candidates:
        if c.runs and "handler_le_5ms" in c.runs[0]:
            print(
                f"{c.name}: handled within 5 ms / 10 ms by its own histogram (handler start to "
                f"answer; no kernel, loop or wrk queueing): "
                f"{median([r['handler_le_5ms'] for r in c.runs]):.1%} / "
                f"{median([r['handler_le_10ms'] for r in c.runs]):.1%}"
            )
    for other in candidates[2:]:
        if other.name.startswith("Go"):
            value, rounds = ratio(ours, other)
            print(
                f"retrieve receiver = {value:.0%} of {other.name} in req/s (rounds {rounds}), "
                f"{cost(ours, other):.0%} in requests per CPU-second"
            )
    baseline = by_name.get("retrieve receiver (baseline)")
    if baseline is not None:
        value, rounds = ratio(baseline, bare)
        print(
            f"baseline receiver = {value:.0%} of bare aiohttp in req/s (rounds {rounds}), "
            f"{cost(baseline, bare):.0%} in requests per CPU-second"
        )
    two = by_name.get("retrieve receiver --processes 2")
    if two is not None:
        value, rounds = ratio(two, ours)
        print(f"--processes 2 = {value:.2f}x --processes 1 (rounds {rounds}; shares CPU 1 with "
              "wrk and Redis)")  # fmt: skip
    steal = median([r["steal"] for c in candidates for r in c.runs])
    print(f"CPU steal by the hypervisor during the runs: {steal:.1%}")
    for c in candidates:
        non_2xx = sum(r["non_2xx"] for r in c.runs)
        if non_2xx or any(r["socket_errors"] for r in c.runs):
            print(f"WARNING: {c.name}: {non_2xx:.0f} non-2xx answers or socket errors")


if __name__ == "__main__":
    main()
