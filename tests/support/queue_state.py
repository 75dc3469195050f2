"""When nothing more can be delivered: the event a test waits for before asserting that
something (a duplicate, a late delivery) did not happen, instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from retrieve_core.keys import AppKeys


async def quiescent(redis: Redis, keys: AppKeys) -> bool:
    """No job of the application waits in the stream, is taken and not yet acknowledged (a
    worker acknowledges after the outcome is recorded), or is due for a retry."""
    if await redis.zcard(keys.delayed):
        return False
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(keys.jobs)
    except ResponseError:  # no stream: nothing was ever queued
        return True
    for group in groups:
        if group["pending"]:
            return False
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell (entries deleted): compare the last ids
            stream: dict[str, Any] = await redis.xinfo_stream(keys.jobs)
            if group["last-delivered-id"] != stream["last-generated-id"]:
                return False
        elif lag:
            return False
    return True


async def wait_quiescent(redis_url: str, keys: AppKeys, timeout: float = 30.0) -> None:
    """Waits until `quiescent`: every job queued so far has had its outcome."""
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not await quiescent(redis, keys):
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs of {keys.tag} still in flight after {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
