"""What an application and its integrations should look like, decided from a snapshot of the
world (pure functions: no I/O, no kopf, no clock except the `now` passed in).

`reconcile.py` gathers the snapshot (kopf indexes of RetrieveApplications and Integrations, the
Secrets' keys, the rewrite-test results), calls :func:`plan_application`, applies the children
and writes the statuses this module computes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.constants import (
    API_GROUP,
    CONDITION_READY,
    REASON_APPLICATION_NOT_FOUND,
    REASON_DUPLICATE_INTEGRATION_ID,
    REASON_INTEGRATION_DISABLED,
    REASON_INVALID_SPEC,
    REASON_RECONCILED,
    REASON_REWRITE_TEST_FAILED,
    REASON_SECRET_NOT_FOUND,
    REASON_WEBHOOK_DISABLED,
)
from retrieve_core.manifests import format_validation_error
from retrieve_core.models import (
    IntegrationSpec,
    RetrieveApplicationSpec,
    derive_integration_id,
)

from .builders import DeployedApplication, RuntimeDefaults
from .conditions import Condition, merge_condition
from .gateway import describe_parent, gateway_api_disabled

# Not (yet) in retrieve_core.constants: an Integration whose application exists but is invalid.
REASON_APPLICATION_NOT_READY = "ApplicationNotReady"

AppKey = tuple[str, str]
"""(namespace, application name)"""
ChildKey = tuple[str, str, str, str]
"""(apiVersion, kind, namespace, name)"""

# On each child: a digest of the desired state it was applied with (see `with_digest`).
ANNOTATION_DESIRED_DIGEST = f"{API_GROUP}/desired-digest"


# ------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ObjectRecord:
    """What the operator remembers of one custom resource (the value of its kopf indexes)."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    created: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    deleting: bool = False
    resource_version: str = ""

    @property
    def key(self) -> AppKey:
        return (self.namespace, self.name)

    @property
    def application(self) -> str:
        """For an Integration: the name of its RetrieveApplication."""
        return str(self.spec.get("application") or "")

    @property
    def app_key(self) -> AppKey:
        return (self.namespace, self.application)

    @cached_property
    def integration_spec(self) -> IntegrationSpec | str:
        """For an Integration: its validated spec, or why it is invalid (validated once per
        record, that is once per version of the object, not on every pass)."""
        try:
            return IntegrationSpec.model_validate(self.spec)
        except ValidationError as exc:
            return format_validation_error(exc)


def record_from_body(body: Mapping[str, Any]) -> ObjectRecord:
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    return ObjectRecord(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        generation=int(generation) if generation is not None else None,
        created=str(meta.get("creationTimestamp") or ""),
        # Not deep copies: kopf never changes a body it parsed (a new version is a new body),
        # and while kopf holds every listed body at a restart, copies would double them.
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def integration_id_of(record: ObjectRecord) -> str:
    """The given `spec.integrationId`, else the id derived from namespace/name."""
    given = record.spec.get("integrationId")
    if isinstance(given, str) and given:
        return given
    return derive_integration_id(record.namespace, record.name)


# The values of the operator's kopf indexes (see handlers.py).


def index_application(body: Mapping[str, Any]) -> dict[AppKey, ObjectRecord]:
    record = record_from_body(body)
    return {record.key: record}


def index_integration_by_application(body: Mapping[str, Any]) -> dict[AppKey, ObjectRecord]:
    record = _shared_record(body)
    return {record.app_key: record}


def index_integration_by_id(body: Mapping[str, Any]) -> dict[str, ObjectRecord]:
    record = _shared_record(body)
    return {integration_id_of(record): record}


_last_record: list[ObjectRecord] = []


def _shared_record(body: Mapping[str, Any]) -> ObjectRecord:
    """One record for both Integration indexes (kopf calls them one after the other with the
    same version of the object): half the memory, and its spec validated once."""
    meta = body.get("metadata") or {}
    if _last_record:
        last = _last_record[0]
        if last.uid == meta.get("uid") and last.resource_version == meta.get("resourceVersion"):
            return last
    record = record_from_body(body)
    _last_record[:] = [record]
    return record


# ------------------------------------------------------------------------------- duplicates


def claim_order(record: ObjectRecord) -> tuple[str, str, str]:
    """Who keeps an id used twice: the older Integration (namespace/name breaks a tie)."""
    return (record.created, record.namespace, record.name)


def id_owner(claims: Iterable[ObjectRecord]) -> ObjectRecord | None:
    live = [claim for claim in claims if not claim.deleting]
    return min(live, key=claim_order) if live else None


def duplicate_of(
    record: ObjectRecord, claims: Mapping[str, Collection[ObjectRecord]]
) -> ObjectRecord | None:
    """The Integration that keeps this one's id, when it is another one."""
    owner = id_owner(claims.get(integration_id_of(record), ()))
    if owner is None or owner.uid == record.uid:
        return None
    return owner


# ------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Facts:
    """What the reconciler looked up for one pass."""

    secret_keys: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    """Secret name -> the keys it has; None when it does not exist."""
    rewrite_failures: Mapping[str, str] = field(default_factory=dict)
    """Integration uid -> why its rewrite tests failed (absent: passed or none)."""
    current_config: ApplicationConfig | None = None
    """The ConfigMap's config as it is now: where the last passing versions are kept."""


def missing_secrets(
    spec: IntegrationSpec, secret_keys: Mapping[str, frozenset[str] | None]
) -> list[str]:
    problems: list[str] = []
    for ref in spec.verify.secret_refs if spec.verify else ():
        keys = secret_keys.get(ref.name)
        if keys is None:
            problems.append(f"Secret {ref.name} not found")
        elif ref.key not in keys:
            problems.append(f"Secret {ref.name} has no key {ref.key!r}")
    return problems


def secret_names(specs: Iterable[IntegrationSpec]) -> set[str]:
    return {ref.name for spec in specs if spec.verify for ref in spec.verify.secret_refs}


def parse_integration(record: ObjectRecord) -> IntegrationSpec | str:
    """The validated spec, or why it is invalid."""
    return record.integration_spec


# ------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class IntegrationPlan:
    record: ObjectRecord
    integration_id: str
    condition: Condition
    entry: IntegrationConfig | None = None
    """What goes into the ConfigMap (None: left out)."""
    webhook_url: str | None = None

    @property
    def xml_webhook_url(self) -> str | None:
        return f"{self.webhook_url}/xml" if self.webhook_url else None


@dataclass(frozen=True)
class ApplicationPlan:
    record: ObjectRecord
    condition: Condition
    integrations: tuple[IntegrationPlan, ...]
    deployed: DeployedApplication | None = None
    """None when the application is invalid: its children are left as they are."""
    webhook_host: str | None = None
    summary: str = ""
    """What the Ready message says of the integrations (`2 integration(s), ...`)."""


def _ready(ok: bool, reason: str, message: str) -> Condition:
    return Condition(CONDITION_READY, ok, reason, message)


def plan_missing_application(
    integrations: Iterable[ObjectRecord], namespace: str, application: str
) -> list[IntegrationPlan]:
    message = f"RetrieveApplication {namespace}/{application} not found"
    return [
        IntegrationPlan(
            record=record,
            integration_id=integration_id_of(record),
            condition=_ready(False, REASON_APPLICATION_NOT_FOUND, message),
        )
        for record in integrations
    ]


def _integration_url(host: str | None, integration_id: str) -> str | None:
    return f"https://{host}/integration/{integration_id}" if host else None


def plan_integration(
    record: ObjectRecord,
    *,
    host: str | None,
    claims: Mapping[str, Collection[ObjectRecord]],
    facts: Facts,
) -> IntegrationPlan:
    """One Integration of an existing, valid application. `host` is None: webhook disabled."""
    integration_id = integration_id_of(record)
    parsed = parse_integration(record)
    if isinstance(parsed, str):
        return IntegrationPlan(record, integration_id, _ready(False, REASON_INVALID_SPEC, parsed))

    owner = duplicate_of(record, claims)
    if owner is not None:
        message = (
            f"integrationId {integration_id} is already used by Integration "
            f"{owner.namespace}/{owner.name}, created earlier; this one is not served"
        )
        return IntegrationPlan(
            record, integration_id, _ready(False, REASON_DUPLICATE_INTEGRATION_ID, message)
        )

    url = _integration_url(host, integration_id)
    entry: IntegrationConfig | None = IntegrationConfig(
        id=integration_id, name=record.name, spec=parsed
    )
    failure = facts.rewrite_failures.get(record.uid)
    if failure is not None:
        last = facts.current_config.integration(integration_id) if facts.current_config else None
        if last is not None and last.name == record.name:
            keeping = "; receivers and workers keep the last version that passed"
            entry = last
        else:
            keeping = "; no version has passed yet, so it is not served"
            entry = None
        message = f"rewrite tests failed: {failure}{keeping}"
        return IntegrationPlan(
            record,
            integration_id,
            _ready(False, REASON_REWRITE_TEST_FAILED, message),
            entry,
            url if entry else None,
        )

    problems = missing_secrets(parsed, facts.secret_keys)
    if problems:
        message = "; ".join(problems) + " (requests are refused until it exists)"
        condition = _ready(False, REASON_SECRET_NOT_FOUND, message)
    elif host is None:
        condition = _ready(
            False,
            REASON_WEBHOOK_DISABLED,
            f"the webhook of RetrieveApplication {record.namespace}/{parsed.application} "
            "is disabled",
        )
    elif not parsed.enabled:
        condition = _ready(
            False,
            REASON_INTEGRATION_DISABLED,
            f"disabled (spec.enabled: false): {url} answers 409",
        )
    else:
        condition = _ready(True, REASON_RECONCILED, f"receiving at {url}")
    return IntegrationPlan(record, integration_id, condition, entry, url)


def invalid_application(
    record: ObjectRecord, members: Iterable[ObjectRecord], reason: str
) -> ApplicationPlan:
    message = f"RetrieveApplication {record.namespace}/{record.name} is invalid: {reason}"
    return ApplicationPlan(
        record=record,
        condition=_ready(False, REASON_INVALID_SPEC, reason),
        integrations=tuple(
            IntegrationPlan(
                r, integration_id_of(r), _ready(False, REASON_APPLICATION_NOT_READY, message)
            )
            for r in members
        ),
    )


def plan_application(
    record: ObjectRecord,
    integrations: Iterable[ObjectRecord],
    *,
    claims: Mapping[str, Collection[ObjectRecord]],
    facts: Facts,
    runtime: RuntimeDefaults,
) -> ApplicationPlan:
    members = sorted((i for i in integrations if not i.deleting), key=lambda r: r.name)
    try:
        spec = RetrieveApplicationSpec.model_validate(record.spec)
    except ValidationError as exc:
        return invalid_application(record, members, format_validation_error(exc))

    probe = ApplicationConfig(namespace=record.namespace, name=record.name, spec=spec)
    host = probe.host
    plans = tuple(plan_integration(r, host=host, claims=claims, facts=facts) for r in members)
    config = probe.model_copy(
        update={"integrations": tuple(p.entry for p in plans if p.entry is not None)}
    )
    try:
        deployed = DeployedApplication(config=config, uid=record.uid, runtime=runtime)
    except ValidationError as exc:
        reason = "; ".join(item["msg"].removeprefix("Value error, ") for item in exc.errors())
        return invalid_application(record, members, reason)

    not_ready = [p for p in plans if not p.condition.status]
    summary = f"{len(plans)} integration(s)"
    if not_ready:
        summary += f", {len(not_ready)} not ready ({', '.join(p.record.name for p in not_ready)})"
    gateway = spec.webhook.gateway
    if host is None:
        condition = _ready(
            True, REASON_WEBHOOK_DISABLED, f"webhook disabled: no receiver or route; {summary}"
        )
    elif gateway is None:
        condition = _ready(True, REASON_RECONCILED, f"serving https://{host}; {summary}")
    elif not runtime.gateway_api:
        disabled = gateway_api_disabled()
        condition = replace(disabled, message=f"{disabled.message}; {summary}")
    else:
        parents = ", ".join(
            describe_parent({"name": r.name, "namespace": r.namespace or ""}, record.namespace)
            for r in gateway.parent_refs
        )
        condition = _ready(
            True, REASON_RECONCILED, f"serving https://{host} through {parents}; {summary}"
        )
    return ApplicationPlan(record, condition, plans, deployed, host, summary)


def with_route_problem(plan: ApplicationPlan, problem: Condition | None) -> ApplicationPlan:
    """The plan with the application's Ready condition saying why its HTTPRoute does not carry
    webhooks (gateway.py), when it does not."""
    if problem is None:
        return plan
    return replace(plan, condition=replace(problem, message=f"{problem.message}; {plan.summary}"))


# ------------------------------------------------------------------------------- status


def application_status(plan: ApplicationPlan, now: str) -> dict[str, Any]:
    record = plan.record
    return {
        "observedGeneration": record.generation,
        "webhookHost": plan.webhook_host,
        "integrations": len(plan.integrations),
        "conditions": merge_condition(
            record.status.get("conditions"), plan.condition, generation=record.generation, now=now
        ),
    }


def integration_status(plan: IntegrationPlan, now: str) -> dict[str, Any]:
    record = plan.record
    return {
        "integrationId": plan.integration_id,
        "webhookURL": plan.webhook_url,
        "xmlWebhookURL": plan.xml_webhook_url,
        "observedGeneration": record.generation,
        "conditions": merge_condition(
            record.status.get("conditions"), plan.condition, generation=record.generation, now=now
        ),
    }


def status_patch_needed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a merge patch of `desired` (None removes a field) would change `current`."""
    for key, value in desired.items():
        if value is None:
            if current.get(key) is not None:
                return True
        elif current.get(key) != value:
            return True
    return False


# ------------------------------------------------------------------------------- drift


def covers(actual: Any, desired: Any) -> bool:
    """Whether `actual` has every field of `desired` with the same value (server-side apply's
    view: fields set by the API server or by other managers are not drift). Lists of items
    with unique names match by name; other lists are atomic (an HTTPRoute's parentRefs name
    one Gateway once per listener: items told apart by more than their name)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and covers(actual[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list):
            return False
        if desired and all(isinstance(d, Mapping) and "name" in d for d in desired):
            wanted, present = _by_name(desired), _by_name(actual)
            if wanted is not None and present is not None:
                return all(n in present and covers(present[n], d) for n, d in wanted.items())
        return len(actual) == len(desired) and all(
            covers(a, d) for a, d in zip(actual, desired, strict=True)
        )
    return bool(actual == desired)


def _by_name(items: list[Any]) -> dict[Any, Mapping[str, Any]] | None:
    """name -> item, of the items that have a name; None when two share one."""
    named = [item for item in items if isinstance(item, Mapping) and "name" in item]
    by_name = {item["name"]: item for item in named}
    return by_name if len(by_name) == len(named) else None


# ------------------------------------------------------------------------------- children


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    meta = manifest.get("metadata") or {}
    return (
        str(manifest.get("apiVersion")),
        str(manifest.get("kind")),
        str(meta.get("namespace")),
        str(meta.get("name")),
    )


def with_digest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest, annotated with a digest of itself.

    A child that `covers` this manifest needs no apply: it has every field we set, and its
    digest says it was applied with exactly this desired state, so no field we stopped setting
    lingers on it (a changed desired state changes the digest, and the apply removes the
    field). That is what lets a restarted operator converge without a single write.
    """
    material = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    meta = dict(manifest.get("metadata") or {})
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        ANNOTATION_DESIRED_DIGEST: hashlib.sha256(material.encode()).hexdigest()[:32],
    }
    return {**manifest, "metadata": meta}


def seen_child(body: Mapping[str, Any]) -> tuple[ChildKey, str]:
    """A child as the reconciler keeps it: JSON text (compact in memory, parsed when a pass
    needs it), without its managedFields."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    trimmed = {**body, "metadata": meta}
    return child_key(trimmed), json.dumps(trimmed, separators=(",", ":"))


def index_child(body: Mapping[str, Any]) -> dict[ChildKey, str]:
    """The value of the operator's kopf index of its children: each as last seen."""
    key, text = seen_child(body)
    return {key: text}
