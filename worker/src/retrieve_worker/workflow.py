"""One job's workflow: payload -> rewrite (optional) -> field mapping per record -> destinations.

`run_workflow` decides what happened; it writes nothing to Redis. The worker turns the verdict
into a log update, an ack, a scheduled retry or a dead letter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from retrieve_core.config import IntegrationConfig
from retrieve_core.job import Job
from retrieve_core.logstore import DestinationResult
from retrieve_core.mapping import FieldMapping, MappingError, compile_mapping, split_records
from retrieve_core.models import RetrySpec
from retrieve_core.sandbox import RewriteError, Sandbox, code_key

from .destinations import Delivery, deliver, encode_record, idempotency_key, is_delivered
from .httpclient import DestinationClient

if TYPE_CHECKING:
    from .batching import BatchOutcome, JobBatching

MAX_LOGGED_DELIVERIES = 100
SETTLED_EARLIER = "settled by an earlier attempt"


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"  # every record reached every destination
    FAILED = "failed"  # failed for good: jobStatus 0, or a destination refused (4xx)
    RETRY = "retry"  # may pass later: thrown/timed-out rewrite, 5xx, time-out, unreachable


@dataclass
class Outcome:
    verdict: Verdict
    job_status: int | None = None
    message: str = ""
    error: str = ""
    destinations: list[DestinationResult] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    rewrite_seconds: float | None = None
    rewrite_failed: bool = False
    """The rewrite function threw or timed out (a `rewriteError` notification)."""
    exhausted: bool = False
    """A batch holding the job's records spent its attempts: dead-letter without more."""


def delivery_key(destination: str, record_index: int) -> str:
    return f"{destination}/{record_index}"


def backoff_seconds(retry: RetrySpec, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`: `backoffSeconds * 2^(attempt-1)`, capped at
    `maxBackoffSeconds`, with equal jitter (between half and all of it)."""
    base = min(retry.max_backoff_seconds, retry.backoff_seconds * 2.0 ** max(attempt - 1, 0))
    if base <= 0:
        return 0.0
    return base / 2 + (rng or random).uniform(0, base / 2)


async def run_workflow(
    job: Job,
    integration: IntegrationConfig,
    sandbox: Sandbox,
    client: DestinationClient,
    batching: JobBatching | None = None,
) -> Outcome:
    """`batching` hands the records of batched destinations to the worker's batchers (without
    it, they go one request per record)."""
    spec = integration.spec
    console: list[str] = []
    message = ""
    job_status: int | None = None
    rewrite_seconds: float | None = None
    data: Any = job.payload
    if spec.rewrite is not None:
        started = time.perf_counter()
        try:
            result = await sandbox.run(
                code_key(integration.id, spec.rewrite), spec.rewrite, job.job_data()
            )
        except RewriteError as exc:
            return Outcome(
                Verdict.RETRY, error=exc.message, console=exc.console, rewrite_failed=True
            )
        finally:
            rewrite_seconds = time.perf_counter() - started
        console, message, job_status = result.console, result.message, result.job_status
        if result.job_status == 0:
            return Outcome(
                Verdict.FAILED,
                job_status=0,
                message=message,
                error=message or "rewrite function returned jobStatus 0",
                console=console,
                rewrite_seconds=rewrite_seconds,
            )
        data = result.data
    try:
        records = mapped_records(compile_mapping(spec.field_mapping), data)
    except MappingError as exc:
        return Outcome(
            Verdict.RETRY, job_status=job_status, message=message, error=str(exc), console=console
        )

    settled = dict(job.deliveries)
    results: list[DestinationResult] = []
    sends: list[Any] = []
    batched: list[asyncio.Future[BatchOutcome]] = []
    for destination in spec.destinations:
        batch = destination.http.batch if batching is not None else None
        waiting = unsettled_records(destination.name, records, settled, results)
        if batch is not None and batching is not None:
            if waiting:
                batched.append(
                    await batching.submit(destination, batch, spec.retry, job.id, waiting)
                )
            continue
        for index, record in waiting:
            sends.append(
                deliver(
                    client,
                    destination,
                    encode_record(record),
                    key=idempotency_key(job.id, destination.name, index),
                    record_index=index,
                )
            )
    exhausted = False
    if batched and batching is not None:
        batching.park()
        deliveries: list[Delivery] = []
        answers = [await batched[0]] if len(batched) == 1 and not sends else None
        for answer in answers or await asyncio.gather(*sends, *batched):
            if isinstance(answer, Delivery):
                deliveries.append(answer)
            else:
                deliveries += answer.deliveries
                exhausted = exhausted or answer.exhausted
    elif len(sends) == 1:
        deliveries = [await sends[0]]
    else:
        deliveries = list(await asyncio.gather(*sends))
    return conclude(
        deliveries,
        results,
        settled,
        exhausted=exhausted,
        job_status=job_status,
        message=message,
        console=console,
        rewrite_seconds=rewrite_seconds,
    )


def mapped_records(mapping: FieldMapping, data: Any) -> list[Any]:
    """The records of `data` (the payload, or a rewrite's output), each through the field
    mapping; MappingError when an expression fails."""
    if data is None:
        return []
    return [mapping.apply(record) for record in split_records(data)]


def unsettled_records(
    destination: str,
    records: list[Any],
    settled: Mapping[str, int],
    results: list[DestinationResult],
) -> list[tuple[int, Any]]:
    """The (index, record) pairs still to send to `destination`; a record an earlier attempt
    settled gets its result appended to `results` instead."""
    if not settled:
        return list(enumerate(records))
    waiting: list[tuple[int, Any]] = []
    for index, record in enumerate(records):
        status = settled.get(delivery_key(destination, index))
        if status is None:
            waiting.append((index, record))
        else:
            results.append(
                DestinationResult(
                    name=destination, record=index, status=status, body=SETTLED_EARLIER
                )
            )
    return waiting


def conclude(
    deliveries: list[Delivery],
    results: list[DestinationResult],
    settled: dict[str, int],
    *,
    exhausted: bool = False,
    job_status: int | None = None,
    message: str = "",
    console: list[str] | None = None,
    rewrite_seconds: float | None = None,
) -> Outcome:
    """The verdict once every record was sent (or settled earlier): `results` gains the
    deliveries' results, `settled` the deliveries that need not go again."""
    errors: list[str] = []
    retry = refused = False
    for delivery in deliveries:
        result = delivery.result
        results.append(result)
        if delivery.delivered:
            settled[delivery_key(result.name, result.record)] = result.status or 0
            continue
        errors.append(result.error)
        if delivery.retryable:
            retry = True
        else:  # refused for good: not sent again
            refused = True
            settled[delivery_key(result.name, result.record)] = result.status or 0
    refused = refused or any(not is_delivered(status) for status in settled.values())
    if retry:
        verdict = Verdict.RETRY
    elif refused:
        verdict = Verdict.FAILED
    else:
        verdict = Verdict.SUCCEEDED
    error = ""
    if errors:
        error = "; ".join(errors[:5])
        if len(errors) > 5:
            error += f"; and {len(errors) - 5} more"
    return Outcome(
        verdict,
        job_status=job_status,
        message=message,
        error=error,
        destinations=results[:MAX_LOGGED_DELIVERIES],
        console=console if console is not None else [],
        deliveries=settled,
        rewrite_seconds=rewrite_seconds,
        exhausted=exhausted and verdict is Verdict.RETRY,
    )
