"""A worker starting under a consumer name that still has pending entries (a container restarted
in its pod keeps `POD_NAME`) takes them back at once, with their delivery counts: a job that
keeps killing the pod is dead-lettered in the end, not run forever. `claim_idle_ms` is ten
minutes, so XAUTOCLAIM cannot be what runs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from retrieve_cli.sink import Sink
from retrieve_core.keys import CONSUMER_GROUP
from retrieve_core.logstore import LogStatus
from retrieve_worker.queue import ensure_group

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]
POD = "worker-6c8d5-x2x9q"
TEN_MINUTES_MS = 600_000


async def test_a_worker_takes_back_what_its_consumer_name_left_pending(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"tb": {"destinations": [{"name": "d", "http": {"url": sink.url_for("/tb")}}]}}
    )
    await ensure_group(h.redis, h.keys)
    jobs = [await h.enqueue("tb", {"n": n}) for n in range(3)]
    # The previous life of the pod read them, then died before any outcome.
    await h.redis.xreadgroup(CONSUMER_GROUP, POD, {h.keys.jobs: ">"}, count=10)

    worker = await h.start_worker(consumer=POD, claim_idle_ms=TEN_MINUTES_MS)
    for job in jobs:
        await h.wait_status(job.id, LogStatus.SUCCEEDED)

    assert sorted(b["n"] for b in sink.bodies("/tb")) == [0, 1, 2]
    labels = {"application": f"test/{h.app.name}"}
    assert worker.registry.get_sample_value("retrieve_worker_taken_back_total", labels) == 3
    assert worker.registry.get_sample_value("retrieve_worker_reclaimed_total", labels) is None


async def test_a_job_that_keeps_killing_its_pod_is_dead_lettered_when_taken_back(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {"pp": {"destinations": [{"name": "d", "http": {"url": sink.url_for("/pp")}}]}}
    )
    await ensure_group(h.redis, h.keys)
    job = await h.enqueue("pp", {"id": 5})
    await h.redis.xreadgroup(CONSUMER_GROUP, POD, {h.keys.jobs: ">"}, count=1)
    for _ in range(3):  # three more lives of the pod read it again, and died on it
        await h.redis.xreadgroup(CONSUMER_GROUP, POD, {h.keys.jobs: "0"}, count=1)

    await h.start_worker(consumer=POD, claim_idle_ms=TEN_MINUTES_MS, max_deliveries=4)
    record = await h.wait_status(job.id, LogStatus.DEAD_LETTER)

    assert "delivered 5 times" in record.error  # this start's read is the fifth delivery
    assert sink.requests_to("/pp") == []
    assert await h.redis.xlen(h.keys.dead_letters) == 1
