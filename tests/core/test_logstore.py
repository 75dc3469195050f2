"""The webhook log store against a real Redis: trimming by count and by age, in chunks; the
count bound held by the enqueue script itself for accepted requests."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from harness.redis_cluster import ClusterServers
from retrieve_core.enqueue import Delivery, Enqueuer, Outcome
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import (
    EVICT_PER_WRITE,
    LogRecord,
    LogStatus,
    LogStore,
    add_record,
    encode_update,
    truncate_payload,
    truncate_payload_bytes,
)
from retrieve_core.redisclient import connect_redis


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


def _accepted(n: int, max_records: int) -> Delivery:
    return Delivery(
        job_id=f"job-{n:05d}", job_json=b'{"n": %d}' % n, integration_id="ABC123",
        received_at=1_700_000_000.0 + n / 1000, source_ip="127.0.0.1", format="json",
        body=b'{"n": %d}' % n, payload_limit=1024, log_max_age_seconds=3600,
        dedupe_id=f"d-{n}", dedupe_ttl_seconds=60, log_max_records=max_records,
    )  # fmt: skip


@pytest.mark.redis
async def test_a_flood_of_accepted_requests_never_holds_more_records_than_max_records(
    redis_client: Redis,
) -> None:
    """Before: the enqueue script only added records, and `maxRecords: 100` held thousands
    until the periodic trim (issue 12, defect 4). No trim runs here: the script holds it."""
    keys = AppKeys("shop", "accepted-flood")
    enqueuer = Enqueuer(redis_client)
    sizes: list[int] = []
    for wave in range(10):  # 10 waves of 300 concurrent callers: batches of up to 128
        deliveries = [_accepted(wave * 300 + n, 100) for n in range(300)]
        outcomes = await asyncio.gather(*(enqueuer.store(keys, d) for d in deliveries))
        assert set(outcomes) == {Outcome.QUEUED}
        sizes.append(await redis_client.zcard(keys.log_index))

    assert sizes == [100] * 10
    assert await redis_client.xlen(keys.jobs) == 3000  # jobs are never trimmed, only records
    kept = [f"job-{n:05d}" for n in range(2900, 3000)]  # the newest
    assert await redis_client.zrange(keys.log_index, 0, -1) == [i.encode() for i in kept]
    hashes = [k async for k in redis_client.scan_iter(match=f"{keys.log_record_prefix}*")]
    assert sorted(hashes) == sorted(keys.log_record(i).encode() for i in kept)


@pytest.mark.redis
async def test_a_lowered_bound_is_approached_a_few_records_per_write(redis_client: Redis) -> None:
    """A backlog (a bound just lowered) goes EVICT_PER_WRITE more per call, not all at once."""
    keys = AppKeys("shop", "lowered-bound")
    enqueuer = Enqueuer(redis_client)
    for n in range(200):
        await enqueuer.store(keys, _accepted(n, 1000))
    assert await redis_client.zcard(keys.log_index) == 200

    await enqueuer.store(keys, _accepted(200, 10))
    assert await redis_client.zcard(keys.log_index) == 201 - 1 - EVICT_PER_WRITE
    for n in range(201, 220):  # 184 - 10 = 174 to go, 17 a call: 11 calls
        await enqueuer.store(keys, _accepted(n, 10))
    assert await redis_client.zcard(keys.log_index) == 10


@pytest.mark.redis
async def test_without_a_bound_the_script_keeps_every_record(redis_client: Redis) -> None:
    keys = AppKeys("shop", "unbounded")
    enqueuer = Enqueuer(redis_client)
    await asyncio.gather(*(enqueuer.store(keys, _accepted(n, 0)) for n in range(50)))
    assert await redis_client.zcard(keys.log_index) == 50


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [b"\xff" * 5000, b"\xfe\xff" * 700, "\u00e9".encode() * 3000, "\U0001f600".encode() * 600],
    ids=["not-utf8", "not-utf8-pairs", "two-byte-chars", "four-byte-chars"],
)
def test_a_stored_payload_is_bounded_in_bytes_whatever_the_body(body: bytes) -> None:
    """SECURITY.md: at most `limit` bytes of a body are stored. Bytes that are not UTF-8 become
    U+FFFD, three bytes each: 1,024 of them once took 3,072 bytes of Redis."""
    for limit in (1024, 1023, 1022, 7, 1, 0):
        text, truncated = truncate_payload(body, limit)
        stored, truncated_too = truncate_payload_bytes(body, limit)
        assert len(text.encode()) <= limit
        assert stored == text.encode()
        assert truncated
        assert truncated_too
        assert len(stored) >= limit - 3  # cut at the limit, not far short of it


@pytest.mark.unit
@settings(deadline=None)  # a stalled CI machine is not a failure
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=320))
def test_a_payload_is_kept_whole_when_it_fits_and_within_its_bound_when_not(
    body: bytes, limit: int
) -> None:
    text, truncated = truncate_payload(body, limit)
    assert len(text.encode()) <= limit
    assert truncate_payload_bytes(body, limit) == (text.encode(), truncated)
    try:
        whole = body.decode()
    except UnicodeDecodeError:
        whole = None
    if whole is not None and len(body) <= limit:
        assert (text, truncated) == (whole, False)
    if whole is not None:  # valid UTF-8 cut anywhere: a prefix of its text, never a U+FFFD
        assert whole.startswith(text)
    if len(body) > limit:
        assert truncated


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


@pytest.mark.redis
async def test_the_count_bound_holds_on_a_redis_cluster_for_every_application(
    redis_cluster: ClusterServers,
) -> None:
    """The records the script removes are not among its declared keys: they share the
    application's hash tag, so its slot, on whichever master owns it."""
    redis = connect_redis(redis_cluster.url)
    apps = [AppKeys("cluster-bound", f"app-{n}") for n in range(6)]  # spread over the masters
    try:
        enqueuer = Enqueuer(redis)
        await asyncio.gather(*(enqueuer.store(apps[n % 6], _accepted(n, 10)) for n in range(600)))
        for keys in apps:
            assert await redis.zcard(keys.log_index) == 10
            kept = [k async for k in redis.scan_iter(match=f"{keys.log_record_prefix}*")]
            assert len(kept) == 10
    finally:
        await redis.aclose()


@pytest.mark.unit
@pytest.mark.parametrize("prefix", range(1018, 1025))
def test_a_character_cut_at_the_limit_is_left_out_not_replaced(prefix: int) -> None:
    body = ("x" * prefix + "\U0001f600").encode()  # the emoji is 4 bytes; cut anywhere in it
    text, truncated = truncate_payload(body, 1024)
    assert "\ufffd" not in text
    assert text == body.decode()[: len(text)]
    assert truncated is (len(body) > 1024)


@pytest.mark.unit
def test_result_text_stays_within_its_bound_after_escaping() -> None:
    """A lone surrogate is written as a 6-character escape: the bound holds after it."""
    flat = encode_update({"message": "\ud83d" * 5000, "error": "e" * 3000})
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert fields["message"] == "\\ud83d" * 333 + "\\u"
    assert fields["error"] == "e" * 2000
