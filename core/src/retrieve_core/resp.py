"""Script calls packed straight into RESP bytes, for the two hot paths (enqueue and outcomes).

redis-py's generic packing and its per-command pipeline bookkeeping cost more than the rest of
a webhook; these helpers send already-packed commands on a connection of the client's pool
(which keeps doing what it is good at: connecting, AUTH, TLS, SELECT) and read the replies.

On one server (or a Sentinel-named primary) a batch is one write on one connection. On a
Redis Cluster the calls are grouped by the node that owns each call's slot: one write per node,
the nodes in parallel; a `MOVED` reply refreshes the topology and sends the call to the new
owner, an `ASK` reply sends it once more, after `ASKING`, to the importing node, and a
`NOSCRIPT` reply loads the script on the node that gave it. A redirected or NOSCRIPT call ran
nothing (Redis refuses a script call before running it), so sending it again is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import ConnectionPool
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from .redisclient import RedisClient

_ASKING: Final = b"*1\r\n$6\r\nASKING\r\n"
MAX_REDIRECTS: Final = 5


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    """A RESP command from its parts (each already bytes)."""
    return b"*%d\r\n%b" % (len(parts), b"".join(bulk(part) for part in parts))


def evalsha_head(sha: bytes, key_count: int, arg_count: int) -> bytes:
    """The head of a packed `EVALSHA <sha> <key_count> <keys...> <args...>` call.

    The caller appends the call's `key_count` keys then its `arg_count` arguments, each packed
    as a bulk string (`bulk`), and joins it all in one copy (the hot paths pack what repeats
    once and keep the per-call work to that join).
    """
    return b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (
        3 + key_count + arg_count,
        bulk(sha),
        bulk(b"%d" % key_count),
    )


async def execute_packed(redis: Redis, data: bytes, count: int) -> list[Any]:
    """Send `count` packed commands in one write and read their replies, in order.

    An error reply is returned as its `ResponseError` (e.g. `NoScriptError`), not raised.
    Reconnects once when the connection was lost (Redis restarted since it was last used).
    """
    try:
        return await _roundtrip(redis.connection_pool, data, count)
    except (RedisConnectionError, ConnectionError):
        return await _roundtrip(redis.connection_pool, data, count)


async def _roundtrip(pool: ConnectionPool | ClusterNode, data: bytes, count: int) -> list[Any]:
    if isinstance(pool, ClusterNode):
        connection = pool.acquire_connection()
    else:  # without a command name: redis-py 5.0-5.2 required one, hence the floor 6.2
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
        if isinstance(pool, ClusterNode):
            pool.release(connection)
        else:
            await pool.release(connection)


class PackedScript:
    """Runs packed `EVALSHA` calls of one script, wherever each call's keys live.

    `run` takes (a key of the call, the packed call) pairs and returns each call's reply or
    error, in order. All keys of one call must share one hash slot. `waits[i]` = (replicas,
    timeout ms) asks for `WAIT` after call i, on its connection: a call that fewer replicas
    confirmed within the timeout gets a `DurabilityError` (it was written on the primary).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._load = command(b"SCRIPT", b"LOAD", source.encode())

    async def run(
        self,
        client: RedisClient,
        calls: Sequence[tuple[bytes, bytes]],
        waits: Sequence[tuple[int, int]] = (),
    ) -> list[Any]:
        if isinstance(client, RedisCluster):
            return await self._run_cluster(client, calls, waits)
        # The fast path: one write, one connection (as before clusters were supported).
        everyone = range(len(calls))
        wait = _wait_command(waits, everyone)
        data = b"".join(data for _, data in calls) + wait
        replies = await execute_packed(client, data, len(calls) + bool(wait))
        if wait:
            _apply_wait(replies.pop(), waits, everyone, replies)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted or was flushed: a NOSCRIPT call did nothing, so rerun it.
            again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            wait = _wait_command(waits, again)
            data = self._load + b"".join(calls[i][1] for i in again) + wait
            rerun = await execute_packed(client, data, 1 + len(again) + bool(wait))
            if wait:
                aligned = [(0, 0)] + [_wait_of(waits, i) for i in again]
                _apply_wait(rerun.pop(), aligned, range(1, len(rerun)), rerun)
            if isinstance(rerun[0], ResponseError):
                rerun[1:] = [rerun[0]] * len(again)
            for i, reply in zip(again, rerun[1:], strict=True):
                replies[i] = reply
        return replies

    async def _run_cluster(
        self,
        client: RedisCluster,
        calls: Sequence[tuple[bytes, bytes]],
        waits: Sequence[tuple[int, int]],
    ) -> list[Any]:
        await client.initialize()  # a no-op once the topology is known
        manager = client.nodes_manager
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        asking: dict[int, ClusterNode] = {}  # call -> the node an ASK named
        load_on: set[str] = set()  # nodes that answered NOSCRIPT
        for attempt in range(MAX_REDIRECTS + 1):
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            for i in pending:
                node = asking.get(i) or manager.get_node_from_slot(key_slot(calls[i][0]))
                groups.setdefault(node.name, (node, []))[1].append(i)
            results = await asyncio.gather(
                *(self._send_to_node(node, calls, members, asking=asking,
                                     load=node.name in load_on, waits=waits)
                  for node, members in groups.values()),
                return_exceptions=True,
            )  # fmt: skip
            pending, refresh, load_on = [], False, set()
            asked, asking = asking, {}
            for (node, members), result in zip(groups.values(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    refresh = True  # a node down: learn the new topology for the next call
                    for i in members:
                        replies[i] = result
                    continue
                for i, reply in zip(members, result, strict=True):
                    replies[i] = reply
                    last = attempt == MAX_REDIRECTS
                    if isinstance(reply, MovedError) and not last:
                        refresh = True
                        pending.append(i)
                    elif isinstance(reply, AskError) and not last:
                        target = manager.get_node(reply.host, reply.port)
                        if target is None:
                            refresh = True
                        else:
                            asking[i] = target
                        pending.append(i)
                    elif isinstance(reply, NoScriptError) and not last:
                        load_on.add(asked.get(i, node).name)
                        pending.append(i)
                    elif isinstance(reply, TryAgainError) and not last:
                        pending.append(i)  # a multi-key call during a migration: soon again
            if refresh:  # failing here leaves the redirected calls their MOVED errors
                with contextlib.suppress(RedisError, OSError):
                    await manager.initialize()
            if not pending:
                break
            if any(isinstance(replies[i], TryAgainError) for i in pending):
                await asyncio.sleep(0.05 * (attempt + 1))
        return replies

    async def _send_to_node(
        self,
        node: ClusterNode,
        calls: Sequence[tuple[bytes, bytes]],
        members: list[int],
        *,
        asking: dict[int, ClusterNode],
        load: bool,
        waits: Sequence[tuple[int, int]],
    ) -> list[Any]:
        parts = [self._load] if load else []
        for i in members:
            if i in asking:
                parts.append(_ASKING)
            parts.append(calls[i][1])
        wait = _wait_command(waits, members)
        if wait:
            parts.append(wait)
        count = len(parts)
        try:
            raw = await _roundtrip(node, b"".join(parts), count)
        except (RedisConnectionError, ConnectionError):
            raw = await _roundtrip(node, b"".join(parts), count)
        acked = raw.pop() if wait else None
        replies = iter(raw)
        if load:
            loaded = next(replies)
            if isinstance(loaded, ResponseError):
                return [loaded] * len(members)
        out: list[Any] = []
        for i in members:
            if i in asking:
                next(replies)  # ASKING's +OK
            out.append(next(replies))
        if wait:
            _apply_wait(acked, [_wait_of(waits, i) for i in members], range(len(members)), out)
        return out


class DurabilityError(RedisError):
    """Written on the primary, but fewer replicas than asked confirmed it in time."""


def _wait_command(waits: Sequence[tuple[int, int]], members: Sequence[int]) -> bytes:
    """One `WAIT` for the members that ask for one: the most replicas and the longest timeout
    any of them asks for (WAIT covers every earlier write of the connection)."""
    asked = [w for w in (_wait_of(waits, i) for i in members) if w[0] > 0]
    if not asked:
        return b""
    replicas = max(n for n, _ in asked)
    timeout_ms = max(t for _, t in asked)
    return command(b"WAIT", b"%d" % replicas, b"%d" % timeout_ms)


def _wait_of(waits: Sequence[tuple[int, int]], i: int) -> tuple[int, int]:
    return waits[i] if i < len(waits) else (0, 0)


def _apply_wait(
    acked: Any, waits: Sequence[tuple[int, int]], members: Sequence[int], replies: list[Any]
) -> None:
    """Turns the reply of each member that asked for more replicas than `acked` into a
    `DurabilityError` (`waits` is aligned with `replies`)."""
    for m in members:
        replicas, timeout_ms = _wait_of(waits, m)
        if replicas <= 0 or isinstance(replies[m], Exception):
            continue
        if isinstance(acked, Exception) or not isinstance(acked, int) or acked < replicas:
            got = acked if isinstance(acked, int) else repr(acked)
            replies[m] = DurabilityError(
                f"WAIT: {got} of {replicas} replica(s) confirmed within {timeout_ms} ms"
            )
