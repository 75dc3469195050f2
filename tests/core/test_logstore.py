"""The webhook log store against a real Redis: trimming by count and by age, in chunks."""

from __future__ import annotations

import json
import time

import pytest
from redis.asyncio import Redis

from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogRecord, LogStatus, LogStore, add_record, encode_update


async def _store_records(redis: Redis, keys: AppKeys, timestamps: list[float]) -> list[str]:
    ids = [f"rec-{n:04d}" for n in range(len(timestamps))]
    async with redis.pipeline(transaction=False) as pipe:
        for record_id, ts in zip(ids, timestamps, strict=True):
            record = LogRecord(
                id=record_id, ts=ts, source_ip="127.0.0.1", integration_id="ABC123",
                http_status=200, status=LogStatus.QUEUED,
            )  # fmt: skip
            add_record(pipe, keys, record, 3600)
        await pipe.execute()
    return ids


@pytest.mark.redis
async def test_trim_keeps_the_newest_records_and_drops_the_rest_in_chunks(
    redis_client: Redis,
) -> None:
    keys = AppKeys("shop", "trim-count")
    now = time.time()
    ids = await _store_records(redis_client, keys, [now - 100 + n for n in range(25)])
    store = LogStore(redis_client, keys)

    assert await store.trim(max_records=10, max_age_seconds=3600, chunk=4) == 15

    assert await redis_client.zrange(keys.log_index, 0, -1) == [i.encode() for i in ids[15:]]
    for record_id in ids[:15]:
        assert not await redis_client.exists(keys.log_record(record_id))
    for record_id in ids[15:]:
        assert await redis_client.exists(keys.log_record(record_id))
    assert await store.trim(max_records=10, max_age_seconds=3600, chunk=4) == 0


@pytest.mark.redis
async def test_trim_drops_records_older_than_the_age_bound(redis_client: Redis) -> None:
    keys = AppKeys("shop", "trim-age")
    now = time.time()
    ids = await _store_records(redis_client, keys, [now - 500, now - 400, now - 10, now - 5])
    store = LogStore(redis_client, keys)

    assert await store.trim(max_records=100, max_age_seconds=60, chunk=1) == 2

    assert await redis_client.zrange(keys.log_index, 0, -1) == [i.encode() for i in ids[2:]]
    assert [r.id for r in await store.query()] == [ids[3], ids[2]]


@pytest.mark.unit
def test_a_processing_result_encodes_as_json_even_with_text_utf8_cannot_carry() -> None:
    flat = encode_update(
        {"attempts": 2, "console": ["caf\u00e9", "lone \ud800"], "destinations": [{"ms": 1.5}]}
    )
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert json.loads(fields["attempts"]) == 2
    assert json.loads(fields["console"]) == ["caf\u00e9", "lone \ud800"]
    assert json.loads(fields["destinations"]) == [{"ms": 1.5}]
    assert float(fields["updated_at"]) > 0
