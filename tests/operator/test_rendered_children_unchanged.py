"""The Deployments and poll CronJobs render byte for byte as before (a change rolls every pod).

`golden/rendered_children.json` was written by the builders as they were before the receiver
and worker Deployments and the `<integration>-poll` CronJobs shared one pod-spec builder; each
case covers a branch of that pod spec (Redis from a Secret or the operator's default, pull
policy, images, resources, scheduling constraints, receiver processes, routes, schedules).
Only a deliberate change to the rendered objects may regenerate it:
`RETRIEVE_WRITE_GOLDEN=1 pytest tests/operator/test_rendered_children_unchanged.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.constants import ENV_REDIS_URL
from retrieve_core.models import (
    IntegrationSpec,
    RetrieveApplicationSpec,
    effective_integration_id,
)
from retrieve_operator.builders import DeployedApplication, RuntimeDefaults, build_children
from retrieve_operator.schedule_cronjobs import build_poll_cronjobs

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "rendered_children.json"
UID = "0b0e5b8e-1111-4222-8333-944445555666"
IMAGE = "registry.example/retrieve-runtime:1.2.3"
SCHEDULE = {
    "cron": "*/15 * * * *",
    "source": {"http": {"url": "https://shop.example/orders", "items": "orders", "idField": "id"}},
}
CONSTRAINTS = {
    "nodeSelector": {"pool": "ingest"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ingest"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app": "x"}},
                    },
                }
            ]
        }
    },
}


def _example_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def _integration(name: str, spec: dict[str, Any], namespace: str = "shop") -> IntegrationConfig:
    model = IntegrationSpec.model_validate(spec)
    return IntegrationConfig(
        id=effective_integration_id(namespace, name, model), name=name, spec=model
    )


def _app(
    spec: dict[str, Any],
    *,
    integrations: tuple[IntegrationConfig, ...] = (),
    runtime: RuntimeDefaults | None = None,
) -> DeployedApplication:
    config = ApplicationConfig(
        namespace="shop",
        name="yourapp",
        spec=RetrieveApplicationSpec.model_validate(spec),
        integrations=integrations,
    )
    return DeployedApplication(
        config=config, uid=UID, runtime=runtime or RuntimeDefaults(image=IMAGE)
    )


def _examples_app() -> DeployedApplication:
    docs = _example_documents()
    [app] = [d for d in docs if d["kind"] == "RetrieveApplication"]
    integrations = [
        _integration(d["metadata"]["name"], d["spec"]) for d in docs if d["kind"] == "Integration"
    ]
    # The examples name no Redis: the chart's, given to the operator as its default.
    runtime = RuntimeDefaults(image=IMAGE, redis_url="redis://retrieve-redis:6379/0")
    return _app(app["spec"], integrations=tuple(integrations), runtime=runtime)


def _cases() -> dict[str, DeployedApplication]:
    webhook = {"enabled": True, "domain": "retrievetl.com"}
    url = {"url": "redis://redis:6379/0"}
    scheduled = (
        _integration("orders", {"application": "yourapp", "schedule": SCHEDULE}),
        _integration(
            "paused-" + "x" * 60,
            {"application": "yourapp", "enabled": False, "schedule": SCHEDULE},
        ),
        _integration("webhook-only", {"application": "yourapp", "integrationId": "ABC123"}),
    )
    return {
        "examples": _examples_app(),
        "minimal": _app({"webhook": webhook, "redis": url}),
        "secret-redis-pull-policy-images-constraints": _app(
            {
                "webhook": {**webhook, "ingressClassName": "nginx"},
                "redis": {"secretKeyRef": {"name": "redis", "key": "url"}},
                "receiver": {
                    "replicas": 3,
                    "image": "registry.example/receiver:9",
                    "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}},
                    **CONSTRAINTS,
                },
                "worker": {
                    "replicas": 0,
                    "image": "registry.example/worker:9",
                    "concurrency": 64,
                    "resources": {"limits": {"cpu": 2, "memory": "1Gi"}},
                    **CONSTRAINTS,
                },
            },
            integrations=scheduled,
            runtime=RuntimeDefaults(image=IMAGE, image_pull_policy="Always"),
        ),
        "receiver-processes-without-cpu-request-tls": _app(
            {
                "webhook": {
                    **webhook,
                    "tls": {"secretName": "webhook-tls", "clusterIssuer": "letsencrypt"},
                },
                "redis": url,
                "receiver": {"processes": 4, "resources": {"requests": {"memory": "128Mi"}}},
            },
            integrations=scheduled,
        ),
        "receiver-processes-with-cpu-request": _app(
            {
                "webhook": webhook,
                "redis": url,
                "receiver": {"processes": 2, "resources": {"requests": {"cpu": "1"}}},
            }
        ),
        "operator-default-redis-durability": _app(
            {"webhook": webhook, "redis": {"durability": {"replicas": 1}}},
            runtime=RuntimeDefaults(
                image=IMAGE, image_pull_policy="IfNotPresent", redis_url="redis://default:6379"
            ),
        ),
        "webhook-disabled": _app(
            {"webhook": {**webhook, "enabled": False}, "redis": url}, integrations=scheduled
        ),
        "gateway-routed": _app(
            {
                "webhook": {
                    **webhook,
                    "gateway": {
                        "parentRefs": [{"name": "public", "namespace": "gw", "sectionName": "a"}],
                        "hostnames": ["hooks.example.com"],
                    },
                },
                "redis": url,
            },
            runtime=RuntimeDefaults(image=IMAGE, gateway_api=True),
        ),
    }


def render_all() -> dict[str, list[dict[str, Any]]]:
    """Every case's children and poll CronJobs, in the order the operator applies them."""
    return {name: build_children(app) + build_poll_cronjobs(app) for name, app in _cases().items()}


def _text(rendered: dict[str, list[dict[str, Any]]]) -> str:
    # No sort_keys: the key order is part of "byte-identical" (what kubectl and diffs show).
    return json.dumps(rendered, indent=1) + "\n"


def test_deployments_and_cronjobs_render_byte_for_byte_as_before_the_shared_pod_spec() -> None:
    text = _text(render_all())
    if os.environ.get("RETRIEVE_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_the_golden_cases_cover_both_pod_kinds_with_every_optional_pod_field() -> None:
    kinds = set()
    pods = []
    for manifests in render_all().values():
        for manifest in manifests:
            kinds.add(manifest["kind"])
            if manifest["kind"] == "Deployment":
                pods.append(manifest["spec"]["template"]["spec"])
            elif manifest["kind"] == "CronJob":
                pods.append(manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert {"Deployment", "CronJob", "Ingress", "HTTPRoute"} <= kinds
    for field in ("nodeSelector", "tolerations", "affinity", "restartPolicy"):
        assert any(field in pod for pod in pods), field
    containers = [pod["containers"][0] for pod in pods]
    assert any("imagePullPolicy" in c for c in containers)
    assert any("imagePullPolicy" not in c for c in containers)
    env_sources = {
        "valueFrom" if "valueFrom" in e else "value"
        for c in containers
        for e in c["env"]
        if e["name"] == ENV_REDIS_URL
    }
    assert env_sources == {"value", "valueFrom"}
