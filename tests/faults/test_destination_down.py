"""A destination down for a while (answering 503, then not listening at all), then back:
jobs are retried with backoff, then dead-lettered, then `retrieve replay` delivers them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retrieve_core.logstore import LogStore
from tests.support.fleet import (
    INTEGRATION,
    KEYS,
    Ledger,
    Receiver,
    Worker,
    dead_lettered_seqs,
    send_load,
    tally,
    wait_settled,
    write_fleet_config,
)
from tests.support.processes import Sink, retrieve_command
from tests.support.redis_server import RedisServer

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


async def test_down_destination_jobs_retry_then_dead_letter_then_replay_delivers(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = write_fleet_config(tmp_path / "config", sink.url, retry=RETRY)
    receiver = Receiver(config, private_redis_server.url).start()
    worker = Worker(config, private_redis_server.url, concurrency=16).start()
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        # Phase 1: the destination answers 503 (retryable) to everything.
        sink.status = 503
        started = time.monotonic()
        await send_load([receiver.url], PER_PHASE, ledger)
        await wait_dead(redis, PER_PHASE, timeout=30)
        first_dead = time.monotonic() - started
        # Phase 2: the destination is not even listening (connection refused).
        await sink.stop()
        await send_load([receiver.url], PER_PHASE, ledger, start=PER_PHASE)
        await wait_dead(redis, 2 * PER_PHASE, timeout=30)
        assert sink.received == []

        records = await LogStore(redis, KEYS).query(statuses=["dead_letter"], limit=1000)
        assert len(records) == 2 * PER_PHASE
        assert {r.attempts for r in records} == {MAX_ATTEMPTS}
        # Backoff 0.3 s, 0.6 s, 1 s between the attempts: at least ~1.9 s to the dead letter.
        assert first_dead > 1.9

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
                private_redis_server.url,
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
        await wait_settled(ledger, sink, redis, timeout=40, also=1.0)
        result = await tally("destination down", ledger, sink, redis)
        print(
            f"\n{result.line()} dead_lettered_before_replay={2 * PER_PHASE} "
            f"first_dead_after={first_dead:.1f}s"
        )

        assert ledger.unexpected == []
        assert result.ok == 2 * PER_PHASE
        assert result.lost == []
        assert result.foreign == []
        assert result.delivered == 2 * PER_PHASE
        assert await dead_lettered_seqs(redis) == set()
        assert result.duplicates == 0
    finally:
        await redis.aclose()
        worker.stop()
        receiver.process.stop()
