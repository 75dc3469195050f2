"""A receiver sent SIGTERM under load drains; clients move to the surviving receiver."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.support.fleet import KEYS, Fleet, send_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

REQUESTS = 1500


async def test_sigtermed_receiver_answers_in_flight_requests_and_loses_nothing(
    fleet: Fleet,
) -> None:
    leaving = fleet.receiver()
    staying = fleet.receiver()
    fleet.worker(concurrency=16)
    ledger = fleet.ledger
    load = asyncio.create_task(
        send_load([leaving.url, staying.url], REQUESTS, ledger, rate=300, attempts=6)
    )
    await fleet.answered(300)  # the load is under way on both receivers
    answered_before = sum(ledger.answers.values())
    leaving.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert leaving.process.process is not None
    exit_code = await asyncio.to_thread(leaving.process.process.wait, 20)
    drain_seconds = time.monotonic() - signalled  # reported, not asserted
    await load
    result = await fleet.settled("receiver SIGTERM")
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
    assert await fleet.redis.xlen(KEYS.dead_letters) == 0
    assert "Traceback" not in leaving.process.output()
