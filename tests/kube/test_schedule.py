"""Scheduled Integrations on a real API server (issue 6): the operator, as the chart's operator
ServiceAccount, keeps a `<integration>-poll` CronJob per schedule and removes it with the
schedule; `retrieve poll --from-cluster` (the CronJob's command) reads the operator's ConfigMap;
the poll outcome stored in Redis reaches the Integration's status and `PollFailing` condition.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from harness.kube_control_plane import KubeTestCluster
from retrieve_core.keys import AppKeys
from retrieve_core.scheduling.state import PollState
from tests.support.kube_operator import (
    RUNTIME_IMAGE,
    Cluster,
    application,
    eventually,
    integration,
    unique_id,
)
from tests.support.paged_source import PagedSource
from tests.support.processes import retrieve_command
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.kube

ITEMS = [{"id": f"sku-{n}"} for n in range(12)]


def schedule(url: str, cron: str = "*/30 * * * *") -> dict[str, Any]:
    return {
        "cron": cron,
        "source": {
            "http": {
                "url": url,
                "items": "data",
                "idField": "id",
                "pagination": {"nextLink": "links.next"},
            }
        },
    }


@pytest.fixture
async def source() -> AsyncIterator[PagedSource]:
    server = await PagedSource(list(ITEMS), page_size=5).start()
    try:
        yield server
    finally:
        await server.stop()


def test_a_schedule_becomes_a_poll_cronjob_that_goes_away_with_the_schedule(
    world: Cluster,
) -> None:
    integration_id = unique_id()
    world.apply(application())
    app_uid = eventually(lambda: world.get("retrieveapplication", "yourapp"), "the app")[
        "metadata"
    ]["uid"]
    orders = integration(
        "orders",
        integrationId=integration_id,
        schedule=schedule("https://shop.example/orders"),
    )
    world.apply(orders)

    cronjob = eventually(lambda: world.get("cronjob", "orders-poll"), "CronJob orders-poll")
    meta, spec = cronjob["metadata"], cronjob["spec"]
    assert [(r["kind"], r["uid"]) for r in meta["ownerReferences"]] == [
        ("RetrieveApplication", app_uid)
    ]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "retrieve-operator"
    assert meta["labels"]["app.kubernetes.io/component"] == "poll"
    assert spec["schedule"] == "*/30 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    worker_pod = world.get("deployment", "yourapp-worker")["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["serviceAccountName"] == "retrieve-worker"
    assert pod["securityContext"] == worker_pod["securityContext"]
    [container] = pod["containers"]
    assert container["image"] == RUNTIME_IMAGE
    assert container["command"] == ["retrieve", "poll"]
    assert container["args"] == [integration_id, "--from-cluster"]
    assert container["env"] == worker_pod["containers"][0]["env"]

    # A new cron is applied in place.
    world.apply(
        {**orders, "spec": {**orders["spec"], "schedule": schedule("https://x", "@hourly")}}
    )
    eventually(
        lambda: (
            (world.get("cronjob", "orders-poll") or {}).get("spec", {}).get("schedule") == "@hourly"
        ),
        "the CronJob's new schedule",
    )

    # Drift is repaired like any other child's.
    world.kubectl("patch", "cronjob", "orders-poll", "--type=merge", "-p",
                  json.dumps({"spec": {"concurrencyPolicy": "Allow"}}))  # fmt: skip
    eventually(
        lambda: (
            (world.get("cronjob", "orders-poll") or {}).get("spec", {}).get("concurrencyPolicy")
            == "Forbid"
        ),
        "the CronJob's drift repaired",
    )

    # Removing the schedule removes the CronJob; the Integration keeps being served.
    without = {**orders, "spec": {k: v for k, v in orders["spec"].items() if k != "schedule"}}
    world.apply(without)
    eventually(lambda: world.get("cronjob", "orders-poll") is None, "CronJob orders-poll deleted")
    assert world.get("deployment", "yourapp-worker") is not None


async def test_retrieve_poll_from_the_cluster_and_its_outcome_in_the_integration_status(
    world: Cluster,
    kube_cluster: KubeTestCluster,
    redis_server: RedisServer,
    source: PagedSource,
) -> None:
    integration_id = unique_id()
    keys = AppKeys(world.namespace, "yourapp")
    await asyncio.to_thread(
        world.apply,
        application(redis={"url": redis_server.url}),
        integration(
            "restock",
            integrationId=integration_id,
            dedupe={"jsonField": "id"},
            schedule=schedule(source.url),
        ),
    )

    def config_has_it() -> bool:
        config_map = world.get("configmap", "yourapp-config") or {}
        return integration_id in (config_map.get("data") or {}).get("config.json", "")

    await asyncio.to_thread(eventually, config_has_it, "the integration in yourapp-config")

    # The CronJob's command, run here as the pod would: config and Secrets from the cluster.
    command = [*retrieve_command(), "poll", integration_id, "--from-cluster", "--json"]
    env = {
        "KUBECONFIG": str(kube_cluster.kubeconfig),
        "RETRIEVE_NAMESPACE": world.namespace,
        "RETRIEVE_APPLICATION": "yourapp",
        "RETRIEVE_REDIS_URL": redis_server.url,
        "PATH": "/usr/bin:/bin",
    }
    completed = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=90, check=False
    )
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout)
    assert (outcome["items"], outcome["new"], outcome["pages"]) == (12, 12, 3)

    def status() -> dict[str, Any]:
        return dict((world.get("integration", "restock") or {}).get("status") or {})

    def poll_failing() -> dict[str, Any] | None:
        for condition in status().get("conditions") or []:
            if condition["type"] == "PollFailing":
                return dict(condition)
        return None

    condition = await asyncio.to_thread(
        eventually,
        lambda: (c := poll_failing()) and c["status"] == "False" and c,
        "PollFailing False in status",
        60,
    )
    assert condition["reason"] == "PollSucceeded"
    now = status()
    assert (now["polledItems"], now["polledNew"], now["lastPollError"]) == (12, 12, "")
    assert now["lastPollAt"].endswith("Z")

    # A failed run (as `retrieve poll` records it) turns PollFailing True with the error.
    redis = Redis.from_url(redis_server.url)
    try:
        state = PollState.from_hash(await redis.hgetall(keys.poll_state(integration_id)))
        failed = PollState(state.since, state.last_run_at, 0, 0, "GET https://x: HTTP 503")
        await redis.hset(keys.poll_state(integration_id), mapping=failed.to_hash())  # type: ignore[arg-type]
    finally:
        await redis.aclose()
    condition = await asyncio.to_thread(
        eventually,
        lambda: (c := poll_failing()) and c["status"] == "True" and c,
        "PollFailing True in status",
        60,
    )
    assert condition["reason"] == "PollFailed"
    assert condition["message"] == "GET https://x: HTTP 503"
    ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
