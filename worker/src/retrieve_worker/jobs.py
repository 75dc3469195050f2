"""Running jobs and recording their outcomes: workflow, retry schedule or dead letter, metrics,
error notifications.

`JobRunner` serves one application's consumer (consumer.py): `start` hands the jobs of a read
that only go to batched destinations to the bulk path (bulk.py) and leaves the others to run
one task each (`handle`). An outcome and the XACK that ends the delivery are one script call
(queue.py's `Committer`): a job is acked only once its outcome is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.job import JOB_FIELD, Job
from retrieve_core.logstore import DestinationResult, LogStatus
from retrieve_core.models import NotificationEvent, RetrySpec
from retrieve_core.notifications import Claimed, note_event, record_attempt
from retrieve_core.redisclient import is_redis_failure

from .batching import BatchRouter, BatchSent, JobBatching
from .bulk import BulkJobs
from .queue import Committer, Completion, Finish
from .workflow import SETTLED_EARLIER, Outcome, Verdict, backoff_seconds, run_workflow

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)


class JobRunner:
    """Runs the jobs of one application and records their outcomes.

    `in_flight` (entry id -> monotonic time taken) is the consumer's; `park` is called by a job
    that starts waiting for its batches, so its concurrency slot goes to the next job;
    `release(n)` gives back the slots of `n` jobs the bulk path handed to the batchers.
    """

    def __init__(
        self,
        worker: Worker,
        app: ApplicationConfig,
        in_flight: dict[str, float],
        park: Callable[[], None],
        release: Callable[[int], None],
    ) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.namespace, self.name = app.namespace, app.name
        self.app_id = f"{app.namespace}/{app.name}"
        self.keys = app.keys
        self.redis = worker.redis
        self.committer = Committer(self.redis, self.keys, self.settings.commit_batch)
        self.batches = BatchRouter(lambda: worker.client, self._batch_sent)
        self.in_flight = in_flight
        self._park = park
        self._background: set[asyncio.Task[None]] = set()
        self.bulk = BulkJobs(self, release)

    async def finish_background(self, timeout: float) -> None:
        """Notifications being noted or sent: `timeout` seconds more, then given up."""
        if self._background:
            _, late = await asyncio.wait(set(self._background), timeout=timeout)
            for task in late:
                task.cancel()

    def start(
        self, entries: Sequence[tuple[str, Any]], deliveries: Mapping[str, int]
    ) -> list[tuple[str, Any, Job | None]]:
        """Starts the jobs of entries just read (their concurrency slots taken): those that
        only go to batched destinations in bulk (bulk.py); returns the others, (entry id,
        fields, job or None when it does not decode), to run one task each (`handle`).
        `deliveries` has the delivery counts known (taken-back or reclaimed entries)."""
        others: list[tuple[str, Any, Job | None]] = []
        bulk: list[tuple[str, Job, IntegrationConfig]] = []
        limit = self.settings.max_deliveries
        served: dict[str, IntegrationConfig | None] = {}  # integration id -> it, if in bulk
        for entry_id, fields in entries:
            job: Job | None = None
            if fields:
                try:
                    job = decode_job(fields)
                except ValueError:
                    job = None  # `handle` dead-letters it
            if job is not None and deliveries.get(entry_id, 0) <= limit:
                integration_id = job.integration_id
                if integration_id in served:
                    integration = served[integration_id]
                else:
                    integration = self.worker.integration(self.namespace, self.name, integration_id)
                    if integration is not None and not BulkJobs.serves(integration):
                        integration = None
                    served[integration_id] = integration
                if integration is not None:
                    bulk.append((entry_id, job, integration))
                    continue
            others.append((entry_id, fields, job))
        if bulk:
            self.bulk.take(bulk)
        return others

    async def handle(
        self, entry_id: str, fields: Any, deliveries: int | None, job: Job | None = None
    ) -> None:
        """Runs the entry's job (`job`, when already decoded) and stores its outcome;
        `deliveries` (when known: a taken-back or reclaimed entry) dead-letters a job
        delivered more than `max_deliveries` times."""
        metrics = self.worker.metrics
        in_flight = metrics.child(metrics.in_flight, self.app_id)
        in_flight.inc()
        try:
            await self._process(entry_id, fields, deliveries, job)
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            # Not acked: the entry stays pending; it runs again when the read loop restarts
            # (it reads our own pending entries first) or is reclaimed after `claim_idle_ms`.
            metrics.child(metrics.commit_errors, self.app_id).inc()
            log.warning(
                "%s: outcome of %s not stored, will be redelivered: %s", self.app_id, entry_id, exc
            )
        finally:
            in_flight.dec()
            self.in_flight.pop(entry_id, None)

    async def _process(
        self, entry_id: str, fields: Any, deliveries: int | None, job: Job | None
    ) -> None:
        if not fields:  # deleted while pending
            await self.committer.commit(Completion(entry_id))
            return
        if job is None:
            try:
                job = decode_job(fields)
            except ValueError as exc:
                log.error(
                    "%s: entry %s is not a job, dead-lettered: %s", self.app_id, entry_id, exc
                )
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

    async def _record(
        self,
        entry_id: str,
        job: Job,
        outcome: Outcome,
        integration: IntegrationConfig | None,
        force_dead: bool = False,
    ) -> None:
        completion, status = self.completion_of(
            entry_id, job, outcome, integration, force_dead=force_dead
        )
        await self.committer.commit(completion)
        self._observe(job, outcome, status)
        if outcome.rewrite_failed:
            self._notify(NotificationEvent.REWRITE_ERROR, job, integration, outcome.error)
        if status is LogStatus.DEAD_LETTER:
            self._notify(NotificationEvent.DEAD_LETTER, job, integration, outcome.error)

    def completion_of(
        self,
        entry_id: str,
        job: Job,
        outcome: Outcome,
        integration: IntegrationConfig | None,
        *,
        force_dead: bool = False,
        shared: dict[Hashable, dict[str, Any]] | None = None,
    ) -> tuple[Completion, LogStatus]:
        """What to store for a job's outcome (log update, retry or dead letter) and its status.

        `shared` lets outcomes alike share one log update (one object: `Committer` sends it
        once a call): the caller keeps every outcome alive while it is in use, for the key
        names results by identity (results of one batch are shared, batching.py)."""
        retry = integration.spec.retry if integration is not None else _DEFAULT_RETRY
        attempts = job.attempt + 1
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
        plain = not (outcome.message or outcome.console or outcome.job_status is not None)
        if shared is not None and plain:
            key = (attempts, status, outcome.error, *map(id, outcome.destinations))
            fields = shared.get(key)
            if fields is None:
                fields = shared[key] = _log_fields(outcome, attempts, status)
        else:
            fields = _log_fields(outcome, attempts, status)
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
        return completion, status

    def commit_failed(self, jobs: int, exc: BaseException) -> None:
        """Outcomes of `jobs` jobs of the bulk path were not stored (they come back)."""
        metrics = self.worker.metrics
        metrics.child(metrics.commit_errors, self.app_id).inc(jobs)
        log.warning(
            "%s: outcomes of %d job(s) not stored, will be redelivered: %s", self.app_id, jobs, exc
        )

    def observe_bulk(
        self, jobs: Sequence[Job], statuses: Sequence[LogStatus], errors: Sequence[str]
    ) -> None:
        """Metrics and notifications of stored outcomes of the bulk path (no rewrite, and its
        batch requests counted as they were answered: `_batch_sent`)."""
        counts: dict[tuple[str, LogStatus], int] = {}
        for job, status in zip(jobs, statuses, strict=True):
            key = (job.integration_id, status)
            counts[key] = counts.get(key, 0) + 1
        for (integration, status), count in counts.items():
            self._count_jobs(integration, status, count)
        for job, status, error in zip(jobs, statuses, errors, strict=True):
            if status is LogStatus.DEAD_LETTER:
                found = self.worker.integration(self.namespace, self.name, job.integration_id)
                self._notify(NotificationEvent.DEAD_LETTER, job, found, error)

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
        self.background_task(noted, f"noting {event.value}")

    def background_task(self, work: Coroutine[Any, Any, object], what: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except (RedisError, OSError) as exc:
                log.warning("%s: %s failed: %s", self.app_id, what, exc)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def send_notice(self, claimed: Claimed) -> None:
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

    def _count_jobs(self, integration: str, status: LogStatus, count: int = 1) -> None:
        metrics = self.worker.metrics
        child = metrics.child
        child(metrics.jobs, self.app_id, integration, status.value).inc(count)
        if status is LogStatus.RETRYING:
            child(metrics.retries, self.app_id, integration).inc(count)
        elif status is LogStatus.DEAD_LETTER:
            child(metrics.dead_letters, self.app_id, integration).inc(count)

    def _observe(self, job: Job, outcome: Outcome, status: LogStatus) -> None:
        metrics = self.worker.metrics
        child = metrics.child
        integration = job.integration_id
        self._count_jobs(integration, status)
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


_DEFAULT_RETRY = RetrySpec()


def _log_fields(outcome: Outcome, attempts: int, status: LogStatus) -> dict[str, Any]:
    """The processing result a job's log record gets."""
    fields: dict[str, Any] = {
        "attempts": attempts,
        "message": outcome.message,
        "error": outcome.error,
        "destinations": [d.model_dump(mode="json") for d in outcome.destinations],
        "console": outcome.console,
    }
    if outcome.job_status is not None:
        fields["job_status"] = outcome.job_status
    fields["status"] = status.value
    return fields


def as_text(value: Any) -> str:
    """A stream id or field as text (replies are bytes unless decoded)."""
    return value.decode() if isinstance(value, bytes) else str(value)


_JOB_KEY = JOB_FIELD.encode()
# `Job.model_validate_json` without its wrapper's keyword handling (a sixth of its cost, once
# per job); a ValidationError is a ValueError all the same.
_validate_job = Job.__pydantic_validator__.validate_json


def decode_job(fields: Mapping[Any, Any]) -> Job:
    """The job of a stream entry; ValueError when it has none or it does not parse."""
    raw = fields.get(_JOB_KEY) or fields.get(JOB_FIELD)
    if raw is None:
        raise ValueError("stream entry has no 'job' field")
    job: Job = _validate_job(raw)
    return job


def _raw_job(fields: Mapping[Any, Any]) -> str:
    raw = fields.get(JOB_FIELD.encode()) or fields.get(JOB_FIELD) or b""
    return as_text(raw)[:65536] or "{}"
