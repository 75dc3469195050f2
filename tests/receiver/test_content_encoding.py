"""`Content-Encoding` against a real `retrieve receiver` process, over raw sockets.

The contract (SECURITY.md, "Content-Encoding"): identity, gzip and deflate bodies are accepted;
the body limit applies to the bytes as sent and again to the inflated body; signatures are over
the bytes as sent; a body that does not match its coding is a 400 with the contract's message and
a log record; any other coding is a 415; never a 500, never a traceback.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retrieve_core.job import Job
from retrieve_core.logstore import LogStore
from tests.receiver.test_fuzz_http import Answer, exchange, request
from tests.receiver.vectors import shopify_signature
from tests.support.fleet import INTEGRATION, KEYS, Receiver, write_fleet_config
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SIGNED = "SIGNED1"
SECRET = b"shpss_content_coding"
LIMIT = 4096
URL = f"/integration/{INTEGRATION}"
ORDER = b'{"order": {"id": 42, "email": "a@example.com"}}'


def error(message: str) -> dict[str, object]:
    return {"result": False, "error": message}


@pytest.fixture
def receiver(tmp_path: Path, redis_server: RedisServer) -> Iterator[Receiver]:
    signed = {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "signed", "namespace": KEYS.namespace},
        "spec": {
            "application": KEYS.app,
            "integrationId": SIGNED,
            "verify": {"preset": "shopify", "secretRefs": [{"name": "shop", "key": "secret"}]},
            "destinations": [{"name": "none", "http": {"url": "http://127.0.0.1:9/x"}}],
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "shop", "namespace": KEYS.namespace},
        "data": {"secret": base64.b64encode(SECRET).decode()},
    }
    config = write_fleet_config(
        tmp_path / "config",
        "http://127.0.0.1:9",
        application={"receiver": {"maxBodyBytes": LIMIT}},
        extra=[signed, secret],
    )
    server = Receiver(config, redis_server.url).start()
    try:
        yield server
    finally:
        server.process.stop()


def post(body: bytes, coding: str | None, path: str = URL, **headers: str) -> bytes:
    pairs = [("Content-Type", "application/json"), *headers.items()]
    if coding is not None:
        pairs.append(("Content-Encoding", coding))
    return request(path, body, pairs)


async def send(receiver: Receiver, raw: bytes, source: str = "127.0.0.1") -> Answer:
    answer = await exchange(receiver.port, [raw], source=source)
    assert answer.is_contract_json(), answer
    return answer


async def test_a_body_that_does_not_match_its_coding_is_a_400_with_a_log_record(
    receiver: Receiver, redis_client: Redis
) -> None:
    for coding, body in (("gzip", ORDER), ("deflate", b"\xff" * 64), ("gzip", b"")):
        answer = await send(receiver, post(body, coding))
        assert answer.status == 400
        assert answer.json_body == error(
            f"Invalid JSON payload: Content-Encoding {coding}: body is not valid {coding}"
            if body
            else f"Invalid JSON payload: Content-Encoding {coding}: {coding} stream truncated"
        )
    truncated = gzip.compress(ORDER)[:-6]
    answer = await send(receiver, post(truncated, "gzip"))
    assert answer.json_body == error(
        "Invalid JSON payload: Content-Encoding gzip: gzip stream truncated"
    )

    # From a sender the whitelist refuses: the 403, before anything is read or inflated.
    refused = await send(receiver, post(ORDER, "gzip"), source="127.0.0.9")
    assert refused.json_body == error("This domain/IP (127.0.0.9) isn't authorized on Retrieve")

    records = await LogStore(redis_client, KEYS).query()
    assert [r.http_status for r in records] == [403, 400, 400, 400, 400]
    output = receiver.process.output()
    assert "Traceback" not in output
    assert "unexpected error" not in output


async def test_an_unsupported_coding_is_a_415_json_answer(
    receiver: Receiver, redis_client: Redis
) -> None:
    for coding in ("br", "zstd", "compress", "gzip, gzip", "x" * 100):
        answer = await send(receiver, post(ORDER, coding))
        shown = coding if len(coding) <= 40 else coding[:40] + "..."
        assert (answer.status, answer.json_body) == (
            415,
            error(f"Unsupported Content-Encoding {shown} (accepted: gzip, deflate, identity)"),
        )
    assert await redis_client.xlen(KEYS.jobs) == 0
    assert "Traceback" not in receiver.process.output()


async def test_gzip_and_deflate_bodies_are_inflated_and_enqueued(
    receiver: Receiver, redis_client: Redis
) -> None:
    bodies = {
        "gzip": gzip.compress(ORDER),
        "x-gzip": gzip.compress(ORDER),
        "deflate": zlib.compress(ORDER),
        "identity": ORDER,
    }
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bodies["Deflate"] = raw_deflate.compress(ORDER) + raw_deflate.flush()
    for coding, body in bodies.items():
        answer = await send(receiver, post(body, coding))
        assert answer.status == 200, (coding, answer)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis_client.xrange(KEYS.jobs)  # type: ignore[assignment]
    payloads = [Job.decode(fields).payload for _, fields in entries]
    assert payloads == [json.loads(ORDER)] * len(bodies)


async def test_the_limit_applies_to_the_inflated_body_too(receiver: Receiver) -> None:
    bomb = gzip.compress(b'{"a": "' + b"A" * (LIMIT * 100) + b'"}')
    assert len(bomb) < LIMIT
    answer = await send(receiver, post(bomb, "gzip"))
    assert (answer.status, answer.json_body) == (
        413,
        error(f"Payload too large (limit {LIMIT} bytes)"),
    )


async def test_signatures_are_over_the_bytes_as_sent(
    receiver: Receiver, redis_client: Redis
) -> None:
    compressed = gzip.compress(ORDER)
    path = f"/integration/{SIGNED}"
    over_sent = shopify_signature(SECRET, compressed)
    over_inflated = shopify_signature(SECRET, ORDER)

    good = await send(
        receiver, post(compressed, "gzip", path, **{"X-Shopify-Hmac-Sha256": over_sent})
    )
    bad = await send(
        receiver, post(compressed, "gzip", path, **{"X-Shopify-Hmac-Sha256": over_inflated})
    )

    assert (good.status, bad.status) == (200, 401)
    assert bad.json_body == error("Invalid webhook signature")
    assert await redis_client.xlen(KEYS.jobs) == 1
