"""A webhook integration with a schedule delivers every source item exactly once (issue 6).

`retrieve dev` serves webhooks and runs the worker; a paginated source (25 items, 3 pages, next
links) is polled by `retrieve poll` run by hand. Some items came by webhook first: the poll fills
exactly the gaps, a second poll adds nothing, and the sink got each item once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogStore
from retrieve_core.scheduling.state import PollState, rfc3339
from tests.e2e.conftest import DevServer
from tests.receiver.dns_server import LoopbackDNS
from tests.support.paged_source import PagedSource
from tests.support.processes import retrieve_command, write_config
from tests.support.queue_state import wait_quiescent
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

INTEGRATION_ID = "RESTOCK1"
KEYS = AppKeys("shop", "yourapp")
ITEMS = [{"id": f"ord-{n:02d}", "total": n} for n in range(25)]
WEBHOOKED = [item for n, item in enumerate(ITEMS) if n % 3 == 0]  # 9 items, on 3 pages


def scheduled_integration(source_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "restock", "namespace": "shop"},
        "spec": {
            "application": "yourapp",
            "integrationId": INTEGRATION_ID,
            # The webhook's dedupe key is the payload's `id`; the poll's is the item's `id`.
            "dedupe": {"jsonField": "id", "ttlSeconds": 3600},
            "destinations": [{"name": "sink", "http": {"url": "http://127.0.0.1:9/restock"}}],
            "schedule": {
                "cron": "0 0 31 2 *",  # never fires by itself (Feb 31): this test polls by hand
                "source": {
                    "http": {
                        "url": source_url,
                        "pagination": {"nextLink": "links.next", "maxPages": 10},
                        "items": "data",
                        "idField": "id",
                        "sinceParam": "updated_since",
                    }
                },
            },
        },
    }


@pytest.fixture
async def source() -> AsyncIterator[PagedSource]:
    server = await PagedSource(ITEMS).start()
    try:
        yield server
    finally:
        await server.stop()


def sink_ids(sink: Sink) -> list[str]:
    ids: list[str] = []
    for body in sink.bodies("/restock"):
        for record in body if isinstance(body, list) else [body]:
            ids.append(record["id"])
    return ids


async def poll(config_dir: Path, redis_url: str) -> dict[str, Any]:
    args = ["poll", "restock", "--json", "--config-dir", str(config_dir), "--redis-url", redis_url]
    completed = await asyncio.to_thread(
        subprocess.run,
        [*retrieve_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


async def test_poll_fills_exactly_the_items_the_webhook_missed_and_each_is_delivered_once(
    tmp_path: Path,
    sink: Sink,
    source: PagedSource,
    private_redis_server: RedisServer,
    dns_server: LoopbackDNS,
) -> None:
    config_dir = write_config(tmp_path / "config", sink.url, [scheduled_integration(source.url)])
    env = {"RETRIEVE_DNS_SERVERS": f"127.0.0.1:{dns_server.port}"}
    dev = DevServer(config_dir, private_redis_server.url, env).start()
    redis = Redis.from_url(private_redis_server.url)
    try:
        async with aiohttp.ClientSession() as session:
            for item in WEBHOOKED:
                async with session.post(
                    f"{dev.url}/integration/{INTEGRATION_ID}", json=item
                ) as answer:
                    assert answer.status == 200, await answer.text()
        await sink.wait_for(len(WEBHOOKED), "/restock")

        first = await poll(config_dir, private_redis_server.url)
        assert (first["items"], first["pages"], first["error"]) == (25, 3, "")
        assert first["new"] == len(ITEMS) - len(WEBHOOKED) == 16
        assert "updated_since" not in source.queries[0]  # no successful run before

        await sink.wait_for(len(ITEMS), "/restock")
        state = PollState.from_hash(await redis.hgetall(KEYS.poll_state(INTEGRATION_ID)))
        assert (state.seen, state.new, state.error) == (25, 16, "")
        assert state.since is not None

        asked = len(source.queries)
        second = await poll(config_dir, private_redis_server.url)
        assert (second["items"], second["new"]) == (25, 0)
        # The second run asks for the window since the first run started.
        assert source.queries[asked]["updated_since"] == rfc3339(state.since)

        # Every job queued so far has had its outcome: anything wrongly enqueued was delivered.
        await wait_quiescent(private_redis_server.url, KEYS)
        delivered = Counter(sink_ids(sink))
        assert delivered == Counter(item["id"] for item in ITEMS)  # every item, each once

        records = await LogStore(redis, KEYS).query(limit=500)
        polled = [r for r in records if r.source_ip == "poll"]
        assert len(polled) == 16
        assert all(r.integration_id == INTEGRATION_ID for r in polled)
    finally:
        await redis.aclose()
        dev.process.stop()
