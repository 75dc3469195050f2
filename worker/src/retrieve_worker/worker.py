"""The worker: consumes each application's job stream and runs the workflow of every job.

Per application (see `AppConsumer`): a consumer group read with `XREADGROUP >` and a block
timeout, bounded concurrency, a periodic `XAUTOCLAIM` that takes over the jobs of a consumer that
died (with a delivery-count cap that dead-letters a job which keeps killing its worker), a mover
that requeues due retries, a periodic trim of the webhook logs, the batchers of its batched
destinations (batching.py), and the sender of its due error notifications (notify.py).

Delivery is at least once: an entry is acked only in the MULTI that stores its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError, ResponseError

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.job import JOB_FIELD, Job
from retrieve_core.keys import CONSUMER_GROUP, AppKeys
from retrieve_core.logstore import DestinationResult, LogStatus, LogStore
from retrieve_core.models import NotificationEvent, RetrySpec
from retrieve_core.notifications import Claimed, claim_due, note_event, record_attempt
from retrieve_core.provider import ConfigProvider, ConfigSnapshot
from retrieve_core.redisclient import RedisClient, Timeouts, connect_redis
from retrieve_core.sandbox import Sandbox

from .batching import BatchRouter, BatchSent, JobBatching
from .destinations import create_client
from .httpclient import DestinationClient
from .metrics import WorkerMetrics
from .notify import Notifier
from .queue import Committer, Completion, DelayedMover, Finish, ensure_group
from .workflow import SETTLED_EARLIER, Outcome, Verdict, backoff_seconds, run_workflow

log = logging.getLogger(__name__)


def default_consumer_name() -> str:
    """The pod name in Kubernetes (`POD_NAME` from the downward API), else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    concurrency: int | None = None
    """Jobs in flight per application; None takes the application's `spec.worker.concurrency`."""
    consumer: str = field(default_factory=default_consumer_name)
    applications: tuple[str, ...] = ()
    """`namespace/name` of the applications to serve; empty serves every one the provider has."""
    block_ms: int = 2000
    read_count: int = 128
    claim_idle_ms: int = 60_000
    """A delivery unacknowledged for this long is taken over by another consumer."""
    claim_interval_seconds: float = 10.0
    max_deliveries: int = 10
    """A job delivered this many times without an outcome is dead-lettered (poison pill)."""
    delayed_poll_seconds: float = 0.5
    delayed_batch: int = 500
    log_trim_interval_seconds: float = 60.0
    queue_sample_seconds: float = 5.0
    """How often the queue depth and processing-delay gauges are sampled."""
    shutdown_timeout_seconds: float = 30.0
    commit_batch: int = 256
    max_rewrite_contexts: int = 256
    notify_poll_seconds: float = 0.5
    """How often due error notifications are claimed (the first of a quiet spell waits this
    long at most)."""


def _app_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class AppConsumer:
    """Consumes one application's stream; stops reading on `stop()` and drains in-flight jobs."""

    def __init__(self, worker: Worker, app: ApplicationConfig) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.app_id = _app_id(app.namespace, app.name)
        self.namespace, self.name = app.namespace, app.name
        self.keys: AppKeys = app.keys
        self.concurrency = self.settings.concurrency or app.spec.worker.concurrency
        self.slots = asyncio.Semaphore(self.concurrency)
        self.redis = worker.redis
        self.committer = Committer(self.redis, self.keys, self.settings.commit_batch)
        self.mover = DelayedMover(self.redis)
        self.in_flight: dict[str, float] = {}  # entry id -> start time
        self._tasks: set[asyncio.Task[None]] = set()
        # Jobs waiting for their batches hold no concurrency slot (batching.py).
        self._parked: set[asyncio.Task[Any]] = set()
        self.batches = BatchRouter(lambda: worker.client, self._batch_sent)
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._read_loop(), name=f"read {self.app_id}"),
            asyncio.create_task(self._claim_loop(), name=f"claim {self.app_id}"),
            asyncio.create_task(self._move_loop(), name=f"move {self.app_id}"),
            asyncio.create_task(self._trim_loop(), name=f"trim {self.app_id}"),
            asyncio.create_task(self._sample_loop(), name=f"sample {self.app_id}"),
            asyncio.create_task(self._notify_loop(), name=f"notify {self.app_id}"),
        ]

    def stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        """Waits for the reader to stop, lets in-flight jobs finish, then leaves the group."""
        self._stopping.set()
        reader = self._loops[0] if self._loops else None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        helpers = self._loops[1:]
        for task in helpers:
            task.cancel()
        self.batches.close()  # what batches gathered goes now
        if self._tasks:
            _, pending = await asyncio.wait(
                self._tasks, timeout=self.settings.shutdown_timeout_seconds
            )
            self.batches.cancel()
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%s: %d job(s) still running at shutdown; they will be redelivered",
                    self.app_id,
                    len(pending),
                )
                await asyncio.wait(pending)
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._background:  # notifications being sent: a short while, then given up
            _, late = await asyncio.wait(set(self._background), timeout=5)
            for task in late:
                task.cancel()
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

    # ------------------------------------------------------------------ reading

    async def _acquire_slots(self, wanted: int) -> int:
        """Waits for one free slot, then takes as many more as are free now (up to `wanted`)."""
        await self.slots.acquire()
        taken = 1
        while taken < wanted and not self.slots.locked():
            await self.slots.acquire()
            taken += 1
        return taken

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self.slots.release()

    async def _read_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await ensure_group(self.redis, self.keys)
                break
            except (RedisError, OSError) as exc:
                log.warning("%s: cannot create the consumer group: %s", self.app_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        self.ready.set()
        # First what a previous life of this consumer left pending (same pod name), then new.
        cursor = "0"
        backoff = 0.1
        while not self._stopping.is_set():
            taken = await self._acquire_slots(self.settings.read_count)
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
                if "NOGROUP" in str(exc):  # the stream was deleted under us
                    await ensure_group(self.redis, self.keys)
                    continue
                log.error("%s: XREADGROUP failed: %s", self.app_id, exc)
                await asyncio.sleep(backoff)
                continue
            except (RedisError, OSError) as exc:
                self._release_slots(taken)
                log.warning("%s: Redis unavailable, retrying: %s", self.app_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            replies: Any = reply
            entries: list[tuple[Any, Any]] = replies[0][1] if replies else []
            self._release_slots(taken - len(entries))
            if cursor != ">":
                cursor = _text(entries[-1][0]) if entries else ">"
            for entry_id, fields in entries:
                self._spawn(_text(entry_id), fields, None)

    def _spawn(self, entry_id: str, fields: Any, deliveries: int | None) -> None:
        self.in_flight[entry_id] = time.monotonic()
        task = asyncio.create_task(self._handle(entry_id, fields, deliveries))
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

    # ------------------------------------------------------------------ reclaiming

    async def _claim_loop(self) -> None:
        await self.ready.wait()
        interval = self.settings.claim_interval_seconds
        while not self._stopping.is_set():
            try:
                await self._keep_alive()
                await self.claim_once()
            except (RedisError, OSError) as exc:
                log.warning("%s: XAUTOCLAIM failed: %s", self.app_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _keep_alive(self) -> None:
        """Resets the idle time of our long-running deliveries, so nobody claims them."""
        horizon = time.monotonic() - self.settings.claim_idle_ms / 2000
        old: list[Any] = [entry for entry, started in self.in_flight.items() if started < horizon]
        if old:
            await self.redis.xclaim(
                self.keys.jobs, CONSUMER_GROUP, self.settings.consumer, 0, old, justid=True
            )

    async def claim_once(self) -> int:
        """Takes over entries idle longer than `claim_idle_ms`, honouring XAUTOCLAIM's cursor."""
        cursor: Any = "0-0"
        claimed = 0
        while not self._stopping.is_set():
            taken = await self._acquire_slots(self.settings.read_count)
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
            fresh = [(_text(i), f) for i, f in entries if _text(i) not in self.in_flight]
            self._release_slots(taken - len(fresh))
            if fresh:
                counts = await self._delivery_counts([i for i, _ in fresh])
                self.worker.metrics.reclaimed.labels(self.app_id).inc(len(fresh))
                log.info("%s: reclaimed %d job(s) from dead consumers", self.app_id, len(fresh))
                for entry_id, fields in fresh:
                    self._spawn(entry_id, fields, counts.get(entry_id))
                claimed += len(fresh)
            if _text(cursor) == "0-0":
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

    async def _move_loop(self) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            moved = 0
            try:
                moved = await self.mover.move_due(self.keys, self.settings.delayed_batch)
            except (RedisError, OSError) as exc:
                log.warning("%s: moving due retries failed: %s", self.app_id, exc)
            if moved < self.settings.delayed_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self.settings.delayed_poll_seconds
                    )

    async def _trim_loop(self) -> None:
        await self.ready.wait()
        store = LogStore(self.redis, self.keys)
        while not self._stopping.is_set():
            app = self.worker.application(self.namespace, self.name)
            if app is not None:
                bounds = app.spec.webhook_logs
                try:
                    await store.trim(bounds.max_records, bounds.max_age_seconds)
                except (RedisError, OSError) as exc:
                    log.warning("%s: trimming webhook logs failed: %s", self.app_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.settings.log_trim_interval_seconds
                )

    async def _sample_loop(self) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            try:
                await self.sample_queue()
            except (RedisError, OSError) as exc:
                log.debug("%s: sampling the queue failed: %s", self.app_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.queue_sample_seconds)

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
                received_at = _decode_job(oldest[0][1]).received_at
            except ValueError:
                received_at = None
            if received_at is not None:
                delay = max(0.0, (time.time() if now is None else now) - received_at)
        metrics = self.worker.metrics
        metrics.child(metrics.queue_depth, self.app_id).set(int(depth))
        metrics.child(metrics.processing_delay, self.app_id).set(delay)
        metrics.child(metrics.dead_letters_stored, self.app_id).set(int(dead))

    # ------------------------------------------------------------------ one job

    async def _handle(self, entry_id: str, fields: Any, deliveries: int | None) -> None:
        metrics = self.worker.metrics
        in_flight = metrics.child(metrics.in_flight, self.app_id)
        in_flight.inc()
        try:
            await self._process(entry_id, fields, deliveries)
        except (RedisError, OSError) as exc:
            # Not acked: the entry stays pending and is reclaimed after `claim_idle_ms`.
            metrics.child(metrics.commit_errors, self.app_id).inc()
            log.warning(
                "%s: outcome of %s not stored, will be redelivered: %s", self.app_id, entry_id, exc
            )
        finally:
            in_flight.dec()
            self.in_flight.pop(entry_id, None)

    async def _process(self, entry_id: str, fields: Any, deliveries: int | None) -> None:
        if not fields:  # deleted while pending
            await self.committer.commit(Completion(entry_id))
            return
        try:
            job = _decode_job(fields)
        except ValueError as exc:
            log.error("%s: entry %s is not a job, dead-lettered: %s", self.app_id, entry_id, exc)
            await self.committer.commit(
                Completion(
                    entry_id,
                    Finish.DEAD,
                    job_json=_raw_job(fields),
                    error=f"undecodable job: {exc}"[:500],
                )
            )
            return
        integration = self.worker.integration(self.namespace, self.name, job.integration_id)
        if deliveries is not None and deliveries > self.settings.max_deliveries:
            outcome = Outcome(
                Verdict.RETRY,
                error=f"delivered {deliveries} times without an outcome "
                "(a worker may crash on this job)",
            )
            await self._record(entry_id, job, outcome, integration, force_dead=True)
            return
        if integration is None:
            # Perhaps this worker has not seen the new configuration yet: retry, then dead-letter.
            outcome = Outcome(
                Verdict.RETRY,
                error=f"Integration {job.integration_id} is not configured on this worker",
            )
        else:
            batching: JobBatching | None = None
            for destination in integration.spec.destinations:
                if destination.http.batch is not None:
                    taken_at = self.in_flight.get(entry_id, time.monotonic())
                    batching = JobBatching(self.batches, integration.id, taken_at, self._park)
                    break
            outcome = await run_workflow(
                job, integration, self.worker.sandbox, self.worker.client, batching
            )
        await self._record(entry_id, job, outcome, integration)

    def _park(self) -> None:
        """The running job waits for its batches: its slot goes to the next job."""
        task = asyncio.current_task()
        if task is not None and task in self._tasks and task not in self._parked:
            self._parked.add(task)
            self.slots.release()

    async def _record(
        self,
        entry_id: str,
        job: Job,
        outcome: Outcome,
        integration: IntegrationConfig | None,
        force_dead: bool = False,
    ) -> None:
        retry = integration.spec.retry if integration is not None else RetrySpec()
        attempts = job.attempt + 1
        fields: dict[str, Any] = {
            "attempts": attempts,
            "message": outcome.message,
            "error": outcome.error,
            "destinations": [d.model_dump(mode="json") for d in outcome.destinations],
            "console": outcome.console,
        }
        if outcome.job_status is not None:
            fields["job_status"] = outcome.job_status
        mode, job_json, due = Finish.DONE, "", 0.0
        if outcome.verdict is Verdict.RETRY:
            job_json = job.model_copy(
                update={"attempt": attempts, "deliveries": outcome.deliveries}
            ).model_dump_json()
            if attempts < retry.max_attempts and not force_dead and not outcome.exhausted:
                status, mode = LogStatus.RETRYING, Finish.RETRY
                due = time.time() + backoff_seconds(retry, attempts)
            else:
                status, mode = LogStatus.DEAD_LETTER, Finish.DEAD
        elif outcome.verdict is Verdict.SUCCEEDED:
            status = LogStatus.SUCCEEDED
        else:
            status = LogStatus.FAILED
        fields["status"] = status.value
        completion = Completion(
            entry_id,
            mode,
            job_id=job.id,
            log_fields=fields,
            job_json=job_json,
            due=due,
            integration_id=job.integration_id,
            error=outcome.error,
            failed=status is LogStatus.FAILED,
        )
        await self.committer.commit(completion)
        self._observe(job, outcome, status)
        if outcome.rewrite_failed:
            self._notify(NotificationEvent.REWRITE_ERROR, job, integration, outcome.error)
        if status is LogStatus.DEAD_LETTER:
            self._notify(NotificationEvent.DEAD_LETTER, job, integration, outcome.error)

    # ------------------------------------------------------------------ notifications

    def _notify(
        self,
        event: NotificationEvent,
        job: Job,
        integration: IntegrationConfig | None,
        error: str,
    ) -> None:
        """Notes an event in the background (never on the job's path)."""
        app = self.worker.application(self.namespace, self.name)
        if app is None or not any(event in n.events for n in app.spec.notifications):
            return
        noted = note_event(
            self.redis,
            app,
            event,
            integration_id=job.integration_id,
            integration=integration.name if integration is not None else "",
            job_id=job.id,
            error=error,
        )
        self._background_task(noted, f"noting {event.value}")

    def _background_task(self, work: Coroutine[Any, Any, object], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except (RedisError, OSError) as exc:
                log.warning("%s: %s failed: %s", self.app_id, what, exc)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify_loop(self) -> None:
        await self.ready.wait()
        while not self._stopping.is_set():
            app = self.worker.application(self.namespace, self.name)
            if app is not None and app.spec.notifications:
                try:
                    for claimed in await claim_due(self.redis, app):
                        self._background_task(self._send_notice(claimed), "a notification")
                except (RedisError, OSError) as exc:
                    log.warning("%s: claiming notifications failed: %s", self.app_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.notify_poll_seconds)

    async def _send_notice(self, claimed: Claimed) -> None:
        app = self.worker.application(self.namespace, self.name)
        spec = next(
            (n for n in (app.spec.notifications if app else ()) if n.name == claimed.notification),
            None,
        )
        if spec is None:  # removed from the spec since the event
            return
        secrets = self.worker.provider.current.secrets
        attempt = await self.worker.notifier.send(spec, claimed.notice, secrets)
        metrics = self.worker.metrics
        metrics.child(metrics.notifications, self.app_id, spec.name, attempt.result).inc()
        if attempt.result != "sent":
            log.warning(
                "%s: notification %s (%s) failed: %s",
                self.app_id,
                spec.name,
                attempt.event,
                attempt.error,
            )
        await record_attempt(self.redis, self.keys, attempt)

    def _batch_sent(self, sent: BatchSent) -> None:
        metrics = self.worker.metrics
        result = sent.result
        metrics.child(metrics.batch_records, self.app_id, sent.integration_id, result.name).observe(
            sent.records
        )
        self._observe_request(sent.integration_id, result)

    def _observe(self, job: Job, outcome: Outcome, status: LogStatus) -> None:
        metrics = self.worker.metrics
        child = metrics.child
        integration = job.integration_id
        child(metrics.jobs, self.app_id, integration, status.value).inc()
        if status is LogStatus.RETRYING:
            child(metrics.retries, self.app_id, integration).inc()
        elif status is LogStatus.DEAD_LETTER:
            child(metrics.dead_letters, self.app_id, integration).inc()
        if outcome.rewrite_seconds is not None:
            child(metrics.rewrite_seconds, self.app_id, integration).observe(
                outcome.rewrite_seconds
            )
        for result in outcome.destinations:
            if result.body == SETTLED_EARLIER or result.batch:  # batches: `_batch_sent`
                continue
            self._observe_request(integration, result)

    def _observe_request(self, integration: str, result: DestinationResult) -> None:
        metrics = self.worker.metrics
        child = metrics.child
        if result.status is None:
            label = "timeout" if "timed out" in result.error else "error"
        else:
            label = f"{result.status // 100}xx"
        child(metrics.destination_requests, self.app_id, integration, result.name, label).inc()
        child(metrics.destination_latency, self.app_id, integration, result.name).observe(
            result.latency_ms / 1000
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_job(fields: Mapping[Any, Any]) -> Job:
    raw = fields.get(JOB_FIELD.encode()) or fields.get(JOB_FIELD)
    if raw is None:
        raise ValueError("stream entry has no 'job' field")
    return Job.model_validate_json(raw)


def _raw_job(fields: Mapping[Any, Any]) -> str:
    raw = fields.get(b"job") or fields.get("job") or b""
    return _text(raw)[:65536] or "{}"


class Worker:
    """Serves the applications of a `ConfigProvider` until `stop()`."""

    def __init__(
        self,
        settings: WorkerSettings,
        provider: ConfigProvider,
        *,
        registry: CollectorRegistry | None = None,
        redis: RedisClient | None = None,
        client: DestinationClient | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.metrics = WorkerMetrics(registry)
        self._own_redis = redis is None
        # Commands are bounded; the blocking XREADGROUP sets its own (shorter) block time.
        timeouts = Timeouts(socket=settings.block_ms / 1000 + 10)
        self.redis = redis if redis is not None else connect_redis(settings.redis_url, timeouts)
        self._own_client = client is None
        self._client = client
        self.sandbox = Sandbox(max_contexts=settings.max_rewrite_contexts)
        self.notifier = Notifier()
        self.consumers: dict[str, AppConsumer] = {}
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._integrations: dict[tuple[str, str, str], IntegrationConfig] = {}
        self._version = -1
        self.running = asyncio.Event()

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def client(self) -> DestinationClient:
        """The HTTP client of the destinations."""
        if self._client is None:
            raise RuntimeError("the worker is not running")
        return self._client

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ configuration

    def _served(self, snapshot: ConfigSnapshot) -> dict[str, ApplicationConfig]:
        wanted = set(self.settings.applications)
        return {
            _app_id(app.namespace, app.name): app
            for app in snapshot.applications
            if not wanted or _app_id(app.namespace, app.name) in wanted
        }

    def application(self, namespace: str, name: str) -> ApplicationConfig | None:
        return self.provider.current.application(namespace, name)

    def integration(
        self, namespace: str, name: str, integration_id: str
    ) -> IntegrationConfig | None:
        snapshot = self.provider.current
        if snapshot.version != self._version:
            self._integrations = {
                (app.namespace, app.name, i.id): i
                for app in snapshot.applications
                for i in app.integrations
            }
            self._version = snapshot.version
        return self._integrations.get((namespace, name, integration_id))

    def _on_config(self, _snapshot: ConfigSnapshot) -> None:
        self._changed.set()

    async def _reconcile(self) -> None:
        served = self._served(self.provider.current)
        for app_id in [a for a in self.consumers if a not in served]:
            consumer = self.consumers.pop(app_id)
            log.info("no longer serving %s", app_id)
            await consumer.wait_stopped()
        for app_id, app in served.items():
            if app_id not in self.consumers:
                consumer = AppConsumer(self, app)
                self.consumers[app_id] = consumer
                consumer.start()
                log.info(
                    "serving %s as consumer %s (concurrency %d)",
                    app_id,
                    self.settings.consumer,
                    consumer.concurrency,
                )
        live = {i.id for app in served.values() for i in app.integrations}
        self.sandbox.forget(lambda key: key.split(":", 1)[0] in live)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        if self._client is None:
            self._client = create_client()
        self.provider.subscribe(self._on_config)
        try:
            await self._wait(self.provider.loaded)
            while not self._stop.is_set():
                self._changed.clear()
                await self._reconcile()
                self.running.set()
                await self._wait(self._changed)
        finally:
            await asyncio.gather(
                *(c.wait_stopped() for c in self.consumers.values()), return_exceptions=True
            )
            self.consumers.clear()
            self.sandbox.close()
            await self.notifier.close()
            if self._own_client and self._client is not None:
                await self._client.close()
                self._client = None
            if self._own_redis:
                await self.redis.aclose()

    async def _wait(self, event: asyncio.Event) -> None:
        """Waits for `event` or for `stop()`."""
        if event.is_set():
            return
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


async def run_worker(
    settings: WorkerSettings,
    provider: ConfigProvider,
    *,
    registry: CollectorRegistry | None = None,
    handle_signals: bool = True,
) -> None:
    """Runs a worker until SIGTERM/SIGINT (when `handle_signals`) or cancellation.

    On a signal the worker stops reading, finishes in-flight jobs and leaves the consumer group.
    Metrics go to `registry` (serve it on `/metrics` if you like).
    """
    worker = Worker(settings, provider, registry=registry)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, worker.stop)
                installed.append(signum)
    try:
        await worker.run()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
