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
parked job. A job whose batcher has no room (more than `(MAX_SENDS + 1) * maxRecords`
records unsettled, batching.py) waits with the rest of its read, holding their slots so
reading slows down, in one task that hands them over as room is made.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
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
        "waiting",
    )

    def __init__(
        self, owner: BulkJobs, entry_id: str, job: Job, integration: IntegrationConfig
    ) -> None:
        self._owner = owner
        self.entry_id = entry_id
        self.job = job
        self.integration = integration
        self.earlier = dict(job.deliveries)
        """Deliveries settled by earlier attempts, then by this one (`Outcome.deliveries`)."""
        self.results: list[DestinationResult] = []
        self.waiting: list[tuple[Destination, BatchSpec, list[tuple[int, Any]]]] = []
        """Records not yet with a batcher: (destination, its batch spec, [(index, record)])."""
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
        self._ready: list[HeldJob] = []
        self._finishing = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.held = 0
        """Jobs taken and not yet stored or abandoned."""
        self._idle = asyncio.Event()
        self._idle.set()

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
        for entry_id, job, integration in jobs:
            in_flight[entry_id] = taken_at
            held = HeldJob(self, entry_id, job, integration)
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
        self.held += len(jobs)
        self._idle.clear()
        metrics = runner.worker.metrics
        metrics.child(metrics.in_flight, runner.app_id).inc(len(jobs))
        if crashed:
            self.forget(crashed)
        handed, _ = self._hand_over(waiting, taken_at)
        self._release(len(ready) + len(crashed) + handed)
        if handed < len(waiting):
            later = waiting[handed:]
            self._track(self._hand_over_later(later, taken_at), later, release=True)
        if ready:
            self._finish(ready)

    def _hand_over(self, jobs: list[HeldJob], taken_at: float) -> tuple[int, Batcher | None]:
        """Hands the records of jobs to their batchers while they have room; returns how many
        jobs were handed over and the batcher without room for the next one."""
        router = self._runner.batches
        for count, held in enumerate(jobs):
            integration = held.integration
            batchers: list[Batcher] = []
            for destination, batch, records in held.waiting:
                batcher = router.batcher(integration.id, destination.name)
                if not batcher.has_room(len(records), batch):
                    return count, batcher
                batchers.append(batcher)
            held.left = len(batchers)
            retry, job_id = integration.spec.retry, held.job.id
            for batcher, (destination, batch, records) in zip(batchers, held.waiting, strict=True):
                batcher.add(
                    destination, batch, retry, job_id, records, waiter=held, taken_at=taken_at
                )
            held.waiting = []
        return len(jobs), None

    async def _hand_over_later(self, jobs: list[HeldJob], taken_at: float) -> None:
        """Hands jobs over as their batchers make room; they hold their slots until then.
        Those left when it ends early (cancelled at shutdown) are abandoned (`_track`)."""
        while jobs:
            handed, full = self._hand_over(jobs, taken_at)
            if handed:
                self._release(handed)
                del jobs[:handed]
            if full is not None:
                await full.wait_room()

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
            self._finish(ready)

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
        completions: list[Completion] = []
        statuses: list[LogStatus] = []
        for held in jobs:
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
            completions.append(completion)
            statuses.append(status)
        self._track(self._commit(jobs, completions, statuses), jobs)

    async def _commit(
        self, jobs: list[HeldJob], completions: list[Completion], statuses: list[LogStatus]
    ) -> None:
        runner = self._runner
        try:
            await runner.committer.commit_many(completions)
        except (RedisError, OSError) as exc:
            # Not acked: pending, they run again (read loop restart or XAUTOCLAIM).
            runner.commit_failed(len(jobs), exc)
        else:
            runner.observe_bulk(
                [held.job for held in jobs], statuses, [c.error for c in completions]
            )

    def forget(self, jobs: list[HeldJob]) -> None:
        """The jobs are no longer this worker's concern: stored, or abandoned unacked."""
        runner = self._runner
        in_flight = runner.in_flight
        count = 0
        for held in jobs:
            if not held.dropped:
                held.dropped = True
                in_flight.pop(held.entry_id, None)
                count += 1
        metrics = runner.worker.metrics
        metrics.child(metrics.in_flight, runner.app_id).dec(count)
        self.held -= count
        if self.held == 0:
            self._idle.set()

    # ------------------------------------------------------------------ shutdown

    def _track(
        self, work: Coroutine[Any, Any, None], jobs: list[HeldJob], *, release: bool = False
    ) -> None:
        """Runs `work` for `jobs`; when it ends, however (even cancelled before it started),
        the jobs still listed are forgotten, their slots given back if `release`."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, jobs, release))

    def _ended(self, jobs: list[HeldJob], release: bool, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if release:
            self._release(len(jobs))
        self.forget(jobs)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: bulk job handling crashed", self._runner.app_id, exc_info=task.exception()
            )

    async def wait_idle(self) -> None:
        """Returns when every job taken was stored or abandoned."""
        while self.held:
            await self._idle.wait()

    def cancel(self) -> None:
        """Past the shutdown timeout: jobs still waiting are abandoned (not acked)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
