"""Runtime configuration of one application, as receivers and workers consume it.

This is what the operator writes into the `<app>-config` ConfigMap (key `config.json`) and what dev
mode builds from a folder of manifests: the validated specs plus derived values (integration ids,
webhook host). It holds secret *references* only; secret values come from a `SecretStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from .keys import AppKeys
from .models import IntegrationSpec, RetrieveApplicationSpec, SecretKeyRef, webhook_host

CONFIG_MAP_KEY = "config.json"


class IntegrationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    spec: IntegrationSpec


class ApplicationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str
    name: str
    spec: RetrieveApplicationSpec
    integrations: tuple[IntegrationConfig, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        """Where the webhook is served: webhook-<app>.<domain>, or the Gateway route's
        `hostnames` when set; empty when the webhook is disabled."""
        webhook = self.spec.webhook
        if not webhook.enabled:
            return ()
        if webhook.gateway is not None and webhook.gateway.hostnames:
            return tuple(webhook.gateway.hostnames)
        assert webhook.domain is not None  # required while enabled (the model checks)
        return (webhook_host(self.name, webhook.domain),)

    @property
    def host(self) -> str | None:
        """The host of the integrations' URLs (the first of `hosts`)."""
        hosts = self.hosts
        return hosts[0] if hosts else None

    @property
    def keys(self) -> AppKeys:
        return AppKeys(self.namespace, self.name)

    def integration(self, integration_id: str) -> IntegrationConfig | None:
        for integration in self.integrations:
            if integration.id == integration_id:
                return integration
        return None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_defaults=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ApplicationConfig:
        return cls.model_validate_json(text)

    def secret_refs(self) -> set[tuple[str, str]]:
        refs: set[tuple[str, str]] = set()
        for integration in self.integrations:
            if integration.spec.verify:
                refs.update((r.name, r.key) for r in integration.spec.verify.secret_refs)
            if integration.spec.schedule:  # headers of the polled source (e.g. Authorization)
                for header in integration.spec.schedule.source.http.headers_from:
                    refs.add((header.secret_key_ref.name, header.secret_key_ref.key))
        for notification in self.spec.notifications:  # e.g. a chat webhook's Authorization
            for header in notification.headers_from:
                refs.add((header.secret_key_ref.name, header.secret_key_ref.key))
        return refs


@dataclass
class SecretStore:
    """Secret values by (namespace, secret name, key). Values never leave this object in logs."""

    values: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    def get(self, namespace: str, ref: SecretKeyRef) -> bytes | None:
        return self.values.get((namespace, ref.name, ref.key))

    def put_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        for stale in [k for k in self.values if k[0] == namespace and k[1] == name]:
            del self.values[stale]
        for key, value in data.items():
            self.values[(namespace, name, key)] = value

    def __repr__(self) -> str:  # never print values
        return f"SecretStore({len(self.values)} values)"
