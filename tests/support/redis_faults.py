"""Failures redis-py lets out of a Redis call that are not its own errors."""

from __future__ import annotations

from redis.asyncio.connection import Connection


async def send_on_torn_down_connection(host: str, port: int) -> None:
    """Raises what redis-py raises when another task tears a connection down under a write
    (seen with a cluster client during a resharding): an AttributeError from inside redis-py,
    `'NoneType' object has no attribute 'writelines'`, instead of a `ConnectionError`."""
    connection = Connection(host=host, port=port)
    await connection.connect()  # type: ignore[no-untyped-call]
    try:
        # What `disconnect()` leaves behind when it runs between a connect and its first write.
        writer, connection._writer = connection._writer, None
        await connection._send_packed_command(connection.pack_command("PING"))
    finally:
        if writer is not None:
            writer.close()
