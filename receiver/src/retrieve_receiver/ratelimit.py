"""Rate limits: token buckets kept in Redis, so a limit holds across receiver replicas.

A request for a limited integration (or an integration of a limited application) takes one
token from each bucket that applies, in one atomic script: either every bucket has a token and
each loses one, or none is touched and the answer says how long until the emptiest one refills.
The script reads the clock of Redis (`TIME`), so replicas with skewed clocks share one timeline.
Requests with no limit configured never call this module: no extra round trip on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from retrieve_core.models import RateLimitSpec
from retrieve_core.redisclient import RedisClient

# KEYS: one bucket hash a limit (fields `tokens`, `ts` in microseconds of Redis time).
# ARGV: rate_1, capacity_1, rate_2, capacity_2, ... (tokens a second, bucket size).
# Returns 0 when every bucket gave a token, else the wait in milliseconds (at least 1).
_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local levels = {}
local wait_ms = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = capacity
  elseif now > ts then
    tokens = math.min(capacity, tokens + (now - ts) * rate / 1000000)
  end
  levels[i] = tokens
  if tokens < 1 then
    wait_ms = math.max(wait_ms, math.ceil((1 - tokens) * 1000 / rate))
  end
end
if wait_ms > 0 then
  return wait_ms
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(capacity * 1000 / rate) + 1000)
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit to take a token from: its Redis key and its spec."""

    key: str
    limit: RateLimitSpec


def retry_after_seconds(wait_ms: int) -> int:
    """The `Retry-After` value: whole seconds, at least 1 (HTTP has no fractions here)."""
    return max(1, math.ceil(wait_ms / 1000))


class RateLimiter:
    """Takes tokens from the buckets of a request in one EVALSHA (redis-py reloads on NOSCRIPT)."""

    def __init__(self, redis: RedisClient) -> None:
        self._script = redis.register_script(_SCRIPT)

    async def acquire(self, buckets: Sequence[Bucket]) -> int:
        """0 when the request may go on, else the milliseconds to wait before a retry."""
        if not buckets:
            return 0
        args: list[str] = []
        for bucket in buckets:
            args += [repr(bucket.limit.requests_per_second), str(bucket.limit.capacity)]
        result = await self._script(keys=[b.key for b in buckets], args=args)
        return int(result)
