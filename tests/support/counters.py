"""Reading the per-minute status counters the way a test needs them: a request made at
12:00:59.9 is counted in the minute before the one the test asserts in."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from retrieve_core.keys import AppKeys, counter_bucket


async def counter_total(
    redis: Redis, keys: AppKeys, integration_id: str, name: str, *, since: float
) -> int:
    """The sum of counter `name` over every minute bucket from `since` until now."""
    total = 0
    for bucket in range(counter_bucket(since), counter_bucket(time.time()) + 1):
        value = await redis.hget(keys.counters(integration_id, bucket), name)
        total += int(value) if value is not None else 0
    return total
