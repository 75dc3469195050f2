"""The periodic status poll and the declarative replay (DESIGN.md, "Status that tells the truth").

Every interval, per RetrieveApplication (a kopf timer, see handlers.py): one pipelined Redis read
of its Integrations' counters (status_counters.py), then a status merge patch of each Integration
whose values changed, and nothing for the others. The fields patched here are disjoint from
the reconciler's, so the two writers never undo each other.

Redis unreachable: a Warning event `RedisUnavailable` on the RetrieveApplication (once, when
it starts failing; `RedisAvailable` when it answers again) and the status left as it was.

A new value of the annotation ``retrievetl.com/replay-dead-letters`` on an Integration requeues
its dead letters once and records the value in ``status.replayHandled``; the same value again
does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import kopf
from pydantic import ValidationError
from redis.exceptions import RedisError

from retrieve_core.constants import (
    ANNOTATION_REPLAY,
    API_GROUP_VERSION,
    KIND_APPLICATION,
    KIND_INTEGRATION,
)
from retrieve_core.keys import AppKeys
from retrieve_core.models import RetrieveApplicationSpec
from retrieve_core.redisclient import RedisClient, Timeouts, connect_redis
from retrieve_worker.replay import replay_dead_letters

from . import kube
from .kube import KubeApi, KubeError
from .metrics import OperatorMetrics
from .notifyevents import REASON_NOTIFICATION_FAILED, NotificationFailures, failure_message
from .plan import AppKey, ObjectRecord, integration_id_of, record_from_body
from .reconcile import World
from .schedule_status import poll_patches, wants_poll_status
from .status_counters import (
    ApplicationCounts,
    IntegrationCounts,
    live_patch,
    live_status,
    read_counts,
)

log = logging.getLogger(__name__)

REDIS_TIMEOUT: Final = 5.0
# Applications read at once: hundreds of timers fire together, and a Redis client's pool has a
# bound ("Too many connections" would be reported as Redis unavailable).
REDIS_READERS: Final = 16
REASON_REDIS_UNAVAILABLE: Final = "RedisUnavailable"
REASON_REDIS_AVAILABLE: Final = "RedisAvailable"
REASON_DEAD_LETTERS_REPLAYED: Final = "DeadLettersReplayed"


def replay_pending(body: Mapping[str, Any]) -> bool:
    """The Integration has a replay annotation value its status does not record as handled."""
    meta = body.get("metadata") or {}
    wanted = (meta.get("annotations") or {}).get(ANNOTATION_REPLAY)
    handled = (body.get("status") or {}).get("replayHandled")
    return bool(wanted) and wanted != handled and not meta.get("deletionTimestamp")


class RedisUnavailable(Exception):
    """The application's Redis cannot be reached (or its URL cannot be found)."""


class StatusRefresher:
    def __init__(
        self,
        api: KubeApi,
        world: World,
        *,
        default_redis_url: str | None,
        metrics: OperatorMetrics,
        interval: float,
    ) -> None:
        self.api = api
        self.world = world
        self.default_redis_url = default_redis_url
        self.metrics = metrics
        self.interval = interval
        self._clients: dict[str, RedisClient] = {}
        self._failing: set[AppKey] = set()
        self._replay_locks: dict[str, asyncio.Lock] = {}
        self._replayed: dict[str, str] = {}  # Integration uid -> the value last handled here
        self._notification_failures = NotificationFailures()
        self._redis_slots = asyncio.Semaphore(REDIS_READERS)

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
        await self.api.close()

    # ------------------------------------------------------------------- RedisClient

    async def _redis_url(self, app: ObjectRecord) -> str | None:
        """The application's Redis URL; None when its spec is invalid (the reconciler says so)."""
        try:
            spec = RetrieveApplicationSpec.model_validate(app.spec)
        except ValidationError:
            return None
        ref = spec.redis.secret_key_ref
        if ref is not None:
            try:
                url = await self.api.secret_value(app.namespace, ref.name, ref.key)
            except KubeError as exc:
                raise RedisUnavailable(f"cannot read Secret {ref.name}: {exc.message}") from exc
            if url is None:
                raise RedisUnavailable(f"Secret {ref.name} has no key {ref.key!r}")
            return url
        if spec.redis.url or self.default_redis_url:
            return spec.redis.url or self.default_redis_url
        raise RedisUnavailable("spec.redis sets no URL and the operator has no default")

    async def _redis(self, app: ObjectRecord) -> RedisClient | None:
        url = await self._redis_url(app)
        if url is None:
            return None
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = connect_redis(
                url, Timeouts(socket=REDIS_TIMEOUT, connect=REDIS_TIMEOUT)
            )
        return client

    # ------------------------------------------------------------------- the poll

    async def poll(self, key: AppKey) -> None:
        """Reads one application's counters and patches its Integrations; never raises for
        Redis or API trouble (the next interval tries again)."""
        app = self.world.application(key)
        if app is None or app.deleting:
            return
        members = self.world.integrations(key)
        started = time.monotonic()
        try:
            async with self._redis_slots:
                counts = await self._read(app, members)
                # spec.schedule: the last poll run and PollFailing (schedule_status.py).
                polls: dict[str, dict[str, Any]] = {}
                if counts is not None and wants_poll_status(members):
                    polls = await poll_patches(await self._redis(app), app, members)
        except (RedisError, OSError, TimeoutError, RedisUnavailable) as exc:
            self.metrics.status_polls.labels("error").inc()
            self._unavailable(app, exc)
            return
        if counts is None:
            return
        self._available(app)
        if app.spec.get("notifications"):
            await self._notification_events(app)
        try:
            await asyncio.gather(*(self._write(r, counts, polls.get(r.uid)) for r in members))
        except KubeError as exc:
            log.warning("%s/%s: status not updated: %s", *key, exc)
        self.metrics.status_polls.labels("ok").inc()
        self.metrics.status_poll_seconds.observe(time.monotonic() - started)

    async def _read(
        self, app: ObjectRecord, members: list[ObjectRecord]
    ) -> ApplicationCounts | None:
        redis = await self._redis(app)
        if redis is None:
            return None
        ids = sorted({integration_id_of(r) for r in members})
        keys = AppKeys(app.namespace, app.name)
        return await asyncio.wait_for(
            read_counts(redis, keys, ids, time.time()), timeout=2 * REDIS_TIMEOUT
        )

    async def _write(
        self,
        record: ObjectRecord,
        counts: ApplicationCounts,
        poll: Mapping[str, Any] | None = None,
    ) -> None:
        own = counts.integrations.get(integration_id_of(record), IntegrationCounts())
        patch = live_patch(record.status, live_status(own, counts.queue_depth))
        if poll:
            patch = {**(patch or {}), **poll}
        if patch is None:
            return
        await self.api.patch_status(
            API_GROUP_VERSION, KIND_INTEGRATION, record.namespace, record.name, patch
        )
        self.metrics.status_patches.inc()

    async def _notification_events(self, app: ObjectRecord) -> None:
        """A Warning event for error notifications that failed since the last poll."""
        try:
            redis = await self._redis(app)
            if redis is None:
                return
            failed = await self._notification_failures.new_failures(
                redis, app.key, AppKeys(app.namespace, app.name)
            )
        except (RedisError, OSError, TimeoutError, RedisUnavailable) as exc:
            log.debug("%s/%s: notification log not read: %s", app.namespace, app.name, exc)
            return
        if failed:
            self.metrics.notification_failures.inc(len(failed))
            self._event(app, True, REASON_NOTIFICATION_FAILED, failure_message(failed))

    def _unavailable(self, app: ObjectRecord, exc: BaseException) -> None:
        message = f"cannot read the counters from RedisClient: {exc.__class__.__name__}: {exc}"
        if app.key in self._failing:
            log.debug("%s/%s: %s", app.namespace, app.name, message)
            return
        self._failing.add(app.key)
        log.warning("%s/%s: %s", app.namespace, app.name, message)
        self._event(app, True, REASON_REDIS_UNAVAILABLE, message)

    def _available(self, app: ObjectRecord) -> None:
        if app.key in self._failing:
            self._failing.discard(app.key)
            self._event(app, False, REASON_REDIS_AVAILABLE, "Redis answers again")

    @staticmethod
    def _event(app: ObjectRecord, warning: bool, reason: str, message: str) -> None:
        ref = kube.reference(API_GROUP_VERSION, KIND_APPLICATION, app.namespace, app.name, app.uid)
        kube.post_event(ref, warning=warning, reason=reason, message=message)

    # ------------------------------------------------------------------- replay

    async def replay_requested(self, body: Mapping[str, Any], *, retry_later: bool = False) -> None:
        """Requeues an Integration's dead letters once per new annotation value.

        `retry_later`: a failure is only logged (the replay-retry timer tries again)."""
        if not replay_pending(body):
            return
        record = record_from_body(body)
        wanted = str(body["metadata"]["annotations"][ANNOTATION_REPLAY])
        lock = self._replay_locks.setdefault(record.uid, asyncio.Lock())
        async with lock:
            if self._replayed.get(record.uid) == wanted:  # done, the watch has not caught up
                return
            try:
                await self._replay(record, wanted)
            except kopf.TemporaryError as exc:
                if not retry_later:
                    raise
                log.warning("%s/%s: %s", record.namespace, record.name, exc)
                return
            self._replayed[record.uid] = wanted

    async def _replay(self, record: ObjectRecord, wanted: str) -> None:
        app = self.world.application(record.app_key)
        if app is None:
            raise kopf.TemporaryError(
                f"RetrieveApplication {record.namespace}/{record.application} not found",
                delay=max(self.interval, 30.0),
            )
        integration_id = integration_id_of(record)
        try:
            redis = await self._redis(app)
            if redis is None:
                raise RedisUnavailable("the application's spec is invalid")
            moved = await replay_dead_letters(
                redis, AppKeys(app.namespace, app.name), integration_id
            )
        except (RedisError, OSError, TimeoutError, RedisUnavailable) as exc:
            raise kopf.TemporaryError(
                f"replay of dead letters not done yet: {exc}", delay=self.interval
            ) from exc
        self.metrics.replays.inc(moved)
        try:
            await self.api.patch_status(
                API_GROUP_VERSION,
                KIND_INTEGRATION,
                record.namespace,
                record.name,
                {"replayHandled": wanted},
            )
        except KubeError as exc:
            # Replaying again would only requeue what failed again since: retry the record.
            raise kopf.TemporaryError(f"replayHandled not recorded: {exc}", delay=5) from exc
        ref = kube.reference(
            API_GROUP_VERSION, KIND_INTEGRATION, record.namespace, record.name, record.uid
        )
        kube.post_event(
            ref,
            warning=False,
            reason=REASON_DEAD_LETTERS_REPLAYED,
            message=f"Requeued {moved} dead letter(s) ({ANNOTATION_REPLAY}={wanted})",
        )
