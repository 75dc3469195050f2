"""The enqueue through redis-py's pipeline: the B side of `enqueue_bench.py --compare`.

`PipelineEnqueuer` is `retrieve_core.enqueue.Enqueuer` (the same batching, the same script, one
EVALSHA per application per batch) except for the two things the RESP packer replaces: each
delivery's keys and arguments stay Python values, and a batch's calls go through
`redis.asyncio`'s pipeline, which packs them, keeps its per-command bookkeeping and parses the
replies. `check_same_calls()` proves that redis-py then sends byte for byte what the packer sends,
so the comparison is of the packing alone; it fails when enqueue.py changes its call layout.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, cast

from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError

from retrieve_core.enqueue import Delivery, Enqueuer, Outcome, _Call, _group, _pack_delivery
from retrieve_core.keys import COUNTER_TTL_SECONDS, AppKeys, counter_bucket
from retrieve_core.logstore import truncate_payload_bytes


def _delivery_values(keys: AppKeys, delivery: Delivery) -> tuple[list[Any], list[Any]]:
    """A delivery's 3 keys and 9 arguments as redis-py takes them (the packer's layout)."""
    dedupe = delivery.dedupe_id is not None and delivery.dedupe_ttl_seconds > 0
    dedupe_key = keys.jobs  # a declared key the script never touches
    if dedupe and delivery.dedupe_id is not None:
        dedupe_key = keys.dedupe(delivery.integration_id, delivery.dedupe_id)
    bucket = counter_bucket(delivery.received_at)
    payload, truncated = truncate_payload_bytes(delivery.body, delivery.payload_limit)
    return (
        [
            keys.log_record_prefix + delivery.job_id,
            f"{keys.counters_prefix}{delivery.integration_id}:{bucket}",
            dedupe_key,
        ],
        [
            delivery.job_json, delivery.job_id, delivery.received_at, delivery.integration_id,
            delivery.dedupe_ttl_seconds if dedupe else 0, delivery.source_ip, delivery.format,
            payload, "true" if truncated else "false",
        ],
    )  # fmt: skip


def _call_values(call: _Call) -> list[Any]:
    """EVALSHA's numkeys, keys and arguments for one call, after the script's sha."""
    keys = [call.keys.jobs, call.keys.log_index, call.keys.last_received]
    keys += itertools.chain.from_iterable(cast(list[list[Any]], call.packed_keys))
    common = [call.max_age, COUNTER_TTL_SECONDS, call.max_records, call.keys.log_record_prefix]
    arguments = itertools.chain.from_iterable(cast(list[list[Any]], call.packed_args))
    return [len(keys), *keys, *common, *arguments]


class PipelineEnqueuer(Enqueuer):
    """`Enqueuer` with redis-py packing the calls and its pipeline sending them (one server;
    no `WAIT`)."""

    async def store(self, keys: AppKeys, delivery: Delivery) -> Outcome:
        key_values, arg_values = _delivery_values(keys, delivery)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        limits = (delivery.log_max_age_seconds, delivery.log_max_records, delivery.wait)
        self._pending.append(cast(Any, (keys, *limits, key_values, arg_values, future)))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        replies = await self._pipeline(calls)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a NOSCRIPT call ran nothing: load the script, send those again
            await self._redis.script_load(self._script.source)
            again = await self._pipeline([calls[n] for n in missing])
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return replies

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        sha = self._script.sha.decode()
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(sha, *_call_values(call))
            return list(await pipe.execute(raise_on_error=False))


def check_same_calls() -> None:
    """redis-py packs the pipeline's call into exactly the bytes of the packer's call."""
    keys = AppKeys("bench", "check")
    delivery = Delivery(
        job_id="job-1", job_json=b'{"payload": {}}', integration_id="ABC123",
        received_at=time.time(), source_ip="127.0.0.1", format="json", body=b"{}" * 40,
        payload_limit=64, log_max_age_seconds=3600, dedupe_id="d-1", dedupe_ttl_seconds=60,
        log_max_records=1000,
    )  # fmt: skip
    sha = Enqueuer(cast(Any, None))._script.sha
    future: Any = None
    [packed] = _group([(keys, 3600, 1000, (0, 0), *_pack_delivery(keys, delivery), future)])
    [values] = _group([(keys, 3600, 1000, (0, 0), *_delivery_values(keys, delivery), future)])  # type: ignore[list-item]
    by_redis_py = b"".join(Connection().pack_command("EVALSHA", sha, *_call_values(values)))
    if by_redis_py != packed.command(sha):
        raise SystemExit(
            "bench/pipeline_enqueuer.py no longer sends the calls enqueue.py packs: update "
            f"_delivery_values / _call_values\n{by_redis_py[:400]!r}\n{packed.command(sha)[:400]!r}"
        )
