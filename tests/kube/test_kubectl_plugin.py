"""`kubectl retrieve` against the real API server: the URL the operator wrote, a signed send,
the notification attempts about an Integration."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict
from redis.asyncio import Redis

from harness.kube_control_plane import KubeTestCluster
from retrieve_core.keys import AppKeys
from retrieve_core.models import VerifySpec
from retrieve_core.notifications import NotificationAttempt, record_attempt
from retrieve_receiver.signatures import compile_scheme, verify
from tests.support.ports import free_port
from tests.support.processes import REPO
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.kube

SECRET = b"shpss_kube-test-secret"
URL = "https://webhook-shop.example.test/integration/KUBE0000000001"


def plugin(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("kubectl-retrieve")
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=60, check=False
    )


def setup_integration(cluster: KubeTestCluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shopify-webhook", "namespace": namespace},
            "data": {"secret": base64.b64encode(SECRET).decode()},
        },
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": "shopify-orders", "namespace": namespace},
            "spec": {
                "application": "shop",
                "integrationId": "KUBE0000000001",
                "verify": {
                    "preset": "shopify",
                    "secretRefs": [{"name": "shopify-webhook", "key": "secret"}],
                },
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    # What the operator writes; patched here so the test does not depend on the operator.
    status = {"status": {"webhookURL": URL, "xmlWebhookURL": f"{URL}/xml"}}
    cluster.kubectl(
        "patch", "integration", "shopify-orders", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip


async def test_url_and_send_read_the_integration_and_its_secret_from_the_cluster(
    kube_cluster: KubeTestCluster, kube_namespace: str
) -> None:
    setup_integration(kube_cluster, kube_namespace)
    common = ["shopify-orders", "-n", kube_namespace, "--kubeconfig", str(kube_cluster.kubeconfig)]

    url = await asyncio.to_thread(plugin, "url", *common)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == URL
    xml = await asyncio.to_thread(plugin, "url", *common, "--xml")
    assert xml.stdout.strip() == f"{URL}/xml"
    missing = await asyncio.to_thread(plugin, "url", "nope", *common[1:])
    assert missing.returncode == 1
    assert f"Integration {kube_namespace}/nope not found" in missing.stderr

    # A stand-in receiver that records what arrives; the test verifies it like the receiver.
    arrived: list[tuple[CIMultiDict[str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        arrived.append((CIMultiDict(request.headers), await request.read()))
        return web.json_response({"result": True, "error": ""})

    app = web.Application()
    app.router.add_post("/integration/{id}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        data = Path(kube_cluster.workdir) / f"order-{kube_namespace}.json"
        data.write_text(json.dumps({"id": 1, "email": "a@example.com"}))
        sent = await asyncio.to_thread(
            plugin, "send", *common, "--data", str(data), "--url", f"http://127.0.0.1:{port}"
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
    finally:
        await runner.cleanup()
    [(headers, body)] = arrived
    spec = VerifySpec.model_validate(
        {"preset": "shopify", "secretRefs": [{"name": "shopify-webhook", "key": "secret"}]}
    )
    assert verify(compile_scheme(spec, [SECRET]), headers, body, 0)
    assert headers["X-Shopify-Webhook-Id"]


async def test_logs_notifications_show_the_attempts_about_the_integration_terminal_safe(
    kube_cluster: KubeTestCluster, kube_namespace: str, redis_server: RedisServer,
    redis_client: Redis,
) -> None:  # fmt: skip
    setup_integration(kube_cluster, kube_namespace)
    keys = AppKeys(kube_namespace, "shop")
    attempts = [
        ("KUBE0000000001", "sent", 200, ""),
        ("KUBE0000000001", "failed", 502, "answered 502 \x1b[31mred\x07"),
        ("ANOTHER0000001", "failed", 500, "not this integration"),
    ]
    for n, (integration_id, result, status, error) in enumerate(attempts):
        await record_attempt(
            redis_client,
            keys,
            NotificationAttempt(
                ts=1_800_000_000 + n, notification="ops", event="deadLetter",
                integration_id=integration_id, count=n + 1, result=result, http_status=status,
                error=error, attempts=1 + n,
            ),
        )  # fmt: skip
    common = ["shopify-orders", "-n", kube_namespace, "--kubeconfig", str(kube_cluster.kubeconfig)]
    common += ["--redis-url", redis_server.url, "--notifications"]

    listed = await asyncio.to_thread(plugin, "logs", *common, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["integration_id"], r["result"], r["http_status"]) for r in rows] == [
        ("KUBE0000000001", "failed", 502),
        ("KUBE0000000001", "sent", 200),
    ]

    failed = await asyncio.to_thread(plugin, "logs", *common, "--status", "failed")
    assert failed.returncode == 0, failed.stderr
    [line] = failed.stdout.splitlines()
    assert line.split()[2:6] == ["ops", "deadLetter", "failed", "502"]
    assert "count=2" in line
    # The stored error reaches the terminal escaped, never as control characters.
    assert "\x1b" not in failed.stdout
    assert "\x07" not in failed.stdout
    assert line.endswith("answered 502 \\x1b[31mred\\x07")

    wrong = await asyncio.to_thread(plugin, "logs", *common, "--status", "succeeded")
    assert wrong.returncode == 2
    assert "sent or failed" in wrong.stderr
