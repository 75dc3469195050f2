"""HTTP destinations: one request per record, with an idempotency key a receiver can dedupe on.

Outcome classes: 2xx delivered; 5xx, 408, 429, a time-out or a connection error may pass on a
later attempt (retried); any other answer (3xx, 4xx) is refused for good.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from retrieve_core.logstore import DestinationResult
from retrieve_core.models import Destination

BODY_EXCERPT_CHARS = 256
READ_LIMIT_BYTES = 64 * 1024
USER_AGENT = "retrieve-worker/0.1"
RETRYABLE_STATUSES = frozenset({408, 429})


def create_session(connections: int = 256) -> aiohttp.ClientSession:
    """The one client session of a worker: pooled keep-alive connections, no cookies shared."""
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )


def is_delivered(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def is_retryable(status: int | None) -> bool:
    """No answer (time-out, connection error), 5xx, 408 and 429 may pass later."""
    return status is None or status >= 500 or status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class Delivery:
    result: DestinationResult

    @property
    def delivered(self) -> bool:
        return is_delivered(self.result.status)

    @property
    def retryable(self) -> bool:
        return not self.delivered and is_retryable(self.result.status)


def idempotency_key(job_id: str, destination: str, record_index: int) -> str:
    return f"{job_id}-{destination}-{record_index}"


def encode_record(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


async def deliver(
    session: aiohttp.ClientSession,
    destination: Destination,
    record: Any,
    *,
    job_id: str,
    record_index: int,
) -> Delivery:
    """Sends one record; never raises for a network or HTTP failure (they are the result)."""
    http = destination.http
    headers = {
        **http.headers,
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(job_id, destination.name, record_index),
    }
    started = time.perf_counter()
    status: int | None = None
    error = ""
    body = ""
    try:
        async with session.request(
            http.method,
            http.url,
            data=encode_record(record),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=http.timeout_seconds),
            allow_redirects=False,
        ) as response:
            status = response.status
            raw = await response.content.read(READ_LIMIT_BYTES)
            body = raw[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:BODY_EXCERPT_CHARS]
            if not is_delivered(status):
                error = f"{destination.name} answered {status}"
    except TimeoutError:
        error = f"{destination.name} timed out after {http.timeout_seconds:g} s"
    except aiohttp.ClientError as exc:
        error = f"{destination.name} unreachable: {type(exc).__name__}: {exc}"[:500]
    except (OSError, asyncio.IncompleteReadError) as exc:
        error = f"{destination.name} unreachable: {exc}"[:500]
    latency_ms = (time.perf_counter() - started) * 1000
    return Delivery(
        DestinationResult(
            name=destination.name,
            record=record_index,
            status=status,
            error=error,
            latency_ms=round(latency_ms, 3),
            body=body,
        )
    )
