"""`retrieve logs --notifications`: the attempts workers recorded, from a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retrieve_core.keys import AppKeys
from retrieve_core.notifications import NotificationAttempt, record_attempt
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis


def retrieve(*args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("retrieve")
    return subprocess.run(
        [str(command), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_logs_show_notification_attempts_newest_first_and_filter_failed(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    app = f"app-{uuid.uuid4().hex[:8]}"
    keys = AppKeys("shop", app)
    for n, (result, status) in enumerate((("sent", 200), ("failed", 502))):
        await record_attempt(
            redis_client,
            keys,
            NotificationAttempt(
                ts=1_800_000_000 + n, notification="ops", event="deadLetter",
                integration_id="INT1", count=n + 1, result=result, http_status=status,
                error="" if status == 200 else "answered 502", attempts=1 + 2 * n,
            ),
        )  # fmt: skip
    common = ["--redis-url", redis_server.url, "--namespace", "shop", "--app", app]

    listed = retrieve("logs", "--notifications", "--json", *common)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["result"], r["count"], r["http_status"]) for r in rows] == [
        ("failed", 2, 502),
        ("sent", 1, 200),
    ]

    failed = retrieve("logs", "--notifications", "--status", "failed", *common)
    assert failed.returncode == 0, failed.stderr
    assert "answered 502" in failed.stdout
    assert "deadLetter" in failed.stdout
    assert " sent " not in failed.stdout

    wrong = retrieve("logs", "--notifications", "--status", "succeeded", *common)
    assert wrong.returncode == 2
    assert "sent or failed" in wrong.stderr
