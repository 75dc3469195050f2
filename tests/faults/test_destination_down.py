"""A destination down for a while (answering 503, then not listening at all), then back:
jobs are retried with backoff, then dead-lettered, then `retrieve replay` delivers them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from redis.asyncio import Redis

from retrieve_core.job import Job
from retrieve_core.logstore import LogStore
from tests.support.fleet import INTEGRATION, KEYS, Fleet, dead_lettered_seqs, send_load
from tests.support.processes import retrieve_command

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

PER_PHASE = 150
MAX_ATTEMPTS = 4
RETRY = {"maxAttempts": MAX_ATTEMPTS, "backoffSeconds": 0.3, "maxBackoffSeconds": 1}


async def wait_dead(redis: Redis, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await redis.xlen(KEYS.dead_letters) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{await redis.xlen(KEYS.dead_letters)} dead letters, wanted {count}")


async def dead_letter_ages(redis: Redis) -> list[float]:
    """Seconds from each dead letter's receipt (by the receiver) to its failure (by the
    worker), as both recorded them."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(KEYS.dead_letters)  # type: ignore[assignment]
    return [float(fields[b"failed_at"]) - Job.decode(fields).received_at for _, fields in entries]


async def test_down_destination_jobs_retry_then_dead_letter_then_replay_delivers(
    fleet: Fleet,
) -> None:
    config = fleet.configure(retry=RETRY)
    receiver = fleet.receiver()
    fleet.worker(concurrency=16)
    redis, ledger, sink = fleet.redis, fleet.ledger, fleet.sink
    # Phase 1: the destination answers 503 (retryable) to everything.
    sink.status = 503
    await send_load([receiver.url], PER_PHASE, ledger)
    await wait_dead(redis, PER_PHASE, timeout=30)
    # Phase 2: the destination is not even listening (connection refused).
    await sink.stop()
    await send_load([receiver.url], PER_PHASE, ledger, start=PER_PHASE)
    await wait_dead(redis, 2 * PER_PHASE, timeout=30)
    assert sink.received == []

    records = await LogStore(redis, KEYS).query(statuses=["dead_letter"], limit=1000)
    assert len(records) == 2 * PER_PHASE
    assert {r.attempts for r in records} == {MAX_ATTEMPTS}
    # Backoff 0.3 s, 0.6 s, 1 s between the attempts, each with equal jitter (half to all of
    # it): at least 0.95 s from receipt to dead letter, by the product's own timestamps.
    ages = await dead_letter_ages(redis)
    assert len(ages) == 2 * PER_PHASE
    assert min(ages) >= 0.15 + 0.3 + 0.5, sorted(ages)[:5]

    # The destination is back; the operator replays the dead letters.
    sink.status = 200
    await sink.start()
    replay = await asyncio.to_thread(
        subprocess.run,
        [
            *retrieve_command(),
            "replay",
            INTEGRATION,
            "--config-dir",
            str(config),
            "--redis-url",
            fleet.redis_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout.strip().splitlines()[-1]) == {
        "integration": INTEGRATION,
        "replayed": 2 * PER_PHASE,
    }
    result = await fleet.settled("destination down")
    print(f"\n{result.line()} dead_lettered_before_replay={2 * PER_PHASE}")

    assert ledger.unexpected == []
    assert result.ok == 2 * PER_PHASE
    assert result.lost == []
    assert result.foreign == []
    assert result.delivered == 2 * PER_PHASE
    assert await dead_lettered_seqs(redis) == set()
    assert result.duplicates == 0
