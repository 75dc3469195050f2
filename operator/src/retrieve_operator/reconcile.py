"""Level-based reconcile of an application, its children and its Integrations' status.

Every trigger (a RetrieveApplication or Integration created/changed/resumed/deleted, a child
drifting or deleted, the periodic resync) ends in :meth:`Reconciler.reconcile`, which reads the
world (kopf's indexes, Secrets, rewrite-test results), plans with the pure functions of
``plan.py``, server-side-applies every child, deletes what must not exist, and rebuilds every
status. Concurrent requests for one application are serialised and coalesced: a request that
waited while a pass started after it was made is already served by that pass.

One module of ~600 lines on purpose: the pass reads top to bottom in the order its writes
happen (RBAC, children, prunes, statuses, Events); what it decides is in the pure `plan.py`
and `builders.py`, and what it writes goes through `kube.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

import kopf
from pydantic import ValidationError

from retrieve_core.config import ApplicationConfig
from retrieve_core.constants import (
    API_GROUP_VERSION,
    KIND_APPLICATION,
    KIND_INTEGRATION,
    LABEL_INSTANCE,
    REASON_INTEGRATION_DISABLED,
    REASON_INVALID_SPEC,
    REASON_ROUTE_PENDING,
    REASON_WEBHOOK_DISABLED,
)
from retrieve_core.models import IntegrationSpec
from retrieve_core.rewrite_examples import run_rewrite_tests

from . import kube
from .builders import (
    DeployedApplication,
    Manifest,
    absent_children,
    build_children,
    config_map_name,
)
from .conditions import Condition, find_condition, merge_condition, now_rfc3339
from .gateway import HTTPROUTE_KIND, gateway_api_not_installed, route_problem
from .kube import (
    Applied,
    InvalidObject,
    KindNotServed,
    KubeApi,
    KubeError,
    NamespaceTerminating,
)
from .metrics import OperatorMetrics
from .notifyevents import (
    CONDITION_NOTIFICATIONS_READY,
    notification_secret_names,
    notifications_condition,
    notifications_of,
)
from .plan import (
    AppKey,
    ApplicationPlan,
    ChildKey,
    Facts,
    IntegrationPlan,
    ObjectRecord,
    application_status,
    child_key,
    covers,
    integration_id_of,
    integration_status,
    invalid_application,
    parse_integration,
    plan_application,
    plan_missing_application,
    secret_names,
    status_patch_needed,
    with_digest,
    with_route_problem,
)
from .rbac import runtime_rbac_objects
from .schedule_cronjobs import (
    CRONJOB_API_VERSION,
    CRONJOB_KIND,
    build_poll_cronjobs,
    poll_selector,
    stale_poll_cronjobs,
)
from .settings import OperatorOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

STATUS_WRITERS: Final = 16
# A pass holds its plan and its built children while it waits for the API server, which answers
# a client's POOL_SIZE (kube.py) requests at a time anyway: after a restart, all 500 passes of
# 5,000 Integrations at once held ~20 MiB more than 32 at a time, and were no faster.
PASSES_AT_ONCE: Final = 32
REWRITE_TEST_RUNNERS: Final = 2
REWRITE_CACHE_SIZE: Final = 2048
WRITTEN_STATUS_CACHE_SIZE: Final = 20_000
RETRY_DELAY: Final = 5.0
FORBIDDEN_RETRY_DELAY: Final = 30.0
# Not-ready reasons that are a user's choice or a passing state, not a problem: posted as
# Normal events (a new HTTPRoute is pending until its Gateway's controller reports on it).
QUIET_REASONS: Final = frozenset(
    {REASON_INTEGRATION_DISABLED, REASON_WEBHOOK_DISABLED, REASON_ROUTE_PENDING}
)


@dataclass(frozen=True)
class World:
    """kopf's in-memory indexes of the custom resources and the children (see handlers.py)."""

    applications: Mapping[AppKey, Collection[ObjectRecord]]
    integrations_by_app: Mapping[AppKey, Collection[ObjectRecord]]
    integrations_by_id: Mapping[str, Collection[ObjectRecord]]
    children: Mapping[ChildKey, Collection[str]] = field(default_factory=dict)
    """Each child as last seen on its watch (plan.seen_child)."""

    def application(self, key: AppKey) -> ObjectRecord | None:
        for record in self.applications.get(key, ()):
            return record
        return None

    def integrations(self, key: AppKey) -> list[ObjectRecord]:
        return [r for r in self.integrations_by_app.get(key, ()) if not r.deleting]

    def claimant_apps(self, integration_id: str) -> set[AppKey]:
        return {r.app_key for r in self.integrations_by_id.get(integration_id, ())}

    def child(self, key: ChildKey) -> dict[str, Any] | None:
        for text in self.children.get(key, ()):
            seen: dict[str, Any] = json.loads(text)
            return seen
        return None


@dataclass(frozen=True)
class DesiredChild:
    """A child as last applied (or found as desired): its application's name, and the manifest
    as compact JSON (parsed when one of its events needs a look; thousands are kept)."""

    application: str
    text: str

    @classmethod
    def of(cls, manifest: Manifest) -> DesiredChild:
        application = str(manifest["metadata"]["labels"].get(LABEL_INSTANCE))
        return cls(application, json.dumps(manifest, separators=(",", ":")))

    @property
    def manifest(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed


def _rewrite_digest(spec: IntegrationSpec) -> str | None:
    if spec.rewrite is None or not spec.rewrite.tests:
        return None
    material = [spec.rewrite.model_dump(mode="json"), spec.field_mapping]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _run_rewrite_tests(spec: IntegrationSpec) -> str | None:
    """Blocking (a V8 isolate): why the examples fail, or None when they pass."""
    assert spec.rewrite is not None
    try:
        failures = run_rewrite_tests(spec.rewrite, spec.field_mapping)
    except Exception as exc:  # a broken sandbox must not let an untested version through
        return f"the rewrite tests could not run: {exc}"
    return "; ".join(str(f) for f in failures) or None


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        options: OperatorOptions,
        world: World,
        *,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api = api
        self.options = options
        self.world = world
        self.metrics = metrics or OperatorMetrics()
        self._locks: dict[AppKey, asyncio.Lock] = {}
        self._requested: dict[AppKey, int] = {}
        self._served: dict[AppKey, int] = {}
        self._outcome: dict[AppKey, Condition] = {}
        self._desired: dict[ChildKey, DesiredChild] = {}
        self._versions: dict[ChildKey, str] = {}
        # What each HTTPRoute's status.parents said when last reflected in its app's status:
        # a Gateway's new verdict (a status-only change) is a reason to reconcile.
        self._route_verdicts: dict[ChildKey, Condition | None] = {}
        # uid -> (the resourceVersion a status patch was made over, the status then): until
        # the watch delivers the patch, a pass plans from this, not from the stale index.
        self._written: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._rbac_locks: dict[str, asyncio.Lock] = {}
        self._rbac_checked: dict[str, float] = {}  # namespace -> when its RBAC was checked
        self._rewrite_results: OrderedDict[str, str | None] = OrderedDict()
        self._rewrite_slots = asyncio.Semaphore(REWRITE_TEST_RUNNERS)
        self._status_slots = asyncio.Semaphore(STATUS_WRITERS)
        self._pass_slots = asyncio.Semaphore(PASSES_AT_ONCE)

    async def close(self) -> None:
        await self.api.close()

    # ------------------------------------------------------------------- triggers

    async def application_changed(self, key: AppKey, *, resync: bool = False) -> None:
        """A RetrieveApplication was created, changed, resumed, or is due for a resync.

        An invalid spec fails the change's handler for good (its status says why); the next
        change of the spec is a new attempt. The resync never fails for it.
        """
        await self.reconcile(key, resync=resync)
        outcome = self._outcome.get(key)
        if not resync and outcome is not None and outcome.reason == REASON_INVALID_SPEC:
            raise kopf.PermanentError(outcome.message)

    async def application_deleted(self, key: AppKey) -> None:
        """Its children go with the garbage collector; its Integrations lose their app."""
        gone = [
            child
            for child, desired in self._desired.items()
            if child[2] == key[0] and desired.application == key[1]
        ]
        for child in gone:
            self._forget(child)
        self._outcome.pop(key, None)
        await self.reconcile(key)

    async def integration_resumed(self, record: ObjectRecord) -> None:
        """The operator (re)started: the applications' own resume makes the passes that cover
        their Integrations, so only an Integration whose application is missing needs one
        (at thousands of Integrations, their handlers finish at once instead of queueing for
        their application's pass, and kopf lets go of their bodies sooner)."""
        app = self.world.application(record.app_key)
        if app is None or app.deleting:
            await self.integration_changed(record)

    async def integration_changed(
        self, record: ObjectRecord, old_spec: Mapping[str, Any] | None = None
    ) -> None:
        """Its application, and every application sharing its id (old and new), are affected."""
        records = [record]
        if old_spec is not None:
            records.append(
                ObjectRecord(
                    record.namespace, record.name, record.uid, None, record.created, old_spec
                )
            )
        keys: set[AppKey] = set()
        for r in records:
            keys.add(r.app_key)
            keys |= self.world.claimant_apps(integration_id_of(r))
        await self._gather(self.reconcile(key) for key in sorted(keys))

    def drifted(self, event_type: str | None, body: Mapping[str, Any]) -> AppKey | None:
        """The application to reconcile for a child's event: deleted, or no longer as applied.

        The initial listing (no event type) is left to the resume handlers.
        """
        meta = body.get("metadata") or {}
        key: AppKey = (
            str(meta.get("namespace")),
            str((meta.get("labels") or {}).get(LABEL_INSTANCE)),
        )
        app = self.world.application(key)
        if event_type is None or app is None or app.deleting:
            return None
        if event_type != "DELETED":
            desired = self._desired.get(child_key(body))
            if (
                desired is not None
                and covers(body, desired.manifest)
                and not self._new_verdict(body)
            ):
                return None
        return key

    def _new_verdict(self, body: Mapping[str, Any]) -> bool:
        """An HTTPRoute whose Gateways now say something else than what was reflected."""
        child = child_key(body)
        if child[1] != HTTPROUTE_KIND or child not in self._route_verdicts:
            return False
        return route_problem(body) != self._route_verdicts[child]

    async def child_changed(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A child was deleted or changed away from what was applied: reconcile its app."""
        key = self.drifted(event_type, body)
        if key is not None:
            log.info(
                "%s %s/%s: %s and not as applied; reconciling",
                body.get("kind"),
                key[0],
                (body.get("metadata") or {}).get("name"),
                event_type,
            )
            await self.reconcile(key)

    # ------------------------------------------------------------------- one pass

    async def reconcile(self, key: AppKey, *, resync: bool = False) -> None:
        """Serialised and coalesced per application, at most PASSES_AT_ONCE applications at
        a time; kube errors become kopf retries."""
        ticket = self._requested[key] = self._requested.get(key, 0) + 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self._served.get(key, 0) >= ticket and not resync:
                return
            async with self._pass_slots:
                started = self._requested[key]
                clock = time.monotonic()
                try:
                    await self._reconcile(key, resync=resync)
                except NamespaceTerminating:
                    log.debug("%s/%s: the namespace is being deleted; nothing to do", *key)
                except KubeError as exc:
                    self.metrics.reconciles.labels("error").inc()
                    delay = FORBIDDEN_RETRY_DELAY if exc.status == 403 else RETRY_DELAY
                    raise kopf.TemporaryError(f"{key[0]}/{key[1]}: {exc}", delay=delay) from exc
                finally:
                    self.metrics.reconcile_seconds.observe(time.monotonic() - clock)
            self.metrics.reconciles.labels("ok").inc()
            self._served[key] = started

    async def _reconcile(self, key: AppKey, *, resync: bool) -> None:
        namespace, name = key
        app = self.world.application(key)
        members = [self._as_written(r) for r in self.world.integrations(key)]
        if app is not None:
            app = self._as_written(app)
        if app is None or app.deleting:
            self._outcome.pop(key, None)
            await self._write_integrations(plan_missing_application(members, namespace, name))
            return

        notifications = notifications_of(app.spec)
        facts = await self._facts(app, members, notification_secret_names(notifications))
        plan = plan_application(
            app,
            members,
            claims=self.world.integrations_by_id,
            facts=facts,
            runtime=self.options.runtime,
        )
        if plan.deployed is not None:
            try:
                route = await self._apply(plan.deployed, resync=resync)
            except InvalidObject as exc:
                plan = invalid_application(app, members, exc.message)
            else:
                plan = with_route_problem(plan, route)
        self._outcome[key] = plan.condition
        notified = notifications_condition(notifications, facts.secret_keys)
        await self._write_statuses(plan, notified if plan.deployed is not None else None)

    # ------------------------------------------------------------------- facts

    async def _facts(
        self, app: ObjectRecord, members: Iterable[ObjectRecord], more_secrets: set[str]
    ) -> Facts:
        specs: dict[str, IntegrationSpec] = {}
        for record in members:
            parsed = parse_integration(record)
            if isinstance(parsed, IntegrationSpec):
                specs[record.uid] = parsed
        names = sorted(secret_names(specs.values()) | more_secrets)
        keys = await self._gather(self.api.secret_keys(app.namespace, n) for n in names)
        failures = {
            uid: failure
            for uid, failure in zip(
                specs,
                await self._gather(self._rewrite_failure(s) for s in specs.values()),
                strict=True,
            )
            if failure is not None
        }
        current: ApplicationConfig | None = None
        if failures:
            text = await self.api.read_config_json(app.namespace, config_map_name(app.name))
            if text is not None:
                try:
                    current = ApplicationConfig.from_json(text)
                except ValidationError:
                    current = None
        return Facts(
            secret_keys=dict(zip(names, keys, strict=True)),
            rewrite_failures=failures,
            current_config=current,
        )

    async def _rewrite_failure(self, spec: IntegrationSpec) -> str | None:
        digest = _rewrite_digest(spec)
        if digest is None:
            return None
        if digest in self._rewrite_results:
            self._rewrite_results.move_to_end(digest)
            return self._rewrite_results[digest]
        async with self._rewrite_slots:
            result = await asyncio.to_thread(_run_rewrite_tests, spec)
        self._rewrite_results[digest] = result
        while len(self._rewrite_results) > REWRITE_CACHE_SIZE:
            self._rewrite_results.popitem(last=False)
        return result

    # ------------------------------------------------------------------- children

    async def _apply(self, deployed: DeployedApplication, *, resync: bool) -> Condition | None:
        """Apply the children, delete the unwanted ones; why the HTTPRoute (if the application
        has one) does not carry webhooks yet, or None."""
        namespace = deployed.namespace
        if self.options.manage_runtime_rbac:
            await self._ensure_rbac(namespace, resync=resync)
        children = build_children(deployed)
        routes = [c for c in children if c["kind"] == HTTPROUTE_KIND]
        await self._gather(self._apply_child(deployed, c) for c in children if c not in routes)
        for api_version, kind, name in absent_children(deployed):
            self._forget((api_version, kind, namespace, name))
            if await self.api.delete_managed(api_version, kind, namespace, name, deployed.uid):
                why = "webhook disabled" if not deployed.webhook_enabled else "routing changed"
                self._event(deployed, False, "Deleted", f"Deleted {kind} {name}: {why}")
        problem = None
        for route in routes:  # after the receiver Service it points at
            problem = await self._apply_route(deployed, route)
        await self._apply_schedules(deployed)
        return problem

    async def _ensure_rbac(self, namespace: str, *, resync: bool) -> None:
        """The namespace's runtime RBAC (rbac.py): checked by the first pass in the namespace
        (and again by a resync), one pass at a time; what is already as desired is not
        written."""
        async with self._rbac_locks.setdefault(namespace, asyncio.Lock()):
            checked = self._rbac_checked.get(namespace)
            if checked is not None and (
                not resync or time.monotonic() - checked < self.options.resync_seconds / 2
            ):
                return
            for manifest in runtime_rbac_objects(namespace):  # ServiceAccount before its binding
                desired = with_digest(manifest)
                api_version, kind, _, name = child_key(desired)
                current = await self.api.get(api_version, kind, namespace, name)
                if current is None or not covers(current, desired):
                    await self.api.apply(desired)
            self._rbac_checked[namespace] = time.monotonic()

    async def _apply_route(
        self, deployed: DeployedApplication, route: Manifest
    ) -> Condition | None:
        """The HTTPRoute, applied; what its Gateways said of it (status.parents). Without the
        Gateway API CRDs the application says so and the rest keeps working; the resync
        tries again (kopf starts watching HTTPRoutes once their CRD appears)."""
        key = child_key(route)
        try:
            applied = await self._apply_child(deployed, route)
        except KindNotServed:
            self._forget(key)
            return gateway_api_not_installed(key[3])
        problem = route_problem(applied.body)
        self._route_verdicts[key] = problem
        return problem

    async def _current(self, key: ChildKey) -> dict[str, Any] | None:
        """The child as last seen on its watch, else as the API server has it (one that no
        longer carries our labels, say)."""
        seen = self.world.child(key)
        if seen is not None:
            return seen
        return await self.api.get(*key)

    def _forget(self, child: ChildKey) -> None:
        self._desired.pop(child, None)
        self._versions.pop(child, None)
        self._route_verdicts.pop(child, None)

    async def _apply_schedules(self, deployed: DeployedApplication) -> None:
        """`<integration>-poll` CronJobs (schedule_cronjobs.py): applied, pruned once unwanted."""
        await self._gather(self._apply_child(deployed, c) for c in build_poll_cronjobs(deployed))
        namespace, selector = deployed.namespace, poll_selector(deployed.name)
        existing = await self.api.list_names(CRONJOB_API_VERSION, CRONJOB_KIND, namespace, selector)
        for name in stale_poll_cronjobs(deployed, existing):
            self._forget((CRONJOB_API_VERSION, CRONJOB_KIND, namespace, name))
            if await self.api.delete_managed(
                CRONJOB_API_VERSION, CRONJOB_KIND, namespace, name, deployed.uid
            ):
                self._event(deployed, False, "Deleted", f"Deleted CronJob {name}: no schedule")

    async def _apply_child(self, deployed: DeployedApplication, manifest: Manifest) -> Applied:
        """Server-side apply, unless the child as last seen is already what we want (plan.
        with_digest): a pass that changes nothing writes nothing, also after a restart."""
        desired = with_digest(manifest)
        key = child_key(desired)
        before = self._versions.get(key)
        self._desired[key] = DesiredChild.of(desired)
        current = await self._current(key)
        if (
            current is not None
            and not (current.get("metadata") or {}).get("deletionTimestamp")
            and covers(current, desired)
        ):
            applied = Applied(body=current, created=False)
        else:
            applied = await self.api.apply(desired)
        self._versions[key] = applied.version
        kind, name = key[1], key[3]
        if applied.created:
            self._event(deployed, False, "Created", f"Created {kind} {name}")
        elif before is not None and before != applied.version:
            self._event(deployed, False, "Updated", f"Updated {kind} {name}")
        return applied

    def _event(
        self, deployed: DeployedApplication, warning: bool, reason: str, message: str
    ) -> None:
        ref = kube.reference(
            API_GROUP_VERSION, KIND_APPLICATION, deployed.namespace, deployed.name, deployed.uid
        )
        kube.post_event(ref, warning=warning, reason=reason, message=message)

    # ------------------------------------------------------------------- status

    async def _write_statuses(
        self, plan: ApplicationPlan, notifications: Condition | None = None
    ) -> None:
        """The application's status (Ready, and `NotificationsReady` while it has
        notifications: notifyevents.py) and its Integrations'."""
        now = now_rfc3339()
        record = plan.record
        status = application_status(plan, now)
        if notifications is not None:
            status["conditions"] = merge_condition(
                status["conditions"], notifications, generation=record.generation, now=now
            )
        else:
            status["conditions"] = [
                c for c in status["conditions"] if c.get("type") != CONDITION_NOTIFICATIONS_READY
            ]
        if status_patch_needed(record.status, status):
            await self._patch_status(KIND_APPLICATION, record, status)
            self._transition_event(KIND_APPLICATION, record, plan.condition)
            # An Event when notifications turn unsendable, and when they are fixed.
            known = find_condition(record.status.get("conditions"), CONDITION_NOTIFICATIONS_READY)
            if notifications is not None and (known is not None or not notifications.status):
                self._transition_event(KIND_APPLICATION, record, notifications)
        await self._write_integrations(plan.integrations, now)

    async def _write_integrations(
        self, plans: Iterable[IntegrationPlan], now: str | None = None
    ) -> None:
        moment = now or now_rfc3339()

        async def write(plan: IntegrationPlan) -> None:
            status = integration_status(plan, moment)
            if not status_patch_needed(plan.record.status, status):
                return
            record = plan.record
            async with self._status_slots:
                await self._patch_status(KIND_INTEGRATION, record, status)
            self._transition_event(KIND_INTEGRATION, record, plan.condition)

        await self._gather(write(p) for p in plans)

    async def _patch_status(self, kind: str, record: ObjectRecord, status: dict[str, Any]) -> None:
        await self.api.patch_status(API_GROUP_VERSION, kind, record.namespace, record.name, status)
        written = {k: v for k, v in {**record.status, **status}.items() if v is not None}
        self._written[record.uid] = (record.resource_version, written)
        self._written.move_to_end(record.uid)
        while len(self._written) > WRITTEN_STATUS_CACHE_SIZE:
            self._written.popitem(last=False)

    def _as_written(self, record: ObjectRecord) -> ObjectRecord:
        """The record with the status this operator patched over its version, while the watch
        has not delivered that patch yet: a pass in between plans from what is really there
        (else it would write the same status again, with a new transition time)."""
        written = self._written.get(record.uid)
        if written is None:
            return record
        version, status = written
        if version != record.resource_version:  # the index has caught up
            del self._written[record.uid]
            return record
        return replace(record, status=status)

    def _transition_event(self, kind: str, record: ObjectRecord, condition: Condition) -> None:
        """An Event when a condition's (Ready's, NotificationsReady's) status or reason
        changes."""
        old = find_condition(record.status.get("conditions"), condition.type)
        if (
            old
            and old.get("status") == condition.status_text
            and old.get("reason") == condition.reason
        ):
            return
        ref = kube.reference(API_GROUP_VERSION, kind, record.namespace, record.name, record.uid)
        warning = not condition.status and condition.reason not in QUIET_REASONS
        kube.post_event(ref, warning=warning, reason=condition.reason, message=condition.message)

    @staticmethod
    async def _gather(awaitables: Iterable[Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*awaitables))
