"""kopf registration only: every handler delegates to :class:`~.reconcile.Reconciler`.

Run with ``retrieve operator`` or ``kopf run -A -m retrieve_operator.handlers``.

Handlers:
- startup/cleanup: kopf settings (settings.py), the API client and the reconciler.
- indexes: RetrieveApplications by (namespace, name); Integrations by application and by id;
  the children as last seen. Each index function first drops the body's managedFields (kopf
  holds every listed body until everything is indexed: kopf_startup.py).
- RetrieveApplication: create/update/resume reconcile; a timer resyncs; deletion (event) tells
  its Integrations their application is gone.
- Integration: create/update/resume/deletion reconcile its application and every application
  with an Integration of the same id (the cluster-wide duplicate rule); a new value of the
  replay-dead-letters annotation requeues its dead letters once (status_refresh.py).
- RetrieveApplication status timer: its Integrations' live counters from Redis (status_refresh.py).
- Deployments, Services, ConfigMaps, Ingresses, CronJobs labelled as ours, and HTTPRoutes when
  the Gateway API support is on (RETRIEVE_GATEWAY_API): a change that undoes what was applied,
  a deletion, or a Gateway's new verdict on a route reconciles the owning application at once.
"""

from __future__ import annotations

from typing import Any

import kopf

from retrieve_core.constants import (
    API_GROUP,
    API_VERSION,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    PLURAL_APPLICATION,
    PLURAL_INTEGRATION,
    PRODUCT_NAME,
)

from . import kopf_startup, kube, plan
from .gateway import GATEWAY_API_VERSION, HTTPROUTE_PLURAL
from .kube import KubeApi
from .metrics import OperatorMetrics
from .plan import AppKey, ChildKey, ObjectRecord
from .reconcile import Reconciler, World
from .settings import (
    OperatorOptions,
    configure,
    gateway_api_enabled,
    operator_metrics_port,
    resync_seconds,
    status_interval_seconds,
)
from .status_refresh import StatusRefresher, replay_pending

kopf_startup.install()  # before the reactor starts: O(N) start-up at thousands of objects

APPLICATION = (API_GROUP, API_VERSION, PLURAL_APPLICATION)
INTEGRATION = (API_GROUP, API_VERSION, PLURAL_INTEGRATION)
CHILD_LABELS = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: PRODUCT_NAME}
RESYNC_SECONDS = resync_seconds()
STATUS_INTERVAL_SECONDS = status_interval_seconds()
# kopf passes each index to handlers as a keyword argument named by the index's id.
APPLICATIONS_INDEX = "retrieve_applications"
BY_APPLICATION_INDEX = "integrations_by_app"
BY_ID_INDEX = "integrations_by_id"
CHILDREN_INDEX = "retrieve_children"


def _reconciler(memo: Any) -> Reconciler:
    reconciler = memo["reconciler"]
    assert isinstance(reconciler, Reconciler)
    return reconciler


def _status_refresher(memo: Any) -> StatusRefresher:
    poller = memo["status_refresher"]
    assert isinstance(poller, StatusRefresher)
    return poller


def _key(namespace: str | None, name: str) -> AppKey:
    return (namespace or "", name)


# ----------------------------------------------------------------------------- operator


@kopf.on.startup()
async def start(*, settings: kopf.OperatorSettings, memo: Any, **indexes: Any) -> None:
    configure(settings)
    # kopf's indexes are live (filled from the watch streams); the reconciler reads them on
    # every pass.
    world = World(
        applications=indexes[APPLICATIONS_INDEX],
        integrations_by_app=indexes[BY_APPLICATION_INDEX],
        integrations_by_id=indexes[BY_ID_INDEX],
        children=indexes[CHILDREN_INDEX],
    )
    metrics = OperatorMetrics()
    metrics.serve(operator_metrics_port())
    memo["reconciler"] = Reconciler(
        KubeApi.login(settings), OperatorOptions.from_env(), world, metrics=metrics
    )
    memo["status_refresher"] = StatusRefresher(
        KubeApi.login(settings),
        world,
        default_redis_url=OperatorOptions.from_env().runtime.redis_url,
        metrics=metrics,
        interval=STATUS_INTERVAL_SECONDS,
    )


@kopf.on.login()
async def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
    # async: the session is made on the operator's loop (reading the kubeconfig is brief).
    return kube.kopf_session(settings)


@kopf.on.cleanup()
async def stop(*, memo: Any, **_: Any) -> None:
    await _reconciler(memo).close()
    await _status_refresher(memo).close()


# ----------------------------------------------------------------------------- indexes


# async: kopf runs a plain function in a thread pool, a cost per watch event.
@kopf.index(*APPLICATION, id=APPLICATIONS_INDEX)
async def index_application(*, body: kopf.Body, **_: Any) -> dict[AppKey, ObjectRecord]:
    kopf_startup.drop_managed_fields(body)
    return plan.index_application(body)


@kopf.index(*INTEGRATION, id=BY_APPLICATION_INDEX)
async def index_integration_by_application(
    *, body: kopf.Body, **_: Any
) -> dict[AppKey, ObjectRecord]:
    kopf_startup.drop_managed_fields(body)
    return plan.index_integration_by_application(body)


@kopf.index(*INTEGRATION, id=BY_ID_INDEX)
async def index_integration_by_id(*, body: kopf.Body, **_: Any) -> dict[str, ObjectRecord]:
    kopf_startup.drop_managed_fields(body)
    return plan.index_integration_by_id(body)


# A pass writes only the children that are not already as desired (reconcile.py); being an
# index, they are all known before the first pass after a restart.
@kopf.index("apps/v1", "deployments", labels=CHILD_LABELS, id=CHILDREN_INDEX)
@kopf.index("v1", "services", labels=CHILD_LABELS, id=CHILDREN_INDEX)
@kopf.index("v1", "configmaps", labels=CHILD_LABELS, id=CHILDREN_INDEX)
@kopf.index("networking.k8s.io/v1", "ingresses", labels=CHILD_LABELS, id=CHILDREN_INDEX)
@kopf.index("batch/v1", "cronjobs", labels=CHILD_LABELS, id=CHILDREN_INDEX)
async def index_child(*, body: kopf.Body, **_: Any) -> dict[ChildKey, str]:
    kopf_startup.drop_managed_fields(body)
    return plan.index_child(body)


# ----------------------------------------------------------------------------- applications


@kopf.on.resume(*APPLICATION, id="reconcile")
@kopf.on.create(*APPLICATION, id="reconcile")
@kopf.on.update(*APPLICATION, id="reconcile")
async def application_changed(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    await _reconciler(memo).application_changed(_key(namespace, name))


@kopf.timer(*APPLICATION, id="resync", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def application_resync(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    await _reconciler(memo).application_changed(_key(namespace, name), resync=True)


@kopf.timer(*APPLICATION, id="status", interval=STATUS_INTERVAL_SECONDS)
async def application_status_poll(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    await _status_refresher(memo).poll(_key(namespace, name))


def _deleted(*, type: str, **_: Any) -> bool:
    return type == "DELETED"


def _drifted(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> bool:
    return _reconciler(memo).drifted(type, body) is not None


@kopf.on.event(*APPLICATION, id="deleted", when=_deleted)
async def application_deleted(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    await _reconciler(memo).application_deleted(_key(namespace, name))


# ----------------------------------------------------------------------------- integrations


@kopf.on.create(*INTEGRATION, id="reconcile")
async def integration_created(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _reconciler(memo).integration_changed(plan.record_from_body(body))


@kopf.on.resume(*INTEGRATION, id="reconcile")
async def integration_resumed(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _reconciler(memo).integration_resumed(plan.record_from_body(body))


@kopf.on.update(*INTEGRATION, id="reconcile")
async def integration_updated(*, body: kopf.Body, old: Any, memo: Any, **_: Any) -> None:
    old_spec = dict((old or {}).get("spec") or {})
    await _reconciler(memo).integration_changed(plan.record_from_body(body), old_spec=old_spec)


@kopf.on.event(*INTEGRATION, id="deleted", when=_deleted)
async def integration_deleted(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _reconciler(memo).integration_changed(plan.record_from_body(body))


def _replay_pending(*, body: kopf.Body, **_: Any) -> bool:
    return replay_pending(body)


# kopf leaves annotations under its storage prefix (our API group) out of change detection, so
# a replay request is seen on the watch event; while it is pending (e.g. Redis down), a timer
# retries it.
@kopf.on.event(*INTEGRATION, id="replay", when=_replay_pending)
async def integration_replay(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _status_refresher(memo).replay_requested(body, retry_later=True)


@kopf.timer(*INTEGRATION, id="replay-retry", interval=STATUS_INTERVAL_SECONDS, when=_replay_pending)
async def integration_replay_retry(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _status_refresher(memo).replay_requested(body)


# ----------------------------------------------------------------------------- children


@kopf.on.event("apps/v1", "deployments", labels=CHILD_LABELS, id="drift", when=_drifted)
@kopf.on.event("v1", "services", labels=CHILD_LABELS, id="drift", when=_drifted)
@kopf.on.event("v1", "configmaps", labels=CHILD_LABELS, id="drift", when=_drifted)
@kopf.on.event("networking.k8s.io/v1", "ingresses", labels=CHILD_LABELS, id="drift", when=_drifted)
@kopf.on.event("batch/v1", "cronjobs", labels=CHILD_LABELS, id="drift", when=_drifted)
async def child_event(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    await _reconciler(memo).child_changed(type, body)


# Only with the RBAC to watch them (else kopf's watch would be refused). kopf starts the watch
# when the Gateway API CRDs appear, also after the operator started.
if gateway_api_enabled():
    kopf.index(GATEWAY_API_VERSION, HTTPROUTE_PLURAL, labels=CHILD_LABELS, id=CHILDREN_INDEX)(
        index_child
    )
    kopf.on.event(
        GATEWAY_API_VERSION, HTTPROUTE_PLURAL, labels=CHILD_LABELS, id="drift", when=_drifted
    )(child_event)
