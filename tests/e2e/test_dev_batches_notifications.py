"""`retrieve dev` runs batching and error notifications from the same YAML a cluster takes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from retrieve_cli.sink import Sink
from tests.support.redis_server import RedisServer

from .conftest import DevServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def manifests(sink_url: str) -> list[dict[str, Any]]:
    def integration(name: str, integration_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": name, "namespace": "dev"},
            "spec": {"application": "bursty", "integrationId": integration_id, **spec},
        }

    return [
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "RetrieveApplication",
            "metadata": {"name": "bursty", "namespace": "dev"},
            "spec": {
                "webhook": {"enabled": True, "domain": "retrievetl.com"},
                "allowedList": ["127.0.0.1"],
                "notifications": [
                    {
                        "name": "ops",
                        "url": f"{sink_url}/notify",
                        "format": "slack",
                        "events": ["deadLetter"],
                    }
                ],
            },
        },
        integration(
            "bulk-orders",
            "BULK1",
            {
                "destinations": [
                    {
                        "name": "erp",
                        "http": {
                            "url": f"{sink_url}/bulk",
                            "batch": {"maxRecords": 5, "maxWaitMs": 300},
                        },
                    }
                ]
            },
        ),
        integration(
            "nowhere",
            "DOWN1",
            {
                "destinations": [{"name": "down", "http": {"url": "http://127.0.0.1:9/x"}}],
                "retry": {"maxAttempts": 1},
            },
        ),
    ]


async def test_dev_mode_batches_a_burst_and_tells_a_dead_letter_to_slack(
    tmp_path: Path, private_redis_server: RedisServer, sink: Sink
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "bursty.yaml").write_text(yaml.safe_dump_all(manifests(sink.url), sort_keys=False))
    server = DevServer(config, private_redis_server.url).start()
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(12):
                async with session.post(
                    f"{server.url}/integration/BULK1", data=json.dumps({"n": n}).encode()
                ) as answer:
                    assert answer.status == 200
            async with session.post(f"{server.url}/integration/DOWN1", json={"n": 99}) as answer:
                assert answer.status == 200

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            bulk = [r.body for r in sink.received if r.path == "/bulk"]
            told = [r.body for r in sink.received if r.path == "/notify"]
            if sum(len(b) for b in bulk) >= 12 and told:
                break
            await asyncio.sleep(0.1)

        assert all(isinstance(b, list) and 1 <= len(b) <= 5 for b in bulk)
        assert sorted(r["n"] for b in bulk for r in b) == list(range(12))
        assert all(r["_retrieve_id"].endswith("-erp-0") for b in bulk for r in b)
        [message] = told
        assert "dev/bursty" in message["text"]
        assert "job dead-lettered" in message["text"]
        assert "nowhere (DOWN1)" in message["text"]
    finally:
        server.process.stop()
