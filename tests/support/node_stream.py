"""A bounded stream of webhooks through the node's Ingress, sent as a source system sends them.

Run inside the node's network namespace (``hack/node/run python -m tests.support.node_stream``).
Each webhook is a Shopify-style order with its own ``X-Shopify-Webhook-Id``; a connection error or
a 5xx is retried with the same id (as Shopify retries) until the webhook is answered 200 or the
deadline passes. Prints one JSON object: which order ids were accepted, the answers seen, and how
many retries it took. Stops by itself after ``--count`` webhooks or ``--duration`` seconds of
sending (sooner once ``--stop-file`` exists: the test says when it has seen enough), and gives
up retrying after ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time

import aiohttp


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.02, help="pause between sends")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop sending new webhooks after"
    )
    parser.add_argument("--deadline", type=float, default=120.0, help="stop retrying after")
    parser.add_argument("--stop-file", default="", help="stop sending once this file exists")
    parser.add_argument("--sender", default="127.0.0.1")
    args = parser.parse_args(argv)

    answers: collections.Counter[str] = collections.Counter()
    accepted: list[int] = []
    failed: list[int] = []
    retries = 0
    started = time.monotonic()
    stop_at = started + args.deadline
    send_until = started + args.duration if args.duration else float("inf")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for order_id in range(args.first_id, args.first_id + args.count):
        queue.put_nowait(order_id)

    connector = aiohttp.TCPConnector(local_addr=(args.sender, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)

    async def send(session: aiohttp.ClientSession, order_id: int) -> None:
        nonlocal retries
        body = json.dumps(
            {
                "event": "order.created",
                "order": {
                    "id": order_id,
                    "email": f"c{order_id}@example.com",
                    "total_price": "1.5",
                },
            }
        )
        headers = {
            "Host": args.host,
            "Content-Type": "application/json",
            "X-Shopify-Webhook-Id": f"stream-{order_id}",
        }
        delay = 0.1
        while True:
            try:
                async with session.post(args.url, data=body, headers=headers) as response:
                    await response.read()
                    answers[str(response.status)] += 1
                    if response.status == 200:
                        accepted.append(order_id)
                        return
                    if response.status < 500:
                        failed.append(order_id)
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                answers[type(exc).__name__] += 1
            if time.monotonic() > stop_at:
                failed.append(order_id)
                return
            retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def sending() -> bool:
        if time.monotonic() >= send_until:
            return False
        return not (args.stop_file and os.path.exists(args.stop_file))

    async def sender(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and sending():
            order_id = queue.get_nowait()
            await send(session, order_id)
            await asyncio.sleep(args.interval)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(sender(session) for _ in range(args.concurrency)))

    print(
        json.dumps(
            {
                "accepted": sorted(accepted),
                "failed": sorted(failed),
                "answers": dict(answers),
                "retries": retries,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
