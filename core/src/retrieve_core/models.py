"""Spec models of `RetrieveApplication` and `Integration` (DESIGN.md, "API group and resources").

These pydantic models are the single source of truth for the custom resources: dev mode, the
receiver, the worker and the operator validate with them, and the CRD schemas in `crds/` are
generated from them (`retrieve_operator.crds`). Field names are the camelCase names users write.
Each field's `kubectl explain` text is here too (`Field(description=...)`, or the docstring of the
field's model class), which is why this module runs past 500 lines: it is the one source of the
CRD schemas, and splitting the two resources' models apart would not make either easier to read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import jmespath
import jmespath.exceptions
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .constants import (
    DEFAULT_LOG_MAX_AGE_SECONDS,
    DEFAULT_LOG_MAX_RECORDS,
    DEFAULT_LOG_PAYLOAD_BYTES,
    DEFAULT_MAX_BODY_BYTES,
)
from .redisclient import REDIS_URL_PATTERN, parse_redis_url
from .scheduling.cron import check_cron

DOMAIN_PATTERN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
INTEGRATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"

MAX_ALLOWED_LIST = 1000
MAX_TRUSTED_PROXIES = 100
# Gateway API's own bounds on an HTTPRoute's parentRefs and hostnames.
MAX_GATEWAY_PARENTS = 32
MAX_GATEWAY_HOSTNAMES = 16

_DOMAIN_RE = re.compile(DOMAIN_PATTERN)


class SpecModel(BaseModel):
    """Base: camelCase names, unknown fields refused (a typo is an error, not a silent default)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def is_domain(value: str) -> bool:
    return bool(_DOMAIN_RE.match(value))


def parse_network_entry(
    entry: str,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An IP address or CIDR as a network, or None when the entry is not one."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def check_allowed_entry(entry: str) -> str:
    """A whitelist entry is an IPv4/IPv6 address, a CIDR, or a domain name."""
    value = entry.strip().lower()
    if parse_network_entry(value) is not None or is_domain(value):
        return value
    raise ValueError(f"{entry!r} is not an IP address, a CIDR or a domain name")


AllowedEntry = Annotated[str, Field(min_length=1, max_length=253)]


# ---------------------------------------------------------------- RetrieveApplication


class TLSSpec(SpecModel):
    """TLS for the host; with clusterIssuer, cert-manager issues the Secret."""

    secret_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    cluster_issuer: str | None = None


class GatewayParentRef(SpecModel):
    """A Gateway (gateway.networking.k8s.io) the webhook's HTTPRoute attaches to."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="the Gateway")
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="the Gateway's namespace; unset: the application's namespace (another "
        "namespace must admit the route: the listener's allowedRoutes)",
    )
    section_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="one listener of the Gateway (by name); unset: every listener that admits "
        "the route",
    )


class GatewaySpec(SpecModel):
    """Route the webhook host through Gateway API: an HTTPRoute <app>-webhook, not an Ingress."""

    parent_refs: list[GatewayParentRef] = Field(
        min_length=1, max_length=MAX_GATEWAY_PARENTS, description="the Gateways to attach to"
    )
    hostnames: list[Annotated[str, Field(pattern=DOMAIN_PATTERN, max_length=253)]] = Field(
        default_factory=list,
        max_length=MAX_GATEWAY_HOSTNAMES,
        description="host names of the route; unset: [webhook-<app>.<domain>]. The first one "
        "is the host of the integrations' URLs",
    )


WEBHOOK_DOMAIN_REQUIRED: Final = "spec.webhook.domain is required while the webhook is enabled"


class WebhookSpec(SpecModel):
    """The public endpoint: https://webhook-<name>.<domain>/integration/<id>."""

    enabled: bool = Field(
        default=True,
        description="When false the route (Ingress or HTTPRoute) and the receiver are removed.",
    )
    domain: str | None = Field(
        default=None,
        pattern=DOMAIN_PATTERN,
        max_length=253,
        description="host becomes webhook-<app>.<domain> (required while enabled)",
    )
    ingress_class_name: str | None = Field(
        default=None, description="IngressClass of the <name>-webhook Ingress."
    )
    tls: TLSSpec | None = None
    gateway: GatewaySpec | None = Field(
        default=None,
        description="Route through Gateway API: an HTTPRoute <name>-webhook attached to these "
        "Gateways instead of an Ingress (not with ingressClassName or tls: TLS is the Gateway "
        "listener's). Needs the operator's Gateway API support (chart value gatewayApi.enabled).",
    )

    @model_validator(mode="after")
    def _one_route_kind(self) -> WebhookSpec:
        if self.enabled and self.domain is None:
            raise ValueError(WEBHOOK_DOMAIN_REQUIRED)
        if self.gateway is not None and (self.ingress_class_name or self.tls is not None):
            raise ValueError(
                "set either gateway (an HTTPRoute) or ingressClassName/tls (an Ingress), not "
                "both; with a Gateway, TLS is configured on its listener"
            )
        return self


class SecretKeyRef(SpecModel):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", max_length=253)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class HeaderFromSecret(SpecModel):
    """A request header whose value is a Secret's key (e.g. Authorization), never inlined."""

    name: str = Field(pattern=HEADER_NAME_PATTERN)
    secret_key_ref: SecretKeyRef
    prefix: str = Field(default="", description='put before the value, e.g. "Bearer "')


class ComponentSpec(SpecModel):
    replicas: int = Field(default=2, ge=0, le=100)
    image: str | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)


class ReceiverSpec(ComponentSpec):
    """The <name>-receiver Deployment (HTTP endpoint)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=64 * 1024 * 1024)
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="receiver processes per pod, sharing the port (SO_REUSEPORT): one event "
        "loop uses one core, so a pod uses as many cores as it has processes; without a CPU "
        "request in resources, the pod requests one CPU per process",
    )


class WorkerSpec(ComponentSpec):
    """The <name>-worker Deployment (runs the workflows)."""

    concurrency: int = Field(default=16, ge=1, le=1024)


class RedisDurability(SpecModel):
    """Answer 200 only after Redis WAIT confirmed the job on that many replicas (else 503)."""

    replicas: int = Field(ge=1, le=16, description="replicas that must confirm each job")
    timeout_ms: int = Field(
        default=100, ge=1, le=1000, description="how long the receiver waits for them (ms)"
    )


class RedisSpec(SpecModel):
    """Where jobs, logs and counters live: url, or secretKeyRef to a Secret holding the URL.
    Unset: the Redis the chart installed. The scheme chooses the mode: redis://, rediss://,
    unix:// one server; redis+cluster://host:port[,host:port...] a Redis Cluster from those
    seeds; redis+sentinel://host:port[,host:port...]/<service>[/<db>] the primary the sentinels
    name (rediss+... for TLS)."""

    url: str | None = Field(default=None, pattern=REDIS_URL_PATTERN)
    secret_key_ref: SecretKeyRef | None = None
    durability: RedisDurability | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RedisSpec:
        if self.url and self.secret_key_ref:
            raise ValueError("set either url or secretKeyRef, not both")
        if self.url:
            parse_redis_url(self.url)  # ports, options: what the pattern cannot check
        return self


class WebhookLogsSpec(SpecModel):
    """Bounds of the per-application webhook log kept in Redis."""

    max_records: int = Field(default=DEFAULT_LOG_MAX_RECORDS, ge=10, le=10_000_000)
    max_age_seconds: int = Field(default=DEFAULT_LOG_MAX_AGE_SECONDS, ge=60)
    payload_bytes: int = Field(default=DEFAULT_LOG_PAYLOAD_BYTES, ge=0, le=16 * 1024 * 1024)


class RateLimitSpec(SpecModel):
    """A token bucket kept in Redis, so the limit holds across receiver replicas."""

    requests_per_second: float = Field(
        gt=0, le=1_000_000, description="tokens added per second (sustained rate)"
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="bucket size: requests allowed at once (default: ceil(requestsPerSecond))",
    )

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.requests_per_second))


class NotificationEvent(StrEnum):
    DEAD_LETTER = "deadLetter"  # a job's retries are spent; it went to the dead-letter stream
    REWRITE_ERROR = "rewriteError"  # a rewrite function threw or timed out
    POLL_FAILED = "pollFailed"  # a scheduled poll of spec.schedule failed
    REJECTED_BURST = "rejectedBurst"  # > rejectedBurstThreshold 401/403 answers in a minute


class NotificationSpec(SpecModel):
    """Where error events of the application's integrations are sent (best-effort)."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    url: str = Field(
        pattern=r"^https?://", max_length=2048, description="where messages are POSTed"
    )
    format: Literal["json", "slack"] = Field(
        default="json",
        description='json: {"event", "namespace", "application", "integration", '
        '"integrationId", "jobId", "error", "at", "count"}; slack: {"text": ...}',
    )
    events: list[NotificationEvent] = Field(
        min_length=1, max_length=4, description="the events that send a message"
    )
    min_interval_seconds: int = Field(
        default=300,
        ge=1,
        le=86_400,
        description="events of one kind for one integration within this interval are "
        "aggregated into one message (count)",
    )
    rejected_burst_threshold: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="rejectedBurst: more than this many 401/403 answers for one "
        "integration within a minute",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    headers_from: list[HeaderFromSecret] = Field(
        default_factory=list,
        max_length=16,
        description="request headers from Secrets (e.g. Authorization), never inlined",
    )

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[NotificationEvent]) -> list[NotificationEvent]:
        if len(value) != len(set(value)):
            raise ValueError("events must be unique")
        return value


MAX_NOTIFICATIONS = 16


class RetrieveApplicationSpec(SpecModel):
    """Desired state of one application's webhook ingestion."""

    webhook: WebhookSpec
    # Bounded so the API server can budget the CEL rules that check each entry.
    allowed_list: list[AllowedEntry] = Field(
        default_factory=list,
        max_length=MAX_ALLOWED_LIST,
        description="Who may send: IPv4/IPv6 addresses, CIDRs, or domain names (a domain "
        "admits senders whose forward-confirmed reverse DNS is the domain or a subdomain). "
        "An empty list admits nobody.",
    )
    trusted_proxies: list[AllowedEntry] = Field(
        default_factory=list,
        max_length=MAX_TRUSTED_PROXIES,
        description="Peers (IPs or CIDRs, e.g. the ingress controller) whose "
        "X-Forwarded-For is believed.",
    )
    receiver: ReceiverSpec = Field(default_factory=ReceiverSpec)
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    webhook_logs: WebhookLogsSpec = Field(default_factory=WebhookLogsSpec)
    rate_limit: RateLimitSpec | None = None
    notifications: list[NotificationSpec] = Field(
        default_factory=list,
        max_length=MAX_NOTIFICATIONS,
        description="error notifications (best-effort; sent by the workers)",
    )

    @field_validator("notifications")
    @classmethod
    def _unique_notifications(cls, value: list[NotificationSpec]) -> list[NotificationSpec]:
        names = [n.name for n in value]
        if len(names) != len(set(names)):
            raise ValueError("notification names must be unique")
        return value

    @field_validator("allowed_list")
    @classmethod
    def _allowed(cls, value: list[str]) -> list[str]:
        return [check_allowed_entry(v) for v in value]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for v in value:
            if parse_network_entry(v) is None:
                raise ValueError(f"{v!r} is not an IP address or a CIDR")
        return [v.strip() for v in value]


# ---------------------------------------------------------------- Integration


class Preset(StrEnum):
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"
    GITHUB = "github"
    STRIPE = "stripe"
    STANDARD_WEBHOOKS = "standard-webhooks"
    GENERIC = "generic"


class VerifySpec(SpecModel):
    """Signature check of each request (preset or generic HMAC scheme)."""

    preset: Preset = Preset.GENERIC
    secret_refs: list[SecretKeyRef] = Field(min_length=1, max_length=8)
    header: str | None = Field(default=None, pattern=HEADER_NAME_PATTERN)
    algorithm: Literal["hmac-sha1", "hmac-sha256", "hmac-sha512"] | None = None
    encoding: Literal["base64", "hex"] | None = None
    prefix: str | None = None
    signed_content: str | None = Field(default=None, min_length=1)
    timestamp_header: str | None = Field(default=None, pattern=r"^$|" + HEADER_NAME_PATTERN)
    tolerance_seconds: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _generic_needs_header(self) -> VerifySpec:
        if self.preset is Preset.GENERIC and not self.header:
            raise ValueError("preset 'generic' needs 'header' (where the signature is)")
        return self


class DedupeSpec(SpecModel):
    """Duplicate delivery detection: header or JSON field, and a TTL."""

    header: str | None = Field(default=None, pattern=HEADER_NAME_PATTERN)
    json_field: str | None = Field(default=None, min_length=1)
    ttl_seconds: int = Field(default=86_400, ge=1, le=30 * 86_400)


class RewriteTest(SpecModel):
    name: str = Field(min_length=1)
    input: Any = None
    expect: dict[str, Any]


class RewriteSpec(SpecModel):
    """JavaScript function body run on each job, with examples checked before it goes live."""

    javascript: str = Field(min_length=1, max_length=256 * 1024)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    memory_mib: int = Field(default=64, ge=8, le=1024)
    tests: list[RewriteTest] = Field(default_factory=list)


MAX_BATCH_RECORDS = 1000
MAX_BATCH_WAIT_MS = 60_000
DEFAULT_RECORD_ID_FIELD = "_retrieve_id"


class BatchSpec(SpecModel):
    """Records of one integration for this destination sent together as one JSON array."""

    # A batch is built by one worker process: records taken by two workers go in two batches.
    max_records: int = Field(ge=1, le=MAX_BATCH_RECORDS, description="records per request at most")
    max_wait_ms: int = Field(
        ge=0,
        le=MAX_BATCH_WAIT_MS,
        description="longest a record waits for its batch after its job was taken (ms)",
    )
    record_id_field: str = Field(
        default=DEFAULT_RECORD_ID_FIELD,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="field added to each object record with its stable id "
        '(<jobId>-<destination>-<index>); "" adds none',
    )


class HttpDestination(SpecModel):
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10, gt=0, le=300)
    batch: BatchSpec | None = Field(
        default=None,
        description="send records as JSON arrays, at most maxRecords per request, none waiting "
        "more than maxWaitMs (per worker process)",
    )


class Destination(SpecModel):
    name: str = Field(pattern=DNS_LABEL_PATTERN)
    http: HttpDestination


class RetrySpec(SpecModel):
    """Exponential backoff of failed jobs before they are dead-lettered."""

    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_seconds: float = Field(default=2, ge=0, le=3600)
    max_backoff_seconds: float = Field(default=300, ge=0, le=86_400)


def _check_jmespath(value: str | None) -> str | None:
    if value is not None:
        try:
            jmespath.compile(value)
        except jmespath.exceptions.JMESPathError as exc:
            raise ValueError(f"{value!r} is not a JMESPath expression: {exc}") from None
    return value


class PaginationSpec(SpecModel):
    """nextLink (JMESPath to the next page's URL) or pageParam (from startPage to an empty page)."""

    next_link: str | None = Field(default=None, min_length=1)
    page_param: str | None = Field(default=None, min_length=1)
    start_page: int = Field(default=1, ge=0)
    max_pages: int = Field(default=100, ge=1, le=10_000)

    _next_link = field_validator("next_link")(_check_jmespath)

    @model_validator(mode="after")
    def _one_kind(self) -> PaginationSpec:
        if (self.next_link is None) == (self.page_param is None):
            raise ValueError("set either nextLink or pageParam")
        return self


class HttpSourceSpec(SpecModel):
    """An HTTP GET of a JSON API, page by page."""

    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Literal request headers (no secrets here)."
    )
    headers_from: list[HeaderFromSecret] = Field(
        default_factory=list,
        max_length=16,
        description="Request headers whose values come from Secrets (e.g. Authorization).",
    )
    pagination: PaginationSpec | None = None
    items: str = Field(default="@", min_length=1, description="JMESPath to the list of items")
    id_field: str = Field(min_length=1, description="JMESPath to an item's id (the dedupe key)")
    since_param: str | None = Field(
        default=None, min_length=1, description="query parameter given the window start"
    )
    timeout_seconds: float = Field(default=30, gt=0, le=300)

    _paths = field_validator("items", "id_field")(_check_jmespath)


class ScheduleSourceSpec(SpecModel):
    http: HttpSourceSpec


class ScheduleSpec(SpecModel):
    """Poll a source on a cron schedule; new items become jobs (dedupe.jsonField = idField)."""

    # Run by a <name>-poll CronJob (`retrieve poll`). A webhook and a poll of the same item share
    # the dedupe key when spec.dedupe (jsonField or header) gives the value idField selects.

    cron: str = Field(min_length=1, max_length=100, description="5-field cron expression")
    source: ScheduleSourceSpec

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)


class IntegrationSpec(SpecModel):
    """One workflow of an application, reachable at
    https://webhook-<app>.<domain>/integration/<integrationId>."""

    application: str = Field(
        pattern=DNS_LABEL_PATTERN,
        description="Name of the RetrieveApplication in the same namespace.",
    )
    integration_id: str | None = Field(
        default=None,
        pattern=INTEGRATION_ID_PATTERN,
        description="Id in the URL; unset: derived from namespace/name, so a re-created "
        "object keeps its URL. Unique in the cluster.",
    )
    enabled: bool = Field(default=True, description="A disabled integration answers 409.")
    verify: VerifySpec | None = None
    dedupe: DedupeSpec | None = None
    rewrite: RewriteSpec | None = None
    field_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Output field -> JMESPath expression, applied to each record.",
    )
    destinations: list[Destination] = Field(
        default_factory=list, description="Where processed records are sent."
    )
    retry: RetrySpec = Field(default_factory=RetrySpec)
    rate_limit: RateLimitSpec | None = None
    schedule: ScheduleSpec | None = None

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return value


def derive_integration_id(namespace: str, name: str) -> str:
    """A stable id from namespace/name, so a GitOps re-create keeps the same URL (24 hex)."""
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:24]


def effective_integration_id(namespace: str, name: str, spec: IntegrationSpec) -> str:
    return spec.integration_id or derive_integration_id(namespace, name)


def webhook_host(app_name: str, domain: str) -> str:
    return f"webhook-{app_name}.{domain}"
