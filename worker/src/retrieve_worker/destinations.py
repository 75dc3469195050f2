"""HTTP destinations: one request per record (or per batch of records, `batching`), with an
idempotency key a receiver can dedupe on.

Outcome classes: 2xx delivered; 5xx, 408, 429, a time-out or a connection error may pass on a
later attempt (retried); any other answer (3xx, 4xx) is refused for good.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from retrieve_core.logstore import DestinationResult
from retrieve_core.models import Destination

from .httpclient import DestinationClient, HttpError

BODY_EXCERPT_CHARS = 256
READ_LIMIT_BYTES = 64 * 1024
USER_AGENT = "retrieve-worker/0.1"
RETRYABLE_STATUSES = frozenset({408, 429})


def create_client(ssl_context: ssl.SSLContext | None = None) -> DestinationClient:
    """The one HTTP client of a worker: pooled keep-alive connections, nothing shared else."""
    return DestinationClient(
        user_agent=USER_AGENT, read_limit=READ_LIMIT_BYTES, ssl_context=ssl_context
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
    """Compact UTF-8 JSON. pydantic-core's encoder costs an eighth of `json.dumps` (once per
    record on the worker's path); what it refuses (a lone surrogate the sender escaped in its
    JSON) goes out as `json` writes it, escaped."""
    try:
        return to_json(record)
    except PydanticSerializationError:
        return json.dumps(record, separators=(",", ":")).encode()


async def deliver(
    client: DestinationClient,
    destination: Destination,
    content: bytes,
    *,
    key: str,
    record_index: int,
    batch: str = "",
) -> Delivery:
    """Sends one encoded record (or one batch of them, `batch` its id) with `Idempotency-Key:
    key`; never raises for a network or HTTP failure (they are the result)."""
    http = destination.http
    headers = {**http.headers, "Content-Type": "application/json", "Idempotency-Key": key}
    started = time.perf_counter()
    status: int | None = None
    error = ""
    body = ""
    try:
        answer = await client.request(http.method, http.url, headers, content, http.timeout_seconds)
    except TimeoutError:
        error = f"{destination.name} timed out after {http.timeout_seconds:g} s"
    except (HttpError, OSError) as exc:  # refused, reset, TLS verification, not HTTP...
        error = f"{destination.name} unreachable: {type(exc).__name__}: {exc}"[:500]
    else:
        status = answer.status
        raw = answer.body[: BODY_EXCERPT_CHARS * 4]
        body = raw.decode("utf-8", "replace")[:BODY_EXCERPT_CHARS]
        if not is_delivered(status):
            error = f"{destination.name} answered {status}"
    latency_ms = (time.perf_counter() - started) * 1000
    return Delivery(
        DestinationResult(
            name=destination.name,
            record=record_index,
            status=status,
            error=error,
            latency_ms=round(latency_ms, 3),
            body=body,
            batch=batch,
        )
    )
