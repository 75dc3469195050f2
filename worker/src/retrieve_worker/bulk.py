"""The bulk path: the jobs of one read whose records all go to batched destinations.

A job of an integration without a rewrite function whose destinations are all batched
(`http.batch`) needs no task of its own. The jobs of one `XREADGROUP` reply are decoded and
mapped at once and their records handed to the batchers (batching.py) together; a job's
outcome is stored when the last batch holding its records settles, in one script call with
the outcomes of every other job that batch settled (queue.py's `Committer`), the jobs alike
sharing one log update. A job costs its decoding, its mapping and its share of one call, not a
task, a future, a script call and a log update of its own. Every other job (a rewrite, an
unbatched destination, an entry that is not a job, one delivered more than `max_deliveries`
times) runs in its own task (`JobRunner.handle`), as do the jobs of integrations that mix
both kinds of destinations.

At least once, as on the task-per-job path: a job is acked only by the script call that stores
its outcome, and that call is made only once every batch holding its records was settled
(delivered, refused, or sent `retry.maxAttempts` times). Until then its entry stays pending
under this consumer, kept alive while it waits (`in_flight`, `XCLAIM`). A call that fails, a
batch cancelled at shutdown (the job is abandoned) and a worker killed at any point all leave
entries pending, unacked: this consumer's next read of its own pending entries or another
worker's `XAUTOCLAIM` runs them again (their records keep their ids, so a batch sent again
has the same record ids, and the destination can dedupe).

Bounds: a job gives its concurrency slot back once its records are with the batchers, like a
parked job. A batcher takes records while fewer than `(MAX_SENDS + 1) * maxRecords` of them
are unsettled (batching.py), and here a record counts until its job's outcome is stored or
abandoned, so jobs waiting for a slow commit hold reading back too. A job whose batchers have
no room waits in a queue per batcher, in read order (a later job of that batcher, even of a
later read, does not overtake it; the jobs of other batchers are not held up), holding its slot
so reading slows down, and is handed over when its batchers make room (`Batcher.on_room`).

A bug here (an exception outside the mapping) is logged and the jobs it touched are forgotten,
their slots given back: their entries stay pending and are reclaimed (at least once); at
shutdown past the timeout (`cancel`) every job still held is forgotten at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from retrieve_core.config import IntegrationConfig
from retrieve_core.job import Job
from retrieve_core.logstore import DestinationResult, LogStatus
from retrieve_core.mapping import FieldMapping, MappingError, compile_mapping
from retrieve_core.models import BatchSpec, Destination

from .batching import Batcher
from .destinations import Delivery
from .queue import Completion
from .workflow import Outcome, Verdict, conclude, mapped_records, unsettled_records

if TYPE_CHECKING:
    from .jobs import JobRunner

log = logging.getLogger(__name__)


class HeldJob:
    """One job of the bulk path, from its read until its outcome is stored (or it is
    abandoned); it waits for its records' batches as a `PartWaiter` (batching.py)."""

    __slots__ = (
        "_owner",
        "batchers",
        "deliveries",
        "dropped",
        "earlier",
        "entry_id",
        "exhausted",
        "integration",
        "job",
        "left",
        "outcome",
        "results",
        "rooms",
        "taken_at",
        "waiting",
    )

    def __init__(
        self,
        owner: BulkJobs,
        entry_id: str,
        job: Job,
        integration: IntegrationConfig,
        taken_at: float,
    ) -> None:
        self._owner = owner
        self.entry_id = entry_id
        self.job = job
        self.integration = integration
        self.taken_at = taken_at
        self.earlier = dict(job.deliveries)
        """Deliveries settled by earlier attempts, then by this one (`Outcome.deliveries`)."""
        self.results: list[DestinationResult] = []
        self.waiting: list[tuple[Destination, BatchSpec, list[tuple[int, Any]]]] = []
        """Records not yet with a batcher: (destination, its batch spec, [(index, record)])."""
        self.batchers: list[Batcher] = []
        """The batcher of each of `waiting`."""
        self.rooms: list[tuple[Batcher, int]] = []
        """Room taken in batchers (records added with `keep_room`), given back by `forget`."""
        self.deliveries: list[Delivery] = []
        self.left = 0
        """Destinations whose batches have not all settled yet."""
        self.exhausted = False
        self.outcome: Outcome | None = None
        """Known before any batch (a mapping error, nothing to send)."""
        self.dropped = False

    def settled(self, deliveries: list[Delivery], exhausted: bool) -> None:
        if self.deliveries:
            self.deliveries += deliveries
        else:
            self.deliveries = deliveries
        self.exhausted = self.exhausted or exhausted
        self.left -= 1
        if self.left == 0 and not self.dropped:
            self._owner.ready(self)

    def abandoned(self) -> None:
        if not self.dropped:
            self._owner.forget([self])


class BulkJobs:
    """The bulk path of one application's consumer (see the module's docstring)."""

    def __init__(self, runner: JobRunner, release: Callable[[int], None]) -> None:
        self._runner = runner
        self._release = release
        self._jobs: set[HeldJob] = set()
        """Jobs taken and not yet stored or abandoned."""
        self._queues: dict[Batcher, deque[HeldJob]] = {}
        """Jobs waiting for room, by batcher, in read order (a job in each of its batchers')."""
        self._queued = 0
        """Jobs in `_queues` (each holds its concurrency slot)."""
        self._listening: set[Batcher] = set()
        self._ready: list[HeldJob] = []
        self._finishing = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        """Jobs taken and not yet stored or abandoned."""
        return len(self._jobs)

    @staticmethod
    def serves(integration: IntegrationConfig) -> bool:
        """Whether the integration's jobs take the bulk path: no rewrite function, and
        every destination batched."""
        spec = integration.spec
        if spec.rewrite is not None:
            return False
        return all(destination.http.batch is not None for destination in spec.destinations)

    # ------------------------------------------------------------------ taking jobs

    def take(self, jobs: list[tuple[str, Job, IntegrationConfig]]) -> None:
        """Takes over the jobs (entry id, job, its integration) of one read, with their
        concurrency slots: maps their records and hands them to the batchers, in read order;
        a job is ready at once when it has nothing to send or its mapping fails."""
        runner = self._runner
        taken_at = time.monotonic()
        in_flight = runner.in_flight
        ready: list[HeldJob] = []
        waiting: list[HeldJob] = []
        crashed: list[HeldJob] = []
        mappings: dict[str, FieldMapping] = {}
        taken = self._jobs
        for entry_id, job, integration in jobs:
            in_flight[entry_id] = taken_at
            held = HeldJob(self, entry_id, job, integration, taken_at)
            taken.add(held)
            try:
                mapping = mappings.get(integration.id)
                if mapping is None:
                    mapping = mappings[integration.id] = compile_mapping(
                        integration.spec.field_mapping
                    )
                records = mapped_records(mapping, job.payload)
                for destination in integration.spec.destinations:
                    batch = destination.http.batch
                    assert batch is not None  # `serves`
                    pending = unsettled_records(
                        destination.name, records, held.earlier, held.results
                    )
                    if pending:
                        held.waiting.append((destination, batch, pending))
            except MappingError as exc:
                held.outcome = Outcome(Verdict.RETRY, error=str(exc))
                ready.append(held)
            except Exception:  # a bug: left pending, as a job task that crashed leaves it
                log.exception("%s: job of entry %s crashed", runner.app_id, entry_id)
                crashed.append(held)
            else:
                (waiting if held.waiting else ready).append(held)
        self._idle.clear()
        metrics = runner.worker.metrics
        metrics.child(metrics.in_flight, runner.app_id).inc(len(jobs))
        if crashed:
            self.forget(crashed)
        queued = 0
        try:
            queued = self._hand_over_or_queue(waiting)
        finally:
            # Whatever happens, a job not queued gives its slot back (now, once).
            self._release(len(jobs) - queued)
        if ready:
            try:
                self._finish(ready)
            except Exception:  # a bug: they come back (pending, reclaimed)
                log.exception("%s: storing bulk outcomes crashed", runner.app_id)
                self.forget(ready)

    def _hand_over_or_queue(self, jobs: list[HeldJob]) -> int:
        """Hands each job over if its batchers have room and no earlier job waits for them,
        else queues it; returns how many were queued (they keep their slots)."""
        router = self._runner.batches
        queues = self._queues
        queued = 0
        crashed: list[HeldJob] = []
        for held in jobs:
            try:
                integration_id = held.integration.id
                held.batchers = [
                    router.batcher(integration_id, destination.name)
                    for destination, _, _ in held.waiting
                ]
                if self._fits(held):
                    self._hand_over(held)
                    continue
                for batcher in held.batchers:
                    queue = queues.get(batcher)
                    if queue is None:
                        queue = queues[batcher] = deque()
                    queue.append(held)
                    self._listen(batcher)
            except Exception:
                crashed.append(held)
                if len(crashed) == 1:
                    log.exception(
                        "%s: handing the job of entry %s to its batchers crashed",
                        self._runner.app_id,
                        held.entry_id,
                    )
            else:
                queued += 1
        self._queued += queued
        if crashed:  # their slots are given back with the rest (`take`)
            self.forget(crashed)
        return queued

    def _fits(self, held: HeldJob) -> bool:
        """Whether the job may be handed over now: its batchers have room, and in each of them
        no job waits or it is the first waiting."""
        queues = self._queues
        for batcher, (_, batch, records) in zip(held.batchers, held.waiting, strict=True):
            queue = queues.get(batcher)
            while queue and queue[0].dropped:  # forgotten while it waited
                queue.popleft()
            if queue and queue[0] is not held:
                return False
            if not batcher.has_room(len(records), batch):
                return False
        return True

    def _hand_over(self, held: HeldJob) -> None:
        """Hands the job's records to its batchers (they have room)."""
        held.left = len(held.batchers)
        retry, job_id, taken_at = held.integration.spec.retry, held.job.id, held.taken_at
        rooms = held.rooms
        for batcher, (destination, batch, records) in zip(held.batchers, held.waiting, strict=True):
            rooms.append((batcher, len(records)))  # first: `add` counts them first
            batcher.add(
                destination,
                batch,
                retry,
                job_id,
                records,
                waiter=held,
                taken_at=taken_at,
                keep_room=True,
            )
        held.waiting = []
        held.batchers = []

    def _listen(self, batcher: Batcher) -> None:
        if batcher not in self._listening:
            self._listening.add(batcher)
            batcher.on_room(functools.partial(self._room_made, batcher))

    def _room_made(self, batcher: Batcher) -> None:
        """The batcher made room: hands over the jobs waiting for it that now fit, in order
        (and then those of other batchers they were ahead of)."""
        self._listening.discard(batcher)
        if self._closed:
            return
        try:
            self._drain(batcher)
        except Exception:  # a bug: the queued jobs come back (pending, reclaimed)
            log.exception("%s: handing over jobs waiting for room crashed", self._runner.app_id)
            self._abandon_queued()

    def _drain(self, first: Batcher) -> None:
        queues = self._queues
        todo = [first]
        handed = 0
        crashed: list[HeldJob] = []
        try:
            while todo:
                batcher = todo.pop()
                queue = queues.get(batcher)
                while queue:
                    held = queue[0]
                    if held.dropped:  # forgotten while it waited (slot given back then)
                        queue.popleft()
                        continue
                    if not self._fits(held):
                        break
                    self._queued -= 1
                    handed += 1
                    try:
                        for other in held.batchers:
                            queues[other].popleft()  # it is first in each (`_fits`)
                            if other is not batcher:
                                todo.append(other)
                        self._hand_over(held)
                    except Exception:
                        crashed.append(held)
                        if len(crashed) == 1:
                            log.exception(
                                "%s: handing the job of entry %s to its batchers crashed",
                                self._runner.app_id,
                                held.entry_id,
                            )
                if queue is not None:
                    if queue:
                        self._listen(batcher)
                    else:
                        del queues[batcher]
        finally:
            if crashed:
                self.forget(crashed)
            self._release(handed)

    def _abandon_queued(self) -> None:
        """The jobs waiting for room give their slots back and are forgotten (not acked)."""
        waiting = {held for queue in self._queues.values() for held in queue if not held.dropped}
        self._queues.clear()
        queued, self._queued = self._queued, 0
        self._release(queued)
        self.forget(list(waiting))

    # ------------------------------------------------------------------ storing outcomes

    def ready(self, held: HeldJob) -> None:
        """Every batch holding the job's records settled. The jobs a batch settles (and any
        other that settled meanwhile) are stored together, once the batcher is done."""
        self._ready.append(held)
        if not self._finishing:
            self._finishing = True
            asyncio.get_running_loop().call_soon(self._finish_ready)

    def _finish_ready(self) -> None:
        self._finishing = False
        ready, self._ready = self._ready, []
        if ready:
            try:
                self._finish(ready)
            except Exception:  # a bug: they come back (pending, reclaimed)
                log.exception("%s: storing bulk outcomes crashed", self._runner.app_id)
                self.forget(ready)

    def _finish(self, jobs: list[HeldJob]) -> None:
        """Stores the outcomes of `jobs` and acks them, in one script call (one task)."""
        if self._closed:  # stopping, past the shutdown timeout: they come back
            self.forget(jobs)
            return
        runner = self._runner
        # The jobs of one batch were answered alike: the same deliveries (batching.py makes one
        # per record index) give the same outcome and the same log update, made once. Keys
        # name deliveries and results by identity: `jobs` keeps them alive meanwhile.
        alike: dict[Hashable, Outcome] = {}
        shared: dict[Hashable, dict[str, Any]] = {}
        stored: list[HeldJob] = []
        completions: list[Completion] = []
        statuses: list[LogStatus] = []
        crashed: list[HeldJob] = []
        for held in jobs:
            try:
                outcome = held.outcome
                if outcome is None and (held.earlier or held.results):  # a retry: its own
                    outcome = conclude(
                        held.deliveries, held.results, held.earlier, exhausted=held.exhausted
                    )
                elif outcome is None:
                    key = (held.exhausted, *map(id, held.deliveries))
                    outcome = alike.get(key)
                    if outcome is None:
                        outcome = alike[key] = conclude(
                            held.deliveries, [], {}, exhausted=held.exhausted
                        )
                completion, status = runner.completion_of(
                    held.entry_id, held.job, outcome, held.integration, shared=shared
                )
            except Exception:  # a bug: left pending, reclaimed
                crashed.append(held)
                if len(crashed) == 1:
                    log.exception(
                        "%s: the outcome of entry %s could not be made",
                        runner.app_id,
                        held.entry_id,
                    )
                continue
            stored.append(held)
            completions.append(completion)
            statuses.append(status)
        if crashed:
            self.forget(crashed)
        if stored:
            self._track(self._commit(stored, completions, statuses), stored)

    async def _commit(
        self, jobs: list[HeldJob], completions: list[Completion], statuses: list[LogStatus]
    ) -> None:
        runner = self._runner
        committer = runner.committer
        size = committer.max_batch
        errors = await committer.commit_calls(completions)
        # One result per call of `size` outcomes, in order: each call's jobs by its own.
        for call, error in enumerate(errors):
            part = slice(call * size, (call + 1) * size)
            if error is None:
                try:
                    runner.observe_bulk(
                        [held.job for held in jobs[part]],
                        statuses[part],
                        [c.error for c in completions[part]],
                    )
                except Exception:  # stored and acked all the same
                    log.exception("%s: observing stored outcomes crashed", runner.app_id)
            elif isinstance(error, RedisError | OSError):
                # Not acked: pending, they run again (read loop restart or XAUTOCLAIM).
                runner.commit_failed(len(jobs[part]), error)
            else:
                log.error(
                    "%s: storing %d outcome(s) crashed; they will be redelivered",
                    runner.app_id,
                    len(jobs[part]),
                    exc_info=error,
                )

    def forget(self, jobs: list[HeldJob]) -> None:
        """The jobs are no longer this worker's concern: stored, or abandoned unacked. The
        room they took in batchers is given back."""
        runner = self._runner
        in_flight = runner.in_flight
        taken = self._jobs
        rooms: dict[Batcher, int] = {}
        count = 0
        for held in jobs:
            if not held.dropped:
                held.dropped = True
                in_flight.pop(held.entry_id, None)
                taken.discard(held)
                for batcher, records in held.rooms:
                    rooms[batcher] = rooms.get(batcher, 0) + records
                count += 1
        metrics = runner.worker.metrics
        metrics.child(metrics.in_flight, runner.app_id).dec(count)
        for batcher, records in rooms.items():
            batcher.release_room(records)
        if not taken:
            self._idle.set()

    # ------------------------------------------------------------------ shutdown

    def _track(self, work: Coroutine[Any, Any, None], jobs: list[HeldJob]) -> None:
        """Runs `work` for `jobs`; when it ends, however (even cancelled before it started),
        the jobs still listed are forgotten."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, jobs))

    def _ended(self, jobs: list[HeldJob], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.forget(jobs)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: bulk job handling crashed", self._runner.app_id, exc_info=task.exception()
            )

    async def wait_idle(self) -> None:
        """Returns when every job taken was stored or abandoned."""
        while self._jobs:
            self._idle.clear()
            await self._idle.wait()

    def cancel(self) -> None:
        """Past the shutdown timeout: every job still held is abandoned (not acked), at once."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self._abandon_queued()
        self.forget(list(self._jobs))
