"""Worker throughput benchmark (a script, not a test).

Starts a private `redis-server` on a free port and an HTTP sink in a child process, enqueues N
jobs (log record + stream entry, as the receiver stores them), then runs one Worker in this
process, on the event loop `retrieve worker` uses, and reports jobs/s for (a) field mapping only,
(b) a JS rewrite + field mapping, and (c) field mapping to a batched destination
(`batch: {maxRecords: 100, maxWaitMs: 50}`), the same sink.

    python bench/worker_bench.py --jobs 20000 [--concurrency 128] [--only mapping|rewrite|batched]
    python bench/worker_bench.py --jobs 20000 --compare   # (a) and (c) side by side, one run

Jobs/s is wall-clock (on a shared machine it moves with the load); jobs per worker CPU-second
is what the worker process itself spends, and is the figure to compare. `--profile` prints
cProfile's top functions (`BENCH_SORT=cumulative`, `BENCH_ROWS=N` to change the listing).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cpu import cpu_seconds
from harness.waits import free_port, wait_listening
from retrieve_cli.components import run_event_loop
from retrieve_cli.redis_server import RedisServer
from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.job import Job, new_job_id
from retrieve_core.logstore import LogRecord, LogStatus, add_record
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.provider import ConfigProvider
from retrieve_worker import Worker, WorkerSettings

try:
    import uvloop  # noqa: F401 - only to name the loop in the output
except ImportError:
    LOOP = "asyncio event loop"
else:
    LOOP = "uvloop"

REWRITE = """
let job = jobData.job;
let payload = job.data.data;
let orders = Array.isArray(payload.orders) ? payload.orders : [payload.order || payload];
return {jobStatus: 1, data: orders, message: `Processed ${orders.length} orders`};
"""
MAPPING = {"order_id": "id", "customer_email": "email", "total": "to_number(total_price)"}

SINK = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(text='{"ok":true}', content_type="application/json")
app = web.Application()
app.router.add_post("/orders", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


BATCH = {"maxRecords": 100, "maxWaitMs": 50}


def make_app(name: str, sink_url: str, rewrite: bool, batched: bool = False) -> ApplicationConfig:
    http: dict[str, Any] = {"url": sink_url, "timeoutSeconds": 10}
    if batched:
        http["batch"] = BATCH
    spec: dict[str, Any] = {
        "application": name,
        "fieldMapping": MAPPING,
        "destinations": [{"name": "warehouse", "http": http}],
    }
    if rewrite:
        spec["rewrite"] = {"javascript": REWRITE}
    return ApplicationConfig(
        namespace="bench",
        name=name,
        spec=RetrieveApplicationSpec.model_validate({"webhook": {"domain": "example.com"}}),
        integrations=(
            IntegrationConfig(
                id="orders", name="orders", spec=IntegrationSpec.model_validate(spec)
            ),
        ),
    )


async def enqueue(redis: Redis, app: ApplicationConfig, count: int) -> None:
    keys = app.keys
    batch = 1000
    for start in range(0, count, batch):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + batch, count)):
                payload = {
                    "event": "orders/create",
                    "order": {"id": n, "email": f"c{n}@example.com", "total_price": "9.99"},
                }
                job = Job(
                    id=new_job_id(),
                    integration_id="orders",
                    application=app.name,
                    namespace=app.namespace,
                    received_at=time.time(),
                    source_ip="127.0.0.1",
                    format="json",
                    payload=payload,
                )
                record = LogRecord(
                    id=job.id,
                    ts=job.received_at,
                    source_ip=job.source_ip,
                    integration_id="orders",
                    http_status=200,
                    status=LogStatus.QUEUED,
                    format="json",
                    payload=json.dumps(payload),
                )
                add_record(pipe, keys, record, 3600)
                pipe.xadd(keys.jobs, job.encode())  # type: ignore[arg-type]
            await pipe.execute()


async def scenario(
    label: str,
    redis_url: str,
    sink_url: str,
    jobs: int,
    concurrency: int,
    rewrite: bool,
    pids: dict[str, int],
    profile: bool = False,
    batched: bool = False,
) -> tuple[float, float]:
    redis = Redis.from_url(redis_url)
    kind = "batched" if batched else "rewrite" if rewrite else "mapping"
    app = make_app(f"{kind}-{int(time.time())}", sink_url, rewrite, batched)
    await enqueue(redis, app, jobs)
    print(f"{label:<22} {jobs} jobs enqueued, processing", flush=True)
    provider = ConfigProvider()
    provider.update((app,), SecretStore())
    worker = Worker(
        WorkerSettings(
            redis_url=redis_url,
            concurrency=concurrency,
            consumer="bench",
            read_count=concurrency,
            log_trim_interval_seconds=3600,
        ),
        provider,
    )
    labels = {"application": f"bench/{app.name}", "integration": "orders"}
    started = time.perf_counter()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    task = asyncio.create_task(worker.run())
    # An entry leaves the stream when its outcome is stored: an empty stream is the end (one
    # XLEN a poll, not a walk over the metrics registry in the process being measured).
    while True:
        await asyncio.sleep(0.01)
        if await redis.xlen(app.keys.jobs) == 0:
            break
        if task.done():
            task.result()
            raise RuntimeError("worker stopped early")
    elapsed = time.perf_counter() - started
    other = sum(
        worker.registry.get_sample_value("retrieve_worker_jobs_total", {**labels, "outcome": o})
        or 0
        for o in ("failed", "retrying", "dead_letter")
    )
    if profiler:
        profiler.disable()
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    worker.stop()
    await task
    left = await redis.xlen(app.keys.jobs)
    await redis.aclose()
    rate = jobs / elapsed
    per_cpu = jobs / max(cpu["worker"], 1e-9)
    print(
        f"{label:<22} {jobs} jobs in {elapsed:6.2f} s = {rate:8.0f} jobs/s "
        f"(not succeeded: {int(other)}, left in stream: {left})"
    )
    print(
        "    CPU seconds: "
        + ", ".join(f"{name} {secs:.2f}" for name, secs in cpu.items())
        + f"; {per_cpu:.0f} jobs per worker CPU-second ({1e6 / per_cpu:.1f} µs a job)"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(
            int(os.environ.get("BENCH_ROWS", "30"))
        )
    return rate, per_cpu


async def main(args: argparse.Namespace) -> None:
    redis = RedisServer(appendonly=False)
    redis.start()
    sink_port = free_port()
    sink_proc = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    try:
        wait_listening(sink_port)
        redis_url = redis.url
        sink_url = f"http://127.0.0.1:{sink_port}/orders"
        scenarios = (
            ("mapping", "(a) mapping only", False, False),
            ("rewrite", "(b) rewrite + mapping", True, False),
            ("batched", "(c) mapping, batched", False, True),
        )
        wanted = {"mapping", "batched"} if args.compare else {args.only} if args.only else None
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for kind, label, rewrite, batched in scenarios:
                if wanted and kind not in wanted:
                    continue
                pids = {"worker": os.getpid(), "redis": redis.pid, "sink": sink_proc.pid}
                results.setdefault(kind, []).append(
                    await scenario(
                        label,
                        redis_url,
                        sink_url,
                        args.jobs,
                        args.concurrency,
                        rewrite,
                        pids,
                        args.profile,
                        batched,
                    )
                )
        if "mapping" in results and "batched" in results:
            print("\nbatched (maxRecords 100) / unbatched, same run, same sink, per round:")
            for (rate_a, cpu_a), (rate_c, cpu_c) in zip(
                results["mapping"], results["batched"], strict=True
            ):
                print(
                    f"    jobs/s {rate_a:8.0f} -> {rate_c:8.0f} ({rate_c / rate_a:4.2f}x);  "
                    f"jobs per worker CPU-second {cpu_a:8.0f} -> {cpu_c:8.0f} "
                    f"({cpu_c / cpu_a:4.2f}x)"
                )
    finally:
        sink_proc.send_signal(signal.SIGTERM)
        try:
            sink_proc.wait(10)
        except subprocess.TimeoutExpired:
            sink_proc.kill()
        redis.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--only", choices=("mapping", "rewrite", "batched"))
    parser.add_argument(
        "--compare", action="store_true", help="(a) unbatched and (c) batched, side by side"
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the scenarios this many times")
    parser.add_argument("--profile", action="store_true")
    # The event loop and GC settings of `retrieve worker` (uvloop when installed).
    run_event_loop(main(parser.parse_args()))
    print(f"(python {sys.version.split()[0]}, {Path(sys.executable).name}, {LOOP})")
