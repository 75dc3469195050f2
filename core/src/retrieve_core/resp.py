"""Script calls packed straight into RESP bytes, for the two hot paths (enqueue and outcomes).

redis-py's generic packing and its per-command pipeline bookkeeping cost more than the rest of
a webhook; these helpers send already-packed commands on a connection of the client's pool
(which keeps doing what it is good at: connecting, AUTH, TLS, SELECT) and read the replies.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    """A RESP command from its parts (each already bytes)."""
    return b"*%d\r\n%b" % (len(parts), b"".join(bulk(part) for part in parts))


async def execute_packed(redis: Redis, data: bytes, count: int) -> list[Any]:
    """Send `count` packed commands in one write and read their replies, in order.

    An error reply is returned as its `ResponseError` (e.g. `NoScriptError`), not raised.
    Reconnects once when the connection was lost (Redis restarted since it was last used).
    """
    try:
        return await _roundtrip(redis, data, count)
    except (RedisConnectionError, ConnectionError):
        return await _roundtrip(redis, data, count)


async def _roundtrip(redis: Redis, data: bytes, count: int) -> list[Any]:
    pool = redis.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    completed = False
    try:
        await connection.send_packed_command(data, check_health=False)
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:  # an error reply, read in full
                replies.append(exc)
        completed = True
        return replies
    finally:
        if not completed:  # cancelled or failed mid-reply: its stream is out of step
            await connection.disconnect(nowait=True)
        await pool.release(connection)
