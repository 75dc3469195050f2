"""A receiver sent SIGTERM under load drains; clients move to the surviving receiver."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support.fleet import (
    KEYS,
    Ledger,
    Receiver,
    Worker,
    send_load,
    tally,
    wait_settled,
    write_fleet_config,
)
from tests.support.processes import Sink
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

REQUESTS = 1500


async def test_sigtermed_receiver_answers_in_flight_requests_and_loses_nothing(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = write_fleet_config(tmp_path / "config", sink.url)
    leaving = Receiver(config, private_redis_server.url).start()
    staying = Receiver(config, private_redis_server.url).start()
    worker = Worker(config, private_redis_server.url, concurrency=16).start()
    redis = Redis.from_url(private_redis_server.url)
    ledger = Ledger()
    try:
        load = asyncio.create_task(
            send_load([leaving.url, staying.url], REQUESTS, ledger, rate=300, attempts=6)
        )
        await asyncio.sleep(2.0)
        answered_before = sum(ledger.answers.values())
        leaving.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert leaving.process.process is not None
        exit_code = await asyncio.to_thread(leaving.process.process.wait, 20)
        drain_seconds = time.monotonic() - signalled
        await load
        await wait_settled(ledger, sink, redis, timeout=40, also=2.0)
        result = await tally("receiver SIGTERM", ledger, sink, redis)
        print(
            f"\n{result.line()} disconnects={ledger.disconnects} "
            f"answered_before_sigterm={answered_before} drain={drain_seconds:.2f}s "
            f"exit={exit_code}"
        )

        assert exit_code == 0, leaving.process.output()
        assert ledger.unexpected == []
        assert [s for s, status in ledger.final.items() if status != 200] == []
        assert result.ok == REQUESTS  # every request got a 200 from one receiver or the other
        assert result.lost == []
        assert result.foreign == []
        assert result.delivered == REQUESTS
        # Retries after a dropped connection reuse the delivery id: dedupe keeps one job each.
        assert await redis.xlen(KEYS.dead_letters) == 0
        assert "Traceback" not in leaving.process.output()
    finally:
        await redis.aclose()
        worker.stop()
        staying.process.stop()
        leaving.process.stop()
