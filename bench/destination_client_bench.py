"""Destination client A/B: the worker's own keep-alive client vs aiohttp's ClientSession.

The worker sends its destinations' requests with `retrieve_worker.httpclient.DestinationClient`
(httptools, pooled keep-alive connections) because aiohttp's client cost about 2.5x the CPU per
request. This re-measures that after a dependency upgrade: in one process on uvloop (as `retrieve
worker`), `--concurrency` callers send the same small JSON record to the same local aiohttp sink
(its own process) through each client in turn, rounds alternating, and it prints requests/s and
this process's CPU µs per request side by side. aiohttp is configured as the worker had it
(TCPConnector limit 256, no cookie jar, no redirects, first 64 KiB of the answer read). Usage:

    .venv/bin/python bench/destination_client_bench.py [--requests 20000] [--concurrency 64]
        [--rounds 3] [--only own|aiohttp]

Requests/s moves with the machine's load; CPU µs per request is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.worker_bench import SINK  # noqa: E402
from harness.cpu import cpu_seconds  # noqa: E402
from harness.waits import free_port, wait_listening  # noqa: E402
from retrieve_worker.destinations import READ_LIMIT_BYTES, USER_AGENT, encode_record  # noqa: E402
from retrieve_worker.httpclient import DestinationClient  # noqa: E402

RECORD = {"order_id": 1001, "customer_email": "c1001@example.com", "total": 9.99}
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "bench-1001-0"}
TIMEOUT = 10.0

Send = Callable[[bytes], Awaitable[int]]
"""Sends one request with this body; the answer's status."""


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@asynccontextmanager
async def own_client(url: str) -> AsyncIterator[Send]:
    client = DestinationClient(user_agent=USER_AGENT, read_limit=READ_LIMIT_BYTES)

    async def send(body: bytes) -> int:
        answer = await client.request("POST", url, HEADERS, body, TIMEOUT)
        return answer.status

    try:
        yield send
    finally:
        await client.close()


@asynccontextmanager
async def aiohttp_client(url: str) -> AsyncIterator[Send]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)

    async def send(body: bytes) -> int:
        async with session.request(
            "POST", url, data=body, headers=HEADERS, timeout=timeout, allow_redirects=False
        ) as response:
            await response.content.read(READ_LIMIT_BYTES)
            return response.status

    try:
        yield send
    finally:
        await session.close()


CLIENTS = {"own": own_client, "aiohttp": aiohttp_client}


async def one_round(
    client: str, url: str, requests: int, concurrency: int, sink_pid: int
) -> tuple[float, float, float]:
    """requests/s, client CPU µs per request, sink CPU µs per request."""
    body = encode_record(RECORD)
    failed = 0
    async with CLIENTS[client](url) as send:
        # Warm-up: every caller's connection open before the clock starts.
        await asyncio.gather(*(send(body) for _ in range(concurrency)))
        counter = iter(range(requests))

        async def caller() -> None:
            nonlocal failed
            for _ in counter:
                if await send(body) != 200:
                    failed += 1

        started, cpu_started, sink_started = time.perf_counter(), own_cpu(), cpu_seconds(sink_pid)
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        used, sink_used = own_cpu() - cpu_started, cpu_seconds(sink_pid) - sink_started
    if failed:
        raise RuntimeError(f"{client}: {failed} requests not answered 200")
    return requests / wall, used / requests * 1e6, sink_used / requests * 1e6


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        wait_listening(port)
        url = f"http://127.0.0.1:{port}/orders"
        clients = [args.only] if args.only else list(CLIENTS)
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name in clients:
                figures = await one_round(name, url, args.requests, args.concurrency, sink.pid)
                results[name].append(figures)
        print(f"{args.requests} POSTs a round, {args.concurrency} callers, {args.rounds} rounds; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
        print(f"{'client':<10} {'requests/s':>11} {'client CPU µs/request':>22} "
              f"{'sink CPU µs/request':>20}   rounds (requests/s; µs)")  # fmt: skip
        for name, rounds in results.items():
            rates, cpus, sinks = (statistics.median(column) for column in zip(*rounds, strict=True))
            detail = ", ".join(f"{r:,.0f}; {c:.0f}" for r, c, _ in rounds)
            print(f"{name:<10} {rates:>11,.0f} {cpus:>22.1f} {sinks:>20.1f}   {detail}")
        if len(results) == 2:
            own, other = (statistics.median(c for _, c, _ in results[n]) for n in CLIENTS)
            print(f"aiohttp / own client, CPU per request: {other / own:.2f}x")
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(10)
        except subprocess.TimeoutExpired:
            sink.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=tuple(CLIENTS))
    from retrieve_cli.components import run_event_loop

    # The event loop and GC settings of `retrieve worker` (uvloop when installed).
    run_event_loop(main(parser.parse_args()))
    print(f"(python {sys.version.split()[0]}, {sys.implementation.name})")
