"""The operator's settings: its options from the environment, and how kopf is configured.

kopf's storage lives under the project's API group (``retrievetl.com/…`` annotations and
finalizer), so kopf's defaults never become part of the public API. Peering: the chart runs
``retrieve operator --peering=<name>`` (mandatory peering, a ClusterKopfPeering or KopfPeering
object of that name) or ``--standalone``; with neither, kopf looks for a peering object named
``retrieve-operator`` and runs standalone when there is none. Each process takes a random
priority unless one is given, so among replicas exactly one (the highest) is active and the
others wait paused until its keep-alive stops (kopf pauses *all* operators of equal priority).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Final

import kopf

from retrieve_core.constants import API_GROUP, LABEL_MANAGED_BY, MANAGED_BY

from .builders import RuntimeDefaults
from .gateway import GATEWAY_API_VERSION, HTTPROUTE_PLURAL

DEFAULT_PEERING_NAME: Final = "retrieve-operator"
DEFAULT_RESYNC_SECONDS: Final = 60.0
DEFAULT_IMAGE_REPOSITORY: Final = "ghcr.io/retrievetl/retrieve-runtime"
FINALIZER: Final = f"{API_GROUP}/finalizer"
DIFFBASE_KEY: Final = "last-handled-configuration"
MAX_RANDOM_PRIORITY: Final = 1_000_000

ENV_RUNTIME_IMAGE: Final = "RETRIEVE_RUNTIME_IMAGE"
ENV_RUNTIME_IMAGE_PULL_POLICY: Final = "RETRIEVE_RUNTIME_IMAGE_PULL_POLICY"
ENV_DEFAULT_REDIS_URL: Final = "RETRIEVE_REDIS_URL"
ENV_MANAGE_RUNTIME_RBAC: Final = "RETRIEVE_MANAGE_RUNTIME_RBAC"
ENV_RESYNC_SECONDS: Final = "RETRIEVE_RESYNC_SECONDS"
ENV_PEERING_PRIORITY: Final = "RETRIEVE_PEERING_PRIORITY"
ENV_STATUS_INTERVAL_SECONDS: Final = "RETRIEVE_STATUS_INTERVAL_SECONDS"
ENV_OPERATOR_METRICS_PORT: Final = "RETRIEVE_OPERATOR_METRICS_PORT"
# The chart's gatewayApi.enabled: HTTPRoutes are in the operator's RBAC, so it may manage and
# watch them. Off: an application with spec.webhook.gateway is told so in its Ready condition.
ENV_GATEWAY_API: Final = "RETRIEVE_GATEWAY_API"
DEFAULT_STATUS_INTERVAL_SECONDS: Final = 15.0
DEFAULT_OPERATOR_METRICS_PORT: Final = 8082
LIST_CHUNK_SIZE: Final = 500

# The children the operator watches to repair drift: only its own (server-side selection).
CHILD_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
CHILD_RESOURCES: Final = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("networking.k8s.io/v1", "ingresses"),
    ("batch/v1", "cronjobs"),
    (GATEWAY_API_VERSION, HTTPROUTE_PLURAL),
)


def _version() -> str:
    try:
        return metadata.version("retrieve-webhooks")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed
        return "0.0.0"


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class OperatorOptions:
    runtime: RuntimeDefaults
    manage_runtime_rbac: bool = True
    resync_seconds: float = DEFAULT_RESYNC_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorOptions:
        source = os.environ if env is None else env
        pull_policy = source.get(ENV_RUNTIME_IMAGE_PULL_POLICY) or None
        runtime = RuntimeDefaults.model_validate(
            {
                "image": source.get(ENV_RUNTIME_IMAGE)
                or f"{DEFAULT_IMAGE_REPOSITORY}:{_version()}",
                "image_pull_policy": pull_policy,
                "redis_url": source.get(ENV_DEFAULT_REDIS_URL) or None,
                "gateway_api": gateway_api_enabled(source),
            }
        )
        return cls(
            runtime=runtime,
            manage_runtime_rbac=_flag(source.get(ENV_MANAGE_RUNTIME_RBAC), True),
            resync_seconds=resync_seconds(source),
        )


def gateway_api_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the operator manages (and watches) HTTPRoutes: RETRIEVE_GATEWAY_API."""
    source = os.environ if env is None else env
    return _flag(source.get(ENV_GATEWAY_API), False)


def resync_seconds(env: Mapping[str, str] | None = None) -> float:
    """How often every application is reconciled even when nothing was seen to change."""
    source = os.environ if env is None else env
    value = float(source.get(ENV_RESYNC_SECONDS) or DEFAULT_RESYNC_SECONDS)
    return max(5.0, value)


def status_interval_seconds(env: Mapping[str, str] | None = None) -> float:
    """How often each application's live counters are read from Redis into status."""
    source = os.environ if env is None else env
    value = float(source.get(ENV_STATUS_INTERVAL_SECONDS) or DEFAULT_STATUS_INTERVAL_SECONDS)
    return max(1.0, value)


def operator_metrics_port(env: Mapping[str, str] | None = None) -> int:
    """The port of the operator's Prometheus endpoint; 0 turns it off."""
    source = os.environ if env is None else env
    return int(source.get(ENV_OPERATOR_METRICS_PORT) or DEFAULT_OPERATOR_METRICS_PORT)


def configure(settings: kopf.OperatorSettings, env: Mapping[str, str] | None = None) -> None:
    source = os.environ if env is None else env

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key=DIFFBASE_KEY
    )
    settings.persistence.finalizer = FINALIZER

    # The CLI (--peering / --standalone / --priority) has set what it was given; fill the rest.
    if settings.peering.name == "default":
        settings.peering.name = DEFAULT_PEERING_NAME
    if settings.peering.priority == 0:
        given = source.get(ENV_PEERING_PRIORITY)
        settings.peering.priority = (
            int(given) if given else random.SystemRandom().randint(1, MAX_RANDOM_PRIORITY)
        )
    settings.peering.stealth = True  # no log line per keep-alive

    settings.posting.enabled = True
    # kopf would post every INFO log line of a handler ("Timer 'status' succeeded.") as an Event:
    # one per application every status interval. Our own Events are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.reporting_instance = source.get("POD_NAME") or socket.gethostname()
    settings.posting.event_name_prefix = f"{MANAGED_BY}-"

    for api_version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[api_version, plural] = CHILD_SELECTOR
    settings.watching.connect_timeout = 30
    # The initial listing in pages: thousands of Integrations (or Deployments) are never one
    # response held in memory at once (a restart's peak RSS).
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    # An object's worker (and the last body it saw) goes 1 s after its last event, not 5 s:
    # fewer bodies held at once when thousands of objects are listed or created.
    settings.queueing.idle_timeout = 1.0
    settings.watching.server_timeout = 600
    settings.networking.request_timeout = 60
