"""Live Integration status on a real API server: the operator (in-process, the chart's RBAC)
reads the counters receivers and workers write in a real Redis into status, `kubectl get rint`
shows them, and the replay annotation requeues dead letters once per value."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from retrieve_core.job import Job
from retrieve_core.keys import (
    COUNTER_FAILED,
    COUNTER_RECEIVED,
    COUNTER_REJECTED,
    COUNTER_TTL_SECONDS,
    AppKeys,
    counter_bucket,
)
from tests.support.kube_operator import (
    Cluster,
    application,
    eventually,
    integration,
    unique_id,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.kube

# The interval the operator is started with here. If another module imported the handlers
# first, the timer keeps the default (15 s): the waits below allow for it.
INTERVAL_SECONDS = "1"
WAIT = 60.0


@pytest.fixture(scope="module")
def operator_settings() -> dict[str, str]:
    """The module's operator (tests/kube/conftest.py) polls status every second; every
    application here names its own Redis."""
    return {
        "RETRIEVE_REDIS_URL": "redis://127.0.0.1:1/0",
        "RETRIEVE_STATUS_INTERVAL_SECONDS": INTERVAL_SECONDS,
    }


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


def receive(store: redis.Redis, keys: AppKeys, integration_id: str, **counts: int) -> None:
    """What receivers and workers write: per-minute counters, last-received, queued jobs."""
    now = time.time()
    bucket = keys.counters(integration_id, counter_bucket(now))
    with store.pipeline(transaction=True) as pipe:
        for name, value in counts.items():
            pipe.hincrby(bucket, name, value)
        pipe.expire(bucket, COUNTER_TTL_SECONDS)
        pipe.hset(keys.last_received, integration_id, repr(now))
        for n in range(counts.get(COUNTER_RECEIVED, 0)):
            pipe.xadd(keys.jobs, _job(keys, integration_id, n).encode())  # type: ignore[arg-type]
        pipe.execute()


def _job(keys: AppKeys, integration_id: str, n: int) -> Job:
    return Job(
        id=f"job-{integration_id}-{n}-{time.monotonic_ns()}",
        integration_id=integration_id,
        application=keys.app,
        namespace=keys.namespace,
        received_at=time.time(),
        source_ip="203.0.113.5",
        format="json",
        payload={"n": n},
    )


def dead_letter(store: redis.Redis, keys: AppKeys, integration_id: str) -> None:
    """What the worker's outcome script writes for a job that failed for good."""
    job = _job(keys, integration_id, 0)
    fields = {"job": job.model_dump_json(), "integration_id": integration_id, "error": "503"}
    store.xadd(keys.dead_letters, fields | {"failed_at": repr(time.time())})  # type: ignore[arg-type]
    store.hincrby(keys.dead_counts, integration_id, 1)


def columns(world: Cluster, name: str) -> dict[str, str]:
    """`kubectl get rint NAME` as printed: header -> value."""
    header, row = world.kubectl("get", "rint", name).strip().splitlines()[:2]
    return dict(zip(header.split(), row.split(), strict=False))


def status(world: Cluster, name: str) -> dict[str, Any]:
    obj = world.get("integration", name)
    return dict((obj or {}).get("status") or {})


def status_rounds(
    world: Cluster, store: redis.Redis, keys: AppKeys, name: str, integration_id: str
) -> None:
    """The marker that the operator's status poll of the application ran twice from now: a
    counter of Integration `name` goes up and reaches its status, twice (the first round was over
    when the second showed)."""
    for _ in range(2):
        before = int(status(world, name).get("rejectedLastHour") or 0)
        receive(store, keys, integration_id, **{COUNTER_REJECTED: 1})
        eventually(
            lambda: status(world, name).get("rejectedLastHour") == before + 1 or None,  # noqa: B023
            f"{name}: rejectedLastHour {before + 1}",
            WAIT,
        )


def replay_messages(world: Cluster, name: str) -> list[str]:
    """The messages of the DeadLettersReplayed Events of Integration `name`, sorted."""
    events = json.loads(
        world.kubectl(
            "get", "events", "--field-selector", "reason=DeadLettersReplayed", "-o", "json"
        )
    )["items"]
    return sorted(e["message"] for e in events if e["involvedObject"]["name"] == name)


def test_kubectl_get_rint_shows_the_counters_read_from_redis(
    world: Cluster, store: redis.Redis, redis_server: RedisServer
) -> None:
    orders_id, refunds_id = unique_id(), unique_id()
    world.apply(
        application(redis={"url": redis_server.url}),
        integration("orders", integrationId=orders_id),
        integration("refunds", integrationId=refunds_id),
    )
    keys = AppKeys(world.namespace, "yourapp")
    receive(store, keys, orders_id, **{COUNTER_RECEIVED: 3, COUNTER_REJECTED: 2})
    receive(store, keys, orders_id, **{COUNTER_FAILED: 1})
    dead_letter(store, keys, orders_id)

    def shown() -> dict[str, str] | None:
        row = columns(world, "orders")
        return row if (row.get("RECEIVED"), row.get("DEAD")) == ("3", "1") else None

    row = eventually(shown, "orders: Received 3, Dead 1 in kubectl get rint", WAIT)
    assert row["QUEUE"] == "3"  # the application's queue: 3 jobs waiting, no worker
    got = status(world, "orders")
    assert got["receivedLastHour"] == 3
    assert got["rejectedLastHour"] == 2
    assert got["failedLastHour"] == 1
    assert got["deadLetters"] == 1
    assert got["queueDepth"] == 3
    assert got["lastReceivedAt"].endswith("Z")
    refunds = eventually(
        lambda: status(world, "refunds").get("queueDepth") == 3 or None, "refunds", WAIT
    )
    assert refunds
    assert status(world, "refunds")["receivedLastHour"] == 0
    assert status(world, "refunds").get("lastReceivedAt") is None

    # Unchanged counters are not written again: through two status rounds that changed only
    # refunds (the same poll covers both), the resourceVersion of orders stays. First the
    # reconcile's own writes must be over: its status, then kopf's diff-base annotation.
    for name in ("orders", "refunds"):
        world.wait_ready("integration", name, "Reconciled", timeout=WAIT)
    eventually(
        lambda: all(
            "retrievetl.com/last-handled-configuration"
            in ((world.get("integration", n) or {})["metadata"].get("annotations") or {})
            for n in ("orders", "refunds")
        ),
        "kopf's diff-base on both Integrations",
        WAIT,
    )
    version = (world.get("integration", "orders") or {})["metadata"]["resourceVersion"]
    status_rounds(world, store, keys, "refunds", refunds_id)
    assert (world.get("integration", "orders") or {})["metadata"]["resourceVersion"] == version


def test_a_new_replay_annotation_value_requeues_dead_letters_once(
    world: Cluster, store: redis.Redis, redis_server: RedisServer
) -> None:
    orders_id = unique_id()
    world.apply(
        application(redis={"url": redis_server.url}), integration("orders", integrationId=orders_id)
    )
    keys = AppKeys(world.namespace, "yourapp")
    dead_letter(store, keys, orders_id)
    dead_letter(store, keys, orders_id)
    eventually(lambda: status(world, "orders").get("deadLetters") == 2, "2 dead letters", WAIT)

    world.kubectl("annotate", "integration", "orders", "retrievetl.com/replay-dead-letters=first")

    eventually(lambda: status(world, "orders").get("replayHandled") == "first", "replay", WAIT)
    assert store.xlen(keys.dead_letters) == 0
    assert store.xlen(keys.jobs) == 2
    eventually(lambda: status(world, "orders").get("deadLetters") == 0, "0 dead letters", WAIT)

    # The same value again (re-annotated) does nothing; a new value replays again.
    dead_letter(store, keys, orders_id)
    world.kubectl(
        "annotate", "--overwrite", "integration", "orders", "retrievetl.com/replay-dead-letters-"
    )
    world.kubectl("annotate", "integration", "orders", "retrievetl.com/replay-dead-letters=first")
    status_rounds(world, store, keys, "orders", orders_id)  # the operator has seen it
    assert store.xlen(keys.dead_letters) == 1
    world.kubectl(
        "annotate",
        "--overwrite",
        "integration",
        "orders",
        "retrievetl.com/replay-dead-letters=second",
    )
    eventually(lambda: status(world, "orders").get("replayHandled") == "second", "replay 2", WAIT)
    assert store.xlen(keys.dead_letters) == 0
    assert store.xlen(keys.jobs) == 3

    def replays() -> list[str] | None:
        messages = replay_messages(world, "orders")
        return messages if len(messages) >= 2 else None

    # One Event per replay: "second" found the dead letter the repeated "first" left.
    assert eventually(replays, "two DeadLettersReplayed events", WAIT) == [
        "Requeued 1 dead letter(s) (retrievetl.com/replay-dead-letters=second)",
        "Requeued 2 dead letter(s) (retrievetl.com/replay-dead-letters=first)",
    ]


def test_an_unreachable_redis_is_reported_as_an_event_not_a_crash(world: Cluster) -> None:
    world.apply(
        application("lost", redis={"url": "redis://127.0.0.1:1/0"}),
        integration("orders", app="lost", integrationId=unique_id()),
    )

    def reported() -> dict[str, Any] | None:
        events = json.loads(
            world.kubectl(
                "get", "events", "--field-selector", "reason=RedisUnavailable", "-o", "json"
            )
        )["items"]
        return next((e for e in events if e["involvedObject"]["name"] == "lost"), None)

    event = eventually(reported, "a RedisUnavailable event on RetrieveApplication lost", WAIT)
    assert event["type"] == "Warning"
    assert "cannot read the counters from Redis" in event["message"]
