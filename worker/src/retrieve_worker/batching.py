"""Destination batching (`destinations[].http.batch: {maxRecords, maxWaitMs}`).

Records (after rewrite and mapping) of one integration for one destination are gathered by a
`Batcher` and sent as one JSON array, at most `maxRecords` per request, the batch leaving at the
latest `maxWaitMs` after the earliest of its jobs was taken from the stream. A batch is built by
one worker process: records taken by two workers go in two batches.

At least once: a job waits (not acked, its entry pending) until every batch holding its records
is settled. A batch that may pass later (5xx, 408, 429, time-out) is sent again with the same
body and the same `Idempotency-Key` after the integration's backoff, up to `retry.maxAttempts`
times; then the jobs whose records it held are dead-lettered one by one (replay re-batches them).
A 3xx/4xx answer is final for every record of the batch (the jobs fail, as with one record).

Ids: the batch's `Idempotency-Key` is a digest of the ids of the records it holds (stable across
its retries); each object record carries its own id, `<jobId>-<destination>-<index>` (what
an unbatched request sends as `Idempotency-Key`), in the field `batch.recordIdField`
(default `_retrieve_id`), which survives re-batching after a worker died.

Who waits for a job's records is a `PartWaiter`: a job running in its own task awaits a future
(`submit`, from the workflow: integrations with a rewrite or an unbatched destination too);
the jobs of integrations whose destinations are all batched are handed over a read at a time
and told when their batches settle (`add`, from bulk.py), so a batch's jobs are stored in one
script call instead of a task, a future and a call each. Jobs per worker CPU-second, one worker
process, maxRecords 100 (`bench/worker_bench.py --jobs 20000 --compare --rounds 3`): about
3-3.5x the unbatched path (about 25 µs of worker CPU a job against 80-120 µs), 4x in jobs/s.

While its records wait, a job gives its concurrency slot back (`park`, or at once on the bulk
path), so a batch may hold more records than `spec.worker.concurrency`; a `Batcher` takes new
records only while fewer than `(MAX_SENDS + 1) * maxRecords` of them are unsettled, which
bounds memory and throttles reading when a destination is down. Records of the bulk path
(`add(keep_room=True)`) count until their jobs' outcomes are stored (`release_room`), so jobs
waiting for a slow commit hold reading back too. A send cancelled at shutdown
(even before it started) abandons its jobs: not acked, they come back.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from retrieve_core.logstore import DestinationResult
from retrieve_core.models import BatchSpec, Destination, RetrySpec

from .destinations import Delivery, deliver, encode_record, idempotency_key
from .httpclient import DestinationClient
from .workflow import backoff_seconds

log = logging.getLogger(__name__)

MAX_SENDS = 4
"""Requests of one batcher in flight at once."""


@dataclass(slots=True)
class BatchOutcome:
    """What became of one job's records for one batched destination."""

    deliveries: list[Delivery]
    exhausted: bool = False
    """A batch holding some of them failed `retry.maxAttempts` times: dead-letter the job."""


class PartWaiter(Protocol):
    """Who waits for one job's records for one destination: a job's task (through a future,
    `Batcher.submit`) or a job of the bulk path (bulk.py)."""

    def settled(self, deliveries: list[Delivery], exhausted: bool) -> None:
        """Every batch holding the records was settled: their deliveries, in record order."""

    def abandoned(self) -> None:
        """A batch holding some of them was cancelled (shutdown): the job is not acked."""


class _FutureWaiter:
    """A part's outcome as the result of a future (what a job's own task awaits)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[BatchOutcome]) -> None:
        self.future = future

    def settled(self, deliveries: list[Delivery], exhausted: bool) -> None:
        if not self.future.done():  # its job may have been cancelled meanwhile
            self.future.set_result(BatchOutcome(deliveries, exhausted))

    def abandoned(self) -> None:
        self.future.cancel()


@dataclass(slots=True, eq=False)
class _Part:
    """One job's records for one destination; settled when every batch holding them is."""

    indexes: list[int]
    results: list[Delivery | None]
    left: int
    waiter: PartWaiter
    exhausted: bool = False


@dataclass(slots=True, eq=False)
class _Batch:
    destination: Destination
    retry: RetrySpec
    deadline: float
    items: list[tuple[_Part, int, str, bytes]] = field(default_factory=list)
    """(part, position in the part, record id, encoded record)."""
    settled: bool = False
    kept: int = 0
    """Items whose room is given back by `Batcher.release_room`, not when the batch ends."""


@dataclass(frozen=True, slots=True)
class BatchSent:
    """One batch request's answer (for metrics)."""

    integration_id: str
    result: DestinationResult
    records: int


def batch_id(record_ids: list[str]) -> str:
    """The batch's `Idempotency-Key`: a digest of the ids of its records, in order."""
    digest = hashlib.sha256("\n".join(record_ids).encode()).hexdigest()[:32]
    return f"batch-{digest}"


def with_record_id(record: Any, id_field: str, record_id: str) -> Any:
    """An object record gains `id_field: record_id` (unless it already has that field)."""
    if id_field and isinstance(record, dict) and id_field not in record:
        return {**record, id_field: record_id}
    return record


class Batcher:
    """The open batch and the batches in flight of one integration's destination."""

    def __init__(
        self,
        client: Callable[[], DestinationClient],
        integration_id: str,
        on_sent: Callable[[BatchSent], None],
    ) -> None:
        self._client = client
        self.integration_id = integration_id
        self._on_sent = on_sent
        self._open: _Batch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._permits = asyncio.Semaphore(MAX_SENDS)
        self._unsettled = 0
        self._room = asyncio.Event()
        self._on_room: list[Callable[[], None]] = []
        self._closing = asyncio.Event()

    @property
    def unsettled(self) -> int:
        """Records submitted and not yet settled (or, added with `keep_room`, whose room was
        not given back yet)."""
        return self._unsettled

    def has_room(self, count: int, batch: BatchSpec) -> bool:
        """Whether `count` more records may be taken now: while fewer than
        `(MAX_SENDS + 1) * maxRecords` are unsettled (an empty batcher takes any job)."""
        return not self._unsettled or self._unsettled + count <= (MAX_SENDS + 1) * batch.max_records

    async def wait_room(self) -> None:
        """Returns once some records were settled (check `has_room` again)."""
        self._room.clear()
        await self._room.wait()

    def on_room(self, callback: Callable[[], None]) -> None:
        """`callback` is called (once, soon after, from the event loop) when room is next made."""
        self._on_room.append(callback)

    def release_room(self, count: int) -> None:
        """Gives back the room of `count` records added with `keep_room`."""
        self._unsettled -= count
        self._made_room()

    def _made_room(self) -> None:
        self._room.set()
        if self._on_room:
            loop = asyncio.get_running_loop()
            callbacks, self._on_room = self._on_room, []
            for callback in callbacks:
                loop.call_soon(callback)

    async def submit(
        self,
        destination: Destination,
        batch: BatchSpec,
        retry: RetrySpec,
        job_id: str,
        records: list[tuple[int, Any]],
        *,
        taken_at: float,
    ) -> asyncio.Future[BatchOutcome]:
        """Adds a job's records (index, record); the future settles with their deliveries.

        Waits while the batcher holds too many unsettled records (backpressure)."""
        while not self.has_room(len(records), batch):
            await self.wait_room()
        future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
        self.add(
            destination,
            batch,
            retry,
            job_id,
            records,
            waiter=_FutureWaiter(future),
            taken_at=taken_at,
        )
        return future

    def add(
        self,
        destination: Destination,
        batch: BatchSpec,
        retry: RetrySpec,
        job_id: str,
        records: list[tuple[int, Any]],
        *,
        waiter: PartWaiter,
        taken_at: float,
        keep_room: bool = False,
    ) -> None:
        """Adds a job's records (index, record) at once, whatever the room (the caller checked
        `has_room`); `waiter` learns their deliveries when every batch holding them settled.
        With `keep_room`, their room is given back by `release_room`, not when they settle."""
        count = len(records)
        self._unsettled += count  # first: what `release_room` gives back, even if this fails
        part = _Part([index for index, _ in records], [None] * count, count, waiter)
        deadline = taken_at + batch.max_wait_ms / 1000
        id_field = batch.record_id_field
        for position, (index, record) in enumerate(records):
            current = self._open
            if (
                current is not None
                and current.destination is not destination
                and current.destination != destination
            ):
                self._flush()  # the configuration changed: what was gathered goes as it was
                current = None
            if current is None:
                current = self._open = _Batch(destination, retry, deadline)
                self._arm(deadline)
            elif deadline < current.deadline:  # a job taken earlier, slower to get here
                current.deadline = deadline
                self._arm(deadline)
            record_id = idempotency_key(job_id, destination.name, index)
            content = encode_record(with_record_id(record, id_field, record_id))
            current.items.append((part, position, record_id, content))
            if keep_room:
                current.kept += 1
            if len(current.items) >= batch.max_records:
                self._flush()
        if self._closing.is_set():
            self._flush()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._open = self._open, None
        if batch is None or not batch.items:
            return
        task = asyncio.create_task(self._send(batch))
        self._sends.add(task)
        task.add_done_callback(functools.partial(self._sent, batch))

    async def _send(self, batch: _Batch) -> None:
        destination, retry = batch.destination, batch.retry
        key = batch_id([record_id for _, _, record_id, _ in batch.items])
        content = b"[" + b",".join(item for _, _, _, item in batch.items) + b"]"
        attempt = 0
        exhausted = False
        while True:
            attempt += 1
            async with self._permits:
                delivery = await deliver(
                    self._client(), destination, content, key=key, record_index=0, batch=key
                )
            self._on_sent(BatchSent(self.integration_id, delivery.result, len(batch.items)))
            if not delivery.retryable:
                break
            if attempt >= retry.max_attempts:
                exhausted = True
                break
            if self._closing.is_set():
                break  # the jobs get an ordinary retry; another batch will carry them
            try:
                await asyncio.wait_for(self._closing.wait(), backoff_seconds(retry, attempt))
            except TimeoutError:
                continue
            break
        self._settle(batch, delivery.result, attempt, exhausted)

    def _sent(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not batch.settled:
            # Cancelled at shutdown (perhaps before it started): the jobs are not acked, they
            # come back.
            if not task.cancelled() and task.exception() is not None:
                log.error("batch send failed", exc_info=task.exception())
            for part, _, _, _ in batch.items:
                part.waiter.abandoned()
        self._unsettled -= len(batch.items) - batch.kept
        self._made_room()

    def _settle(
        self, batch: _Batch, answer: DestinationResult, attempts: int, exhausted: bool
    ) -> None:
        error = answer.error
        if error and attempts > 1:
            error = f"{error} (batch sent {attempts} times)"
        # The records of a batch share its answer: one result per record index, not per record
        # (results are not changed once made).
        batch.settled = True
        made: dict[int, Delivery] = {}
        for part, position, _, _ in batch.items:
            index = part.indexes[position]
            delivery = made.get(index)
            if delivery is None:
                result = answer.model_copy(update={"record": index, "error": error})
                delivery = made[index] = Delivery(result)
            part.results[position] = delivery
            part.exhausted = part.exhausted or exhausted
            part.left -= 1
            if part.left == 0:
                deliveries = [d for d in part.results if d is not None]
                part.waiter.settled(deliveries, part.exhausted)

    def close(self) -> None:
        """Sends what is gathered now and stops waiting between retries."""
        self._closing.set()
        self._flush()

    def cancel(self) -> None:
        for task in self._sends:
            task.cancel()


class BatchRouter:
    """The batchers of one application's consumer, by integration id and destination name."""

    def __init__(
        self, client: Callable[[], DestinationClient], on_sent: Callable[[BatchSent], None]
    ) -> None:
        self._client = client
        self._on_sent = on_sent
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._closing = False

    def batcher(self, integration_id: str, destination: str) -> Batcher:
        found = self._batchers.get((integration_id, destination))
        if found is None:
            found = Batcher(self._client, integration_id, self._on_sent)
            if self._closing:
                found.close()
            self._batchers[(integration_id, destination)] = found
        return found

    @property
    def unsettled(self) -> int:
        """Records handed to the batchers and not yet settled."""
        return sum(batcher.unsettled for batcher in self._batchers.values())

    def close(self) -> None:
        self._closing = True
        for batcher in self._batchers.values():
            batcher.close()

    def cancel(self) -> None:
        for batcher in self._batchers.values():
            batcher.cancel()


@dataclass(slots=True)
class JobBatching:
    """What `run_workflow` needs to hand one job's records to the batchers."""

    router: BatchRouter
    integration_id: str
    taken_at: float
    """`time.monotonic()` when the job was taken from the stream."""
    park: Callable[[], None]
    """Called once the job's records are handed over: it gives its concurrency slot back."""

    async def submit(
        self,
        destination: Destination,
        batch: BatchSpec,
        retry: RetrySpec,
        job_id: str,
        records: list[tuple[int, Any]],
    ) -> asyncio.Future[BatchOutcome]:
        batcher = self.router.batcher(self.integration_id, destination.name)
        return await batcher.submit(
            destination, batch, retry, job_id, records, taken_at=self.taken_at
        )
