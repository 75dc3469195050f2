"""The generated CRDs on a real API server: examples accepted, bad objects refused by field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube_control_plane import KubeTestCluster
from retrieve_core.models import RetrieveApplicationSpec

pytestmark = pytest.mark.kube

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_NAMES = ("retrieveapplications.retrievetl.com", "integrations.retrievetl.com")


@pytest.fixture(scope="module")
def crds_installed(kube_cluster: KubeTestCluster) -> KubeTestCluster:
    """The committed CRDs applied (idempotent: other modules may apply them too)."""
    kube_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds")
    )
    for name in (*CRD_NAMES, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return kube_cluster


def _application(namespace: str, name: str = "yourapp") -> dict[str, Any]:
    return {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "RetrieveApplication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "webhook": {"enabled": True, "domain": "retrievetl.com"},
            "allowedList": ["shopify.com", "203.0.113.0", "198.51.100.0/24", "2001:db8::/32"],
            "trustedProxies": ["10.0.0.0/8"],
            "redis": {"url": "redis://redis:6379/0"},
        },
    }


def _integration(namespace: str, name: str = "shopify-orders") -> dict[str, Any]:
    return {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "application": "yourapp",
            "integrationId": "507f1f77bcf86cd799439011",
            "verify": {"preset": "shopify", "secretRefs": [{"name": "shopify", "key": "secret"}]},
            "destinations": [{"name": "warehouse", "http": {"url": "https://w.example/orders"}}],
        },
    }


def _dry_run(cluster: KubeTestCluster, obj: dict[str, Any]) -> tuple[int, str]:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
    )
    return result.returncode, result.stdout + result.stderr


def test_crds_are_established_with_structural_schemas(crds_installed: KubeTestCluster) -> None:
    for name in CRD_NAMES:
        crd = json.loads(crds_installed.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
        assert "NonStructuralSchema" not in conditions, conditions


def test_every_example_manifest_is_accepted_by_the_api_server(
    crds_installed: KubeTestCluster,
) -> None:
    examples_dir = str(REPO_ROOT / "examples")
    try:
        _check_examples_apply(crds_installed, examples_dir)
    finally:
        # Leave no integration ids behind: they are unique in the cluster, and operators that
        # later tests start would reconcile these objects too.
        crds_installed.kubectl(
            "delete", "retrieveapplications,integrations", "--all", "-n", "shop", check=False
        )


def _check_examples_apply(cluster: KubeTestCluster, examples_dir: str) -> None:
    out = cluster.kubectl("apply", "-f", examples_dir).stdout
    examples = [
        doc
        for path in sorted((REPO_ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]
    for doc in examples:
        assert doc["metadata"]["name"] in out
    listed = cluster.kubectl("get", "retrieve", "-n", "shop", "-o", "name").stdout
    assert "retrieveapplication.retrievetl.com/yourapp" in listed
    assert "integration.retrievetl.com/shopify-orders" in listed


def test_server_applies_the_schema_defaults(
    crds_installed: KubeTestCluster,
    kube_namespace: str,
) -> None:
    integration = _integration(kube_namespace)
    integration["spec"]["verify"] = {
        "header": "X-Signature",
        "secretRefs": [{"name": "s", "key": "k"}],
    }
    crds_installed.kubectl("apply", "-f", "-", input=json.dumps(integration))
    stored = json.loads(
        crds_installed.kubectl(
            "get", "rint", "shopify-orders", "-n", kube_namespace, "-o", "json"
        ).stdout
    )
    assert stored["spec"]["enabled"] is True
    assert stored["spec"]["verify"]["preset"] == "generic"
    assert stored["spec"]["verify"]["toleranceSeconds"] == 300
    assert stored["spec"]["destinations"][0]["http"]["method"] == "POST"


def test_status_subresource_feeds_the_printer_columns(
    crds_installed: KubeTestCluster,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    crds_installed.kubectl("apply", "-f", "-", input=json.dumps(_integration(ns)))
    url = "https://webhook-yourapp.retrievetl.com/integration/507f1f77bcf86cd799439011"
    status = {
        "status": {
            "observedGeneration": 1,
            "webhookURL": url,
            "xmlWebhookURL": f"{url}/xml",
            "integrationId": "507f1f77bcf86cd799439011",
            "lastReceivedAt": "2026-11-28T01:02:03Z",
            "receivedLastHour": 42,
            "rejectedLastHour": 1,
            "failedLastHour": 0,
            "queueDepth": 3,
            "deadLetters": 7,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "message": "serving",
                    "lastTransitionTime": "2026-11-28T01:02:03Z",
                    "observedGeneration": 1,
                }
            ],
            "fromANewerOperator": {"kept": True},
        }
    }
    crds_installed.kubectl(
        "patch", "integration", "shopify-orders", "-n", ns, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    table = crds_installed.kubectl("get", "rint", "-n", ns).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "APPLICATION", "URL", "ENABLED", "READY", "RECEIVED", "REJECTED", "FAILED",
        "QUEUE", "DEAD", "LAST-RECEIVED", "AGE",
    ]  # fmt: skip
    row = table[1].split()
    assert row[:10] == [
        "shopify-orders", "yourapp", url, "true", "True", "42", "1", "0", "3", "7",
    ]  # fmt: skip
    assert re.fullmatch(r"\d+[smhdy][0-9smhdy]*", row[10]), row  # lastReceivedAt as an age
    stored = json.loads(
        crds_installed.kubectl("get", "rint", "shopify-orders", "-n", ns, "-o", "json").stdout
    )
    assert stored["status"]["fromANewerOperator"] == {"kept": True}

    # The main resource endpoint ignores status: users cannot forge it with kubectl apply.
    forged = _integration(ns)
    forged["status"] = {"queueDepth": 999}
    crds_installed.kubectl("apply", "-f", "-", input=json.dumps(forged))
    stored = json.loads(
        crds_installed.kubectl("get", "rint", "shopify-orders", "-n", ns, "-o", "json").stdout
    )
    assert stored["status"]["queueDepth"] == 3


def test_application_printer_columns(
    crds_installed: KubeTestCluster,
    kube_namespace: str,
) -> None:
    crds_installed.kubectl("apply", "-f", "-", input=json.dumps(_application(kube_namespace)))
    table = crds_installed.kubectl("get", "rapp", "-n", kube_namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "HOST", "INTEGRATIONS", "READY", "AGE"]


def _set(obj: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


_DELETE = object()

# (case id, kind, dotted path, value, substrings the API server's answer must contain)
INVALID: list[tuple[str, str, str, Any, tuple[str, ...]]] = [
    ("domain with scheme", "app", "spec.webhook.domain", "https://retrievetl.com",
     ("spec.webhook.domain", "lowercase DNS name")),
    ("domain in capitals", "app", "spec.webhook.domain", "RetrieveTL.com",
     ("spec.webhook.domain",)),
    ("enabled webhook without a domain", "app", "spec.webhook", {"enabled": True},
     ("spec.webhook.domain", "required while the webhook is enabled")),
    ("webhook enabled by default without a domain", "app", "spec.webhook", {},
     ("spec.webhook.domain", "required while the webhook is enabled")),
    ("allowedList entry neither IP, CIDR nor domain", "app", "spec.allowedList",
     ["shopify.com", "not a host!"],
     ("spec.allowedList[1]", "IPv4/IPv6 address, a CIDR or a domain name")),
    ("allowedList CIDR with a bad prefix", "app", "spec.allowedList", ["10.0.0.0/33"],
     ("spec.allowedList[0]",)),
    ("trustedProxies entry that is a domain", "app", "spec.trustedProxies", ["proxy.example"],
     ("spec.trustedProxies[0]", "IP address or a CIDR")),
    ("redis url and secretKeyRef together", "app", "spec.redis",
     {"url": "redis://r:6379/0", "secretKeyRef": {"name": "redis", "key": "url"}},
     ("spec.redis", "either url or secretKeyRef")),
    ("redis url of another scheme", "app", "spec.redis", {"url": "http://r:6379"},
     ("spec.redis.url",)),
    ("unknown field", "app", "spec.webhok", {"enabled": True},
     ('unknown field "spec.webhok"',)),
    ("gateway and ingressClassName together", "app", "spec.webhook",
     {"domain": "retrievetl.com", "ingressClassName": "traefik",
      "gateway": {"parentRefs": [{"name": "gw"}]}},
     ("spec.webhook.gateway", "either gateway (an HTTPRoute) or ingressClassName/tls")),
    ("gateway and an Ingress tls together", "app", "spec.webhook",
     {"domain": "retrievetl.com", "tls": {"secretName": "t"},
      "gateway": {"parentRefs": [{"name": "gw"}]}},
     ("spec.webhook.gateway", "TLS is configured on its listener")),
    ("gateway without parentRefs", "app", "spec.webhook.gateway", {"parentRefs": []},
     ("spec.webhook.gateway.parentRefs",)),
    ("gateway hostname with a wildcard", "app", "spec.webhook.gateway",
     {"parentRefs": [{"name": "gw"}], "hostnames": ["*.shop.example"]},
     ("spec.webhook.gateway.hostnames[0]",)),
    ("name too long for a host label", "app", "metadata.name", "a" * 56,
     ("metadata.name", "at most 55 characters")),
    ("integrationId with a space", "int", "spec.integrationId", "507f 1f77",
     ("spec.integrationId",)),
    ("integrationId too long", "int", "spec.integrationId", "a" * 65,
     ("spec.integrationId",)),
    ("generic verify without header", "int", "spec.verify",
     {"preset": "generic", "secretRefs": [{"name": "s", "key": "k"}]},
     ("spec.verify.header", "required when spec.verify.preset is generic")),
    ("verify with preset left to its generic default and no header", "int", "spec.verify",
     {"secretRefs": [{"name": "s", "key": "k"}]},
     ("spec.verify.header",)),
    ("verify with an unknown preset", "int", "spec.verify.preset", "paypal",
     ("spec.verify.preset", "Unsupported value")),
    ("verify without secretRefs", "int", "spec.verify", {"preset": "shopify"},
     ("spec.verify.secretRefs", "Required value")),
    ("duplicate destination names", "int", "spec.destinations",
     [{"name": "a", "http": {"url": "https://x.example"}},
      {"name": "a", "http": {"url": "https://y.example"}}],
     ("spec.destinations[1]", "Duplicate value")),
    ("destination URL that is not http(s)", "int", "spec.destinations",
     [{"name": "a", "http": {"url": "ftp://x.example"}}],
     ("spec.destinations[0].http.url",)),
    ("integration without application", "int", "spec.application", _DELETE,
     ("spec.application", "Required value")),
    ("unknown field in an integration", "int", "spec.retry.attempts", 3,
     ('unknown field "spec.retry.attempts"',)),
    ("batch of more than 1000 records", "int", "spec.destinations",
     [{"name": "a", "http": {"url": "https://x.example",
                             "batch": {"maxRecords": 1001, "maxWaitMs": 500}}}],
     ("spec.destinations[0].http.batch.maxRecords",)),
    ("batch without maxWaitMs", "int", "spec.destinations",
     [{"name": "a", "http": {"url": "https://x.example", "batch": {"maxRecords": 10}}}],
     ("spec.destinations[0].http.batch.maxWaitMs", "Required value")),
    ("batch waiting over a minute", "int", "spec.destinations",
     [{"name": "a", "http": {"url": "https://x.example",
                             "batch": {"maxRecords": 10, "maxWaitMs": 60001}}}],
     ("spec.destinations[0].http.batch.maxWaitMs",)),
    ("notification of an unknown event", "app", "spec.notifications",
     [{"name": "ops", "url": "https://h.example/x", "events": ["onFire"]}],
     ("spec.notifications[0].events[0]", "Unsupported value")),
    ("notification event listed twice", "app", "spec.notifications",
     [{"name": "ops", "url": "https://h.example/x", "events": ["deadLetter", "deadLetter"]}],
     ("spec.notifications[0].events[1]", "Duplicate value")),
    ("duplicate notification names", "app", "spec.notifications",
     [{"name": "ops", "url": "https://h.example/x", "events": ["deadLetter"]},
      {"name": "ops", "url": "https://h.example/y", "events": ["pollFailed"]}],
     ("spec.notifications[1]", "Duplicate value")),
    ("notification interval of 0 s", "app", "spec.notifications",
     [{"name": "ops", "url": "https://h.example/x", "events": ["deadLetter"],
       "minIntervalSeconds": 0}],
     ("spec.notifications[0].minIntervalSeconds",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "dotted", "value", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_object_is_refused_naming_the_field(
    crds_installed: KubeTestCluster,
    kube_namespace: str,
    kind: str,
    dotted: str,
    value: Any,
    expected: tuple[str, ...],
) -> None:
    base = _application(kube_namespace) if kind == "app" else _integration(kube_namespace)
    code, _ = _dry_run(crds_installed, base)
    assert code == 0, "the valid baseline must be accepted"
    code, answer = _dry_run(crds_installed, _set(base, dotted, value))
    assert code != 0, f"accepted: {dotted}={value!r}"
    for text in expected:
        assert text in answer, answer


def test_a_disabled_webhook_needs_no_domain(
    crds_installed: KubeTestCluster, kube_namespace: str
) -> None:
    app = _set(_application(kube_namespace), "spec.webhook", {"enabled": False})
    code, answer = _dry_run(crds_installed, app)
    assert code == 0, answer
    assert RetrieveApplicationSpec.model_validate(app["spec"]).webhook.domain is None


@pytest.mark.parametrize(
    "entries",
    [
        ["127.0.0.1", "::1", "shopify.com", "Shopify.COM", "2001:db8::/32", "198.51.100.7/24"],
        [],
    ],
)
def test_whitelist_entries_the_models_accept_are_accepted_by_the_server(
    crds_installed: KubeTestCluster,
    kube_namespace: str,
    entries: list[str],
) -> None:
    app = _set(_application(kube_namespace), "spec.allowedList", entries)
    code, answer = _dry_run(crds_installed, app)
    assert code == 0, answer
