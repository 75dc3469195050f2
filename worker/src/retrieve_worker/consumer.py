"""One application's consumer: reads its job stream, takes over stalled jobs, keeps it tidy.

Its loops run under the worker's `Supervisor` (retrieve_core.supervision), which restarts a loop
that raises (a Redis outage, a deleted stream) with capped, jittered backoff, logs once per
state change, and counts it in `/metrics` and `/readyz`:

- read (required): `XGROUP CREATE … MKSTREAM`, then `XREADGROUP` — first with id 0, which hands
  back what this consumer name still has pending (a container restarted in its pod keeps
  `POD_NAME`: its unfinished jobs run again at once instead of after `claim_idle_ms`; also after
  the loop itself restarts), then `>` with a block timeout, within the concurrency bound;
- claim (required): `XAUTOCLAIM` of deliveries idle longer than `claim_idle_ms` (the jobs of a
  consumer that died), with a delivery-count cap that dead-letters a job which keeps killing its
  worker;
- move (required): due retries back into the stream;
- trim, sample, notify: the webhook logs' bounds, the queue gauges, due error notifications.

The jobs of a read that only go to batched destinations are handled in bulk (bulk.py); every
other job runs in its own task (`JobRunner.handle`, jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from retrieve_core.config import ApplicationConfig
from retrieve_core.job import Job
from retrieve_core.keys import CONSUMER_GROUP, AppKeys
from retrieve_core.logstore import LogStore
from retrieve_core.notifications import claim_due
from retrieve_core.supervision import Beat, SupervisedLoop

from .jobs import JobRunner, as_text, decode_job
from .queue import DelayedMover, ensure_group

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

_NO_COUNTS: Mapping[str, int] = {}
"""Entries read with `>` are delivered for the first time."""

REQUIRED_LOOPS = ("read", "claim", "move")
"""Without these no job moves: `/readyz` is not ready while one of them is down."""
UPKEEP_LOOPS = ("trim", "sample", "notify")


class Slots:
    """The concurrency bound: how many more jobs may be taken (a parked job's slot is free).

    `asyncio.Semaphore` taking many slots at once: first come, first served (a loop that
    releases its slots and takes them again at once does not starve another waiting loop),
    without one `acquire` per slot.
    """

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, wanted: int) -> int:
        """Waits for a free slot, in turn, then takes as many more as are free now (up to
        `wanted`); returns how many it took."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # `release` hands it one slot
            except asyncio.CancelledError:
                if waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                else:  # handed a slot, cancelled before it ran: the slot goes back
                    self.release(1)
                raise
        more = min(wanted - 1, self.free)
        self.free -= more
        return 1 + more

    def try_take(self, wanted: int) -> int:
        """Takes up to `wanted` slots if one is free now and nobody waits; 0 otherwise."""
        if self.free <= 0 or self._waiters:
            return 0
        taken = min(wanted, self.free)
        self.free -= taken
        return taken

    def release(self, count: int = 1) -> None:
        self.free += count
        while self.free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= 1
                waiter.set_result(None)


class AppConsumer:
    """Consumes one application's stream; stops reading on `stop()` and drains in-flight jobs."""

    def __init__(self, worker: Worker, app: ApplicationConfig) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.app_id = f"{app.namespace}/{app.name}"
        self.namespace, self.name = app.namespace, app.name
        self.keys: AppKeys = app.keys
        self.concurrency = self.settings.concurrency or app.spec.worker.concurrency
        self.slots = Slots(self.concurrency)
        self.redis = worker.redis
        self.mover = DelayedMover(self.redis)
        self.in_flight: dict[str, float] = {}  # entry id -> start time
        self.runner = JobRunner(worker, app, self.in_flight, self._park, self._release_slots)
        self.batches = self.runner.batches
        self._tasks: set[asyncio.Task[None]] = set()
        # Jobs waiting for their batches hold no concurrency slot (batching.py).
        self._parked: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._loops: dict[str, SupervisedLoop] = {}
        self.ready = asyncio.Event()
        """Set once the consumer group exists."""

    # ------------------------------------------------------------------ lifecycle

    def loop_name(self, kind: str) -> str:
        return f"{kind} {self.app_id}"

    def start(self) -> None:
        supervisor = self.worker.supervisor
        bodies = {
            "read": self._read_loop,
            "claim": self._claim_loop,
            "keep-alive": self._keep_alive_loop,
            "move": self._move_loop,
            "trim": self._trim_loop,
            "sample": self._sample_loop,
            "notify": self._notify_loop,
        }
        for kind, body in bodies.items():
            self._loops[kind] = supervisor.start(
                self.loop_name(kind), body, required=kind in REQUIRED_LOOPS
            )

    def stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        """Waits for the reader to stop, lets in-flight jobs finish, then leaves the group."""
        self._stopping.set()
        supervisor = self.worker.supervisor
        reader = self._loops.get("read")
        if reader is not None:
            await reader.finish()
        helpers = [self.loop_name(kind) for kind in self._loops if kind != "read"]
        helpers_stopped = asyncio.ensure_future(supervisor.stop(helpers))
        self.batches.close()  # what batches gathered goes now
        bulk = self.runner.bulk
        if self._tasks or bulk.held:
            bulk_idle = asyncio.ensure_future(bulk.wait_idle())
            _, pending = await asyncio.wait(
                {*self._tasks, bulk_idle}, timeout=self.settings.shutdown_timeout_seconds
            )
            pending.discard(bulk_idle)
            if pending or bulk.held:
                log.warning(
                    "%s: %d job(s) still running at shutdown; they will be redelivered",
                    self.app_id,
                    len(pending) + bulk.held,
                )
            # Sends cancelled abandon their jobs, unacked (batching.py, bulk.py).
            self.batches.cancel()
            bulk.cancel()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            # `bulk.cancel()` forgot every job held: idle at once (bounded all the same).
            await asyncio.wait({bulk_idle}, timeout=self.settings.shutdown_timeout_seconds)
            bulk_idle.cancel()
        await helpers_stopped
        supervisor.forget([self.loop_name("read")])
        await self.runner.finish_background(timeout=5)
        await self._leave_group()

    async def _leave_group(self) -> None:
        """XGROUP DELCONSUMER, only when nothing is pending for us (it would lose those entries)."""
        try:
            summary = await self.redis.xpending_range(
                self.keys.jobs,
                CONSUMER_GROUP,
                min="-",
                max="+",
                count=1,
                consumername=self.settings.consumer,
            )
            if summary:
                log.info(
                    "%s: consumer %s keeps pending entries; not removed",
                    self.app_id,
                    self.settings.consumer,
                )
                return
            await self.redis.xgroup_delconsumer(
                self.keys.jobs, CONSUMER_GROUP, self.settings.consumer
            )
        except (RedisError, OSError) as exc:
            log.warning("%s: could not remove consumer at shutdown: %s", self.app_id, exc)

    async def _pause(self, seconds: float) -> None:
        """Sleeps `seconds`, or less when the consumer stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ------------------------------------------------------------------ reading

    async def _acquire_slots(self, wanted: int) -> int:
        """Waits for one free slot, then takes as many more as are free now (up to `wanted`);
        0 once the consumer is stopping: a loop waiting for slots (every job waiting for a
        down destination's backoff) must not hold up the shutdown."""
        taken = self.slots.try_take(wanted)
        if taken or self._stopping.is_set():
            return taken
        take = asyncio.ensure_future(self.slots.take(wanted))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({take, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if take.done() and not take.cancelled():
                self.slots.release(take.result())
            raise
        finally:
            stopping.cancel()
            take.cancel()  # a slot handed to it meanwhile goes back (`Slots.take`)
        return take.result() if take.done() and not take.cancelled() else 0

    def _release_slots(self, count: int) -> None:
        self.slots.release(count)

    async def _read_loop(self, beat: Beat) -> None:
        await ensure_group(self.redis, self.keys)
        self.ready.set()
        # Healthy once a read worked (not at the group: the read may be what fails). First
        # what this consumer name still has pending (a previous life of this pod, or this loop
        # before it failed), then new entries.
        cursor = "0"
        while not self._stopping.is_set():
            taken = await self._acquire_slots(self.settings.read_count)
            if not taken:
                continue  # stopping
            try:
                reply = await self.redis.xreadgroup(
                    CONSUMER_GROUP,
                    self.settings.consumer,
                    {self.keys.jobs: cursor},
                    count=taken,
                    block=self.settings.block_ms if cursor == ">" else None,
                )
            except ResponseError as exc:
                self._release_slots(taken)
                if "NOGROUP" not in str(exc):
                    raise
                await ensure_group(self.redis, self.keys)  # the stream was deleted under us
                continue
            except BaseException:
                self._release_slots(taken)
                raise
            beat()
            replies: Any = reply
            entries: list[tuple[Any, Any]] = replies[0][1] if replies else []
            if cursor == ">":
                self._release_slots(taken - len(entries))
                self._start([(as_text(i), f) for i, f in entries], _NO_COUNTS)
                continue
            cursor = as_text(entries[-1][0]) if entries else ">"
            await self._take_back([(as_text(i), f) for i, f in entries], taken)

    async def _take_back(self, entries: list[tuple[str, Any]], taken: int) -> None:
        """Runs entries pending under our own name, with their delivery counts, so a job that
        keeps killing this pod is dead-lettered in the end. Entries already running here (the
        loop restarted, not the process) are skipped; reading them counted one more delivery."""
        fresh = [(i, f) for i, f in entries if i not in self.in_flight]
        self._release_slots(taken - len(fresh))
        if not fresh:
            return
        try:
            counts = await self._delivery_counts([i for i, _ in fresh])
        except BaseException:
            self._release_slots(len(fresh))
            raise
        metrics = self.worker.metrics
        metrics.child(metrics.taken_back, self.app_id).inc(len(fresh))
        log.info(
            "%s: took back %d job(s) pending under consumer %s",
            self.app_id,
            len(fresh),
            self.settings.consumer,
        )
        self._start(fresh, counts)

    def _start(self, entries: list[tuple[str, Any]], counts: Mapping[str, int]) -> None:
        """Starts the jobs of entries read, a concurrency slot taken for each: in bulk those
        that only go to batched destinations (they give their slots back themselves), the
        others in a task each. `counts`: delivery counts, when known."""
        for entry_id, fields, job in self.runner.start(entries, counts):
            self._spawn(entry_id, fields, counts.get(entry_id), job)

    def _spawn(self, entry_id: str, fields: Any, deliveries: int | None, job: Job | None) -> None:
        self.in_flight[entry_id] = time.monotonic()
        task = asyncio.create_task(self.runner.handle(entry_id, fields, deliveries, job))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._parked:
            self._parked.discard(task)
        else:
            self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: job handler crashed", self.app_id, exc_info=task.exception())

    def _park(self) -> None:
        """The running job waits for its batches: its slot goes to the next job."""
        task = asyncio.current_task()
        if task is not None and task in self._tasks and task not in self._parked:
            self._parked.add(task)
            self.slots.release()

    # ------------------------------------------------------------------ reclaiming

    async def _claim_loop(self, beat: Beat) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            await self.claim_once()
            beat()
            await self._pause(self.settings.claim_interval_seconds)

    async def _keep_alive_loop(self, beat: Beat) -> None:
        """A loop of its own, not a step of the claim loop: a claim pass waits for free slots,
        and while every slot is busy (jobs waiting for their batches) our own entries must
        still be kept alive, or another worker would claim and send them again."""
        await self.ready.wait()
        while not self._stopping.is_set():
            await self._keep_alive()
            beat()
            await self._pause(self.settings.claim_interval_seconds)

    async def _keep_alive(self) -> None:
        """Resets the idle time of our long-running deliveries, so nobody claims them."""
        horizon = time.monotonic() - self.settings.claim_idle_ms / 2000
        old: list[Any] = [entry for entry, started in self.in_flight.items() if started < horizon]
        if old:
            await self.redis.xclaim(
                self.keys.jobs, CONSUMER_GROUP, self.settings.consumer, 0, old, justid=True
            )

    async def claim_once(self) -> int:
        """Takes over entries idle longer than `claim_idle_ms`, honouring XAUTOCLAIM's cursor.

        The pass ends at entries added less than `claim_idle_ms` ago (by the Redis clock that
        made their ids) once a call there claimed nothing: none of them can have been idle that
        long, and while a backlog is read the pass would otherwise follow the read loop to its
        end, a round trip (and the free slots) per `read_count` entries. Only an empty call
        ends it: ids ahead of `TIME` (a clock stepped back, a failover to a node whose clock is
        behind, or `TIME` answered by another cluster node) must not stop it while it claims."""
        seconds, microseconds = await self.redis.time()
        horizon = seconds * 1000 + microseconds // 1000 - self.settings.claim_idle_ms
        cursor: Any = "0-0"
        claimed = 0
        while not self._stopping.is_set():
            taken = await self._acquire_slots(self.settings.read_count)
            if not taken:
                break  # stopping
            try:
                reply = await self.redis.xautoclaim(
                    self.keys.jobs,
                    CONSUMER_GROUP,
                    self.settings.consumer,
                    min_idle_time=self.settings.claim_idle_ms,
                    start_id=cursor,
                    count=taken,
                )
            except BaseException:
                self._release_slots(taken)
                raise
            cursor, entries = reply[0], [e for e in reply[1] if e and e[0] is not None]
            fresh = [(as_text(i), f) for i, f in entries if as_text(i) not in self.in_flight]
            self._release_slots(taken - len(fresh))
            if fresh:
                try:
                    counts = await self._delivery_counts([i for i, _ in fresh])
                except BaseException:
                    self._release_slots(len(fresh))
                    raise
                self.worker.metrics.reclaimed.labels(self.app_id).inc(len(fresh))
                log.info("%s: reclaimed %d job(s) from dead consumers", self.app_id, len(fresh))
                self._start(fresh, counts)
                claimed += len(fresh)
            next_id = as_text(cursor)
            if next_id == "0-0" or (not entries and int(next_id.split("-", 1)[0]) > horizon):
                break
        return claimed

    async def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(self.keys.jobs, CONSUMER_GROUP, entry_id, entry_id, 1)
            replies = await pipe.execute()
        counts: dict[str, int] = {}
        for entry_id, rows in zip(entry_ids, replies, strict=True):
            if rows:
                counts[entry_id] = int(rows[0]["times_delivered"])
        return counts

    # ------------------------------------------------------------------ background upkeep

    async def _move_loop(self, beat: Beat) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            moved = await self.mover.move_due(self.keys, self.settings.delayed_batch)
            beat()
            if moved < self.settings.delayed_batch:
                await self._pause(self.settings.delayed_poll_seconds)

    async def _trim_loop(self, beat: Beat) -> None:
        await self.ready.wait()
        store = LogStore(self.redis, self.keys)
        while not self._stopping.is_set():
            app = self.worker.application(self.namespace, self.name)
            if app is not None:
                bounds = app.spec.webhook_logs
                await store.trim(bounds.max_records, bounds.max_age_seconds)
            beat()
            await self._pause(self.settings.log_trim_interval_seconds)

    async def _sample_loop(self, beat: Beat) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            await self.sample_queue()
            beat()
            await self._pause(self.settings.queue_sample_seconds)

    async def sample_queue(self, now: float | None = None) -> None:
        """Queue depth, dead letters, and the processing delay: now minus the received-at
        time of the oldest job still in the stream (acked entries are deleted), one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.jobs)
            pipe.xrange(self.keys.jobs, "-", "+", count=1)
            pipe.xlen(self.keys.dead_letters)
            depth, oldest, dead = await pipe.execute()
        delay = 0.0
        if oldest:
            try:
                received_at = decode_job(oldest[0][1]).received_at
            except ValueError:
                received_at = None
            if received_at is not None:
                delay = max(0.0, (time.time() if now is None else now) - received_at)
        metrics = self.worker.metrics
        metrics.child(metrics.queue_depth, self.app_id).set(int(depth))
        metrics.child(metrics.processing_delay, self.app_id).set(delay)
        metrics.child(metrics.dead_letters_stored, self.app_id).set(int(dead))

    async def _notify_loop(self, beat: Beat) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            app = self.worker.application(self.namespace, self.name)
            if app is not None and app.spec.notifications:
                for claimed in await claim_due(self.redis, app):
                    self.runner.background_task(self.runner.send_notice(claimed), "a notification")
            beat()
            await self._pause(self.settings.notify_poll_seconds)
