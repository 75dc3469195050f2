"""The served configuration compiled for the hot path, rebuilt when the provider's snapshot changes.

Whitelists, trusted proxies, signature schemes (with their secret values) and dedupe rules are
compiled once per config version, so a request does dictionary lookups and integer compares only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.keys import AppKeys
from retrieve_core.models import Preset
from retrieve_core.provider import ConfigSnapshot

from .ratelimit import Bucket
from .settings import ReceiverSettings
from .signatures import SIGNATURE_HEADERS, SignatureScheme, compile_scheme
from .whitelist import NetworkSet, Whitelist, compile_networks, compile_whitelist

log = logging.getLogger(__name__)

DEFAULT_DEDUPE_TTL = 86_400
HOST_LABEL_PREFIX = "webhook-"

# Provider delivery ids used as the dedupe key when a preset is set and spec.dedupe is not.
PRESET_DEDUPE_HEADERS: Mapping[Preset, str] = {
    Preset.SHOPIFY: "X-Shopify-Webhook-Id",
    Preset.WOOCOMMERCE: "X-WC-Webhook-Delivery-ID",
    Preset.GITHUB: "X-GitHub-Delivery",
    Preset.STANDARD_WEBHOOKS: "webhook-id",
}
PRESET_DEDUPE_FIELDS: Mapping[Preset, str] = {Preset.STRIPE: "id"}

# Request headers copied into jobs (lower case). Never credentials or signatures.
SELECTED_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "x-request-id",
        "x-shopify-topic",
        "x-shopify-shop-domain",
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-api-version",
        "x-shopify-triggered-at",
        "x-github-event",
        "x-github-delivery",
        "x-github-hook-id",
        "x-github-hook-installation-target-type",
        "x-github-hook-installation-target-id",
        "x-wc-webhook-topic",
        "x-wc-webhook-resource",
        "x-wc-webhook-event",
        "x-wc-webhook-id",
        "x-wc-webhook-delivery-id",
        "x-wc-webhook-source",
        "x-gitlab-event",
        "x-event-key",
        "x-event-type",
        "webhook-id",
        "webhook-timestamp",
    }
)
NEVER_COPIED = SIGNATURE_HEADERS | {"authorization", "proxy-authorization", "cookie"}
MAX_ADMITTED = 4096


@dataclass(frozen=True, slots=True)
class DedupeRule:
    header: str | None
    json_field: str | None
    ttl_seconds: int


@dataclass(frozen=True, slots=True, eq=False)
class AppRoute:
    config: ApplicationConfig
    keys: AppKeys
    whitelist: Whitelist
    trusted_proxies: NetworkSet
    max_body_bytes: int
    log_payload_bytes: int
    log_max_age_seconds: int
    log_max_records: int
    wait: tuple[int, int] = (0, 0)
    """`WAIT` (replicas, timeout ms) after each job (`spec.redis.durability`); 0: none."""
    admitted: dict[tuple[str | None, str | None], str] = field(default_factory=dict)
    """(TCP peer, X-Forwarded-For) -> sender, for senders the IP whitelist admitted: a repeat
    sender skips address parsing and matching. Lives as long as this routing (a config change
    builds a new one), bounded by `MAX_ADMITTED`."""

    def remember(self, peer: str | None, forwarded: str | None, sender: str) -> None:
        if len(self.admitted) >= MAX_ADMITTED:
            self.admitted.clear()
        self.admitted[peer, forwarded] = sender

    @property
    def label(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"


@dataclass(frozen=True, slots=True, eq=False)
class IntegrationRoute:
    app: AppRoute
    config: IntegrationConfig
    verify_required: bool
    scheme: SignatureScheme | None  # None with verify_required: misconfigured, fail closed
    dedupe: DedupeRule | None
    headers: frozenset[str]
    rate_limits: tuple[Bucket, ...] = ()
    """The application's bucket and the integration's, those configured (empty: no check)."""

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def enabled(self) -> bool:
        return self.config.spec.enabled


@dataclass(frozen=True, slots=True, eq=False)
class RoutingTable:
    snapshot: ConfigSnapshot
    apps: tuple[AppRoute, ...] = ()
    integrations: dict[str, IntegrationRoute] = field(default_factory=dict)
    hosts: dict[str, AppRoute] = field(default_factory=dict)
    host_labels: dict[str, AppRoute] = field(default_factory=dict)
    served_labels: frozenset[str] = frozenset()
    """`webhook-<app>` of every served application, and the first label of each host it is
    served at (a Gateway route's `hostnames`)."""

    @property
    def single_app(self) -> AppRoute | None:
        return self.apps[0] if len(self.apps) == 1 else None

    def app_for_host(self, host: str | None) -> AppRoute | None:
        """The served app a Host header names (`webhook-<app>.<domain>[:port]`), if any."""
        if not host or not self.hosts:
            return None
        name = _strip_port(host).lower().rstrip(".")
        found = self.hosts.get(name)
        if found is None and self.host_labels:
            found = self.host_labels.get(name.split(".", 1)[0])
        return found

    def names_other_app(self, host: str | None) -> bool:
        """Whether a Host header names an application this receiver does not serve
        (`webhook-<other>.<domain>`): DESIGN.md answers 404 to it, whatever the id."""
        if not host:
            return False
        label = _strip_port(host).lower().split(".", 1)[0]
        return label.startswith(HOST_LABEL_PREFIX) and label not in self.served_labels


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _compile_app(app: ApplicationConfig, settings: ReceiverSettings) -> AppRoute:
    spec = app.spec
    max_body = spec.receiver.max_body_bytes
    if "max_body_bytes" not in spec.receiver.model_fields_set:
        max_body = settings.default_max_body_bytes
    durability = spec.redis.durability
    return AppRoute(
        config=app,
        keys=app.keys,
        whitelist=compile_whitelist([*spec.allowed_list, *settings.extra_allowed]),
        trusted_proxies=compile_networks(spec.trusted_proxies),
        max_body_bytes=max_body,
        log_payload_bytes=spec.webhook_logs.payload_bytes,
        log_max_age_seconds=spec.webhook_logs.max_age_seconds,
        log_max_records=spec.webhook_logs.max_records,
        wait=(durability.replicas, durability.timeout_ms) if durability else (0, 0),
    )


def _dedupe_rule(integration: IntegrationConfig) -> DedupeRule | None:
    spec = integration.spec
    if spec.dedupe is not None and (spec.dedupe.header or spec.dedupe.json_field):
        return DedupeRule(spec.dedupe.header, spec.dedupe.json_field, spec.dedupe.ttl_seconds)
    if spec.verify is None:
        return None
    ttl = spec.dedupe.ttl_seconds if spec.dedupe is not None else DEFAULT_DEDUPE_TTL
    header = PRESET_DEDUPE_HEADERS.get(spec.verify.preset)
    json_field = PRESET_DEDUPE_FIELDS.get(spec.verify.preset)
    if header is None and json_field is None:
        return None
    return DedupeRule(header, json_field, ttl)


def _compile_integration(
    app: AppRoute, integration: IntegrationConfig, snapshot: ConfigSnapshot
) -> IntegrationRoute:
    spec = integration.spec
    dedupe = _dedupe_rule(integration)
    scheme: SignatureScheme | None = None
    if spec.verify is not None:
        secrets = [
            value
            for ref in spec.verify.secret_refs
            if (value := snapshot.secrets.get(app.config.namespace, ref)) is not None
        ]
        if not secrets:
            log.error("integration %s: no secret value, every request is refused", integration.id)
        try:
            scheme = compile_scheme(
                spec.verify, secrets, spec.dedupe.header if spec.dedupe else None
            )
        except ValueError as exc:
            log.error("integration %s: spec.verify unusable (%s), every request is refused",
                      integration.id, exc)  # fmt: skip
    headers = set(SELECTED_HEADERS)
    if dedupe is not None and dedupe.header:
        headers.add(dedupe.header.lower())
    if scheme is not None:
        headers.discard(scheme.header.lower())
    return IntegrationRoute(
        app=app,
        config=integration,
        verify_required=spec.verify is not None,
        scheme=scheme,
        dedupe=dedupe,
        headers=frozenset(headers - NEVER_COPIED),
        rate_limits=_rate_limits(app, integration),
    )


def _rate_limits(app: AppRoute, integration: IntegrationConfig) -> tuple[Bucket, ...]:
    buckets: list[Bucket] = []
    if app.config.spec.rate_limit is not None:
        buckets.append(Bucket(app.keys.rate_limit("app"), app.config.spec.rate_limit))
    if integration.spec.rate_limit is not None:
        key = app.keys.rate_limit(f"int:{integration.id}")
        buckets.append(Bucket(key, integration.spec.rate_limit))
    return tuple(buckets)


def build_routing(snapshot: ConfigSnapshot, settings: ReceiverSettings) -> RoutingTable:
    apps: list[AppRoute] = []
    integrations: dict[str, IntegrationRoute] = {}
    hosts: dict[str, AppRoute] = {}
    labels: dict[str, list[AppRoute]] = {}
    served: set[str] = set()
    for app_config in snapshot.applications:
        if not app_config.spec.webhook.enabled:
            continue
        app = _compile_app(app_config, settings)
        apps.append(app)
        served.add(f"{HOST_LABEL_PREFIX}{app_config.name}")
        for host in app_config.hosts:  # a Gateway route may name other hosts than webhook-<app>
            hosts[host.lower()] = app
            served.add(host.lower().split(".", 1)[0])
        labels.setdefault(f"{HOST_LABEL_PREFIX}{app_config.name}", []).append(app)
        for integration in app_config.integrations:
            integrations[integration.id] = _compile_integration(app, integration, snapshot)
    # Dev mode: `webhook-<app>.localhost` names an app whatever the domain, when unambiguous.
    host_labels = {k: v[0] for k, v in labels.items() if len(v) == 1} if settings.dev_mode else {}
    return RoutingTable(snapshot, tuple(apps), integrations, hosts, host_labels, frozenset(served))
