"""Open-loop load generator: sends POSTs at a fixed rate and prints latency percentiles as JSON.

Run in its own process so the generator never shares a core's event loop with the server. It
sends with the worker's lean keep-alive client (about a third of aiohttp's client CPU per
request) on uvloop, so the generator adds as little as it can to the latency it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

from retrieve_worker.httpclient import DestinationClient


async def run(url: str, rate: int, seconds: float, body: bytes) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    client = DestinationClient(user_agent="retrieve-bench")
    headers = {"Content-Type": "application/json"}
    try:

        async def one() -> None:
            start = time.perf_counter()
            answer = await client.request("POST", url, headers, body, 30)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            latencies.append(time.perf_counter() - start)

        tasks = []
        total = int(rate * seconds)
        begin = time.perf_counter()
        for i in range(total):
            due = begin + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - begin
    finally:
        await client.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "sent": total,
        "achieved_rps": total / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000,
        "ok": statuses.get(200, 0),
    }


def run_event_loop_result(coro: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--body-file", required=True)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    print(json.dumps(run_event_loop_result(run(args.url, args.rate, args.seconds, body))))


if __name__ == "__main__":
    main()
