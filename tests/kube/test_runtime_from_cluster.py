"""End to end against the real API server: kubectl apply → operator → ConfigMap → receiver.

The operator runs as `retrieve operator` (a subprocess, scoped to the test's namespace); the
receiver and worker run as `retrieve receiver` / `retrieve worker` local processes that read their
configuration from the API server as the operator's runtime ServiceAccounts (namespaced Roles),
with a real Redis and a sink the test runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from harness.kube_control_plane import KubeTestCluster
from retrieve_cli.sink import Sink
from tests.support.ports import free_port
from tests.support.processes import REPO, RetrieveProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.kube

INTEGRATION_ID = "e2e0000000000000000000001"
OK = {"result": True, "error": ""}


def application(namespace: str, allowed: list[str], redis_url: str) -> dict[str, object]:
    return {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "RetrieveApplication",
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {
            "webhook": {"enabled": True, "domain": "example.test"},
            "allowedList": allowed,
            "redis": {"url": redis_url},
        },
    }


def integration(namespace: str, sink_url: str) -> dict[str, object]:
    return {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "orders", "namespace": namespace},
        "spec": {
            "application": "shop",
            "integrationId": INTEGRATION_ID,
            "fieldMapping": {"order_id": "order.id"},
            "destinations": [{"name": "sink", "http": {"url": f"{sink_url}/orders"}}],
        },
    }


def apply(cluster: KubeTestCluster, *objects: dict[str, object]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(list(objects)))


def wait_for(
    cluster: KubeTestCluster, *args: str, timeout: float = 60.0, logs: RetrieveProcess | None = None
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = cluster.kubectl(*args, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout
        if time.monotonic() > deadline:
            context = logs.output()[-5000:] if logs else ""
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}\n{context}")
        time.sleep(0.3)


async def post(url: str, source: str) -> tuple[int, object]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, json={"order": {"id": 42}}) as answer,
    ):
        return answer.status, await answer.json()


@pytest.fixture
def cli_operator(kube_cluster: KubeTestCluster, kube_namespace: str) -> Iterator[RetrieveProcess]:
    """`retrieve operator --standalone` as a subprocess (not the in-process `operator`)."""
    kube_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    process = RetrieveProcess(
        ["operator", "--standalone", "--namespace", kube_namespace, "--liveness", ""],
        env={"KUBECONFIG": str(kube_cluster.kubeconfig)},
    ).start()
    try:
        yield process
    finally:
        process.stop()


async def test_receiver_and_worker_follow_the_cluster_without_restart(
    kube_cluster: KubeTestCluster,
    kube_namespace: str,
    cli_operator: RetrieveProcess,
    redis_server: RedisServer,
    sink: Sink,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    apply(kube_cluster, application(ns, ["127.0.0.2"], redis_server.url), integration(ns, sink.url))
    config = wait_for(
        kube_cluster,
        "get",
        "configmap",
        "shop-config",
        "-n",
        ns,
        "-o",
        "jsonpath={.data.config\\.json}",
        logs=cli_operator,
    )
    assert INTEGRATION_ID in config, cli_operator.output()
    wait_for(kube_cluster, "get", "serviceaccount", "retrieve-receiver", "-n", ns, "-o", "name")
    wait_for(kube_cluster, "get", "serviceaccount", "retrieve-worker", "-n", ns, "-o", "name")

    port, admin, worker_admin = free_port(), free_port(), free_port()
    common = ["--from-cluster", "--namespace", ns, "--app", "shop", "--redis-url", redis_server.url]
    receiver = RetrieveProcess(
        [
            "receiver",
            *common,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
        ],
        env={
            "KUBECONFIG": str(kube_cluster.kubeconfig_for_service_account(ns, "retrieve-receiver"))
        },
    ).start()
    worker = RetrieveProcess(
        ["worker", *common, "--host", "127.0.0.1", "--admin-port", str(worker_admin)],
        env={"KUBECONFIG": str(kube_cluster.kubeconfig_for_service_account(ns, "retrieve-worker"))},
    ).start()
    try:
        receiver.wait_http(f"http://127.0.0.1:{admin}/readyz")
        worker.wait_http(f"http://127.0.0.1:{worker_admin}/readyz")
        url = f"http://127.0.0.1:{port}/integration/{INTEGRATION_ID}"

        assert await post(url, "127.0.0.2") == (200, OK)
        await sink.wait_for(1, "/orders")
        assert sink.bodies("/orders") == [{"order_id": 42}]

        # Change the whitelist with kubectl apply: the running receiver refuses the same sender.
        apply(kube_cluster, application(ns, ["127.0.0.3"], redis_server.url))
        changed = time.monotonic()
        refused_after: float | None = None
        while time.monotonic() - changed < 60.0:  # a bound against hanging, not a latency goal
            status, _ = await post(url, "127.0.0.2")
            if status == 403:
                refused_after = time.monotonic() - changed
                break
            await asyncio.sleep(0.1)
        assert refused_after is not None, (
            "whitelist change never enforced\n"
            + cli_operator.output()[-3000:]
            + receiver.output()[-3000:]
        )
        print(f"whitelist change enforced after {refused_after:.2f} s")  # reported, not asserted
        assert await post(url, "127.0.0.3") == (200, OK)
        await sink.wait_for(2, "/orders")
        assert receiver.process is not None
        assert receiver.process.poll() is None
    finally:
        receiver.stop()
        worker.stop()
