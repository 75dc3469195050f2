"""One RetrieveApplication as the operator deploys it: the model every builder takes, and the
names of its children.

:class:`DeployedApplication` is the application's runtime config plus what the operator knows
about the object (its uid and the operator-wide runtime defaults), validated once so that the
builders (`builders`, `pod_spec`, `schedule_cronjobs`) stay plain functions of it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from retrieve_core.config import ApplicationConfig
from retrieve_core.models import ComponentSpec

# ------------------------------------------------------------------------------- names


def config_map_name(app: str) -> str:
    return f"{app}-config"


def receiver_name(app: str) -> str:
    return f"{app}-receiver"


def worker_name(app: str) -> str:
    return f"{app}-worker"


def ingress_name(app: str) -> str:
    return f"{app}-webhook"


def http_route_name(app: str) -> str:
    """The HTTPRoute has the Ingress's name: one of the two exists, never both."""
    return f"{app}-webhook"


# ------------------------------------------------------------------------------- models

# Kubernetes' resource.Quantity syntax (apimachinery/pkg/api/resource).
_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
_RESOURCE_SECTIONS = ("limits", "requests")


def check_resources(resources: dict[str, Any], where: str) -> None:
    """A container's `resources`: limits/requests of valid quantities (the API server would
    otherwise refuse the Deployment, on apply, with a conversion error)."""
    for section, values in resources.items():
        if section == "claims":
            continue
        if section not in _RESOURCE_SECTIONS or not isinstance(values, dict):
            raise ValueError(f"{where}.{section}: expected limits or requests (a mapping)")
        for name, quantity in values.items():
            text = str(quantity) if isinstance(quantity, int | float) else quantity
            if not isinstance(text, str) or not _QUANTITY.match(text):
                raise ValueError(f"{where}.{section}.{name}: {quantity!r} is not a quantity")


class RuntimeDefaults(BaseModel):
    """Operator-wide defaults for the runtime pods and the routing (from the operator's
    environment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    redis_url: str | None = None
    """Used when an application sets neither `spec.redis.url` nor `spec.redis.secretKeyRef`."""
    gateway_api: bool = False
    """The operator may manage HTTPRoutes (chart value gatewayApi.enabled: RBAC granted)."""


class DeployedApplication(BaseModel):
    """One RetrieveApplication as the operator deploys it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: ApplicationConfig
    uid: str
    runtime: RuntimeDefaults

    @model_validator(mode="after")
    def _valid_resources(self) -> DeployedApplication:
        for component in ("receiver", "worker"):
            spec: ComponentSpec = getattr(self.config.spec, component)
            check_resources(spec.resources, f"spec.{component}.resources")
        return self

    @model_validator(mode="after")
    def _has_redis(self) -> DeployedApplication:
        redis = self.config.spec.redis
        if not (redis.url or redis.secret_key_ref or self.runtime.redis_url):
            raise ValueError(
                "spec.redis: set url or secretKeyRef (the operator has no default Redis URL)"
            )
        return self

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def webhook_enabled(self) -> bool:
        return self.config.spec.webhook.enabled

    @property
    def gateway_routed(self) -> bool:
        """The webhook is routed by an HTTPRoute (spec.webhook.gateway), not an Ingress."""
        return self.config.spec.webhook.gateway is not None
