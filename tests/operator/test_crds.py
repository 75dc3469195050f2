"""The CRDs generated from the spec models: committed, structural, documented, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from retrieve_core.constants import KIND_APPLICATION, KIND_INTEGRATION
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_operator import crd_structural, crds, rbac

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_MODELS: dict[str, type[BaseModel]] = {
    KIND_APPLICATION: RetrieveApplicationSpec,
    KIND_INTEGRATION: IntegrationSpec,
}
FORBIDDEN_KEYWORDS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"}


def _schema_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node of an OpenAPI schema, with a readable path."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}.*")


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def _retrieve_crds() -> list[dict[str, Any]]:
    return [crds.application_crd(), crds.integration_crd()]


def _root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_and_chart_files_match_what_the_models_generate() -> None:
    stale = crds.stale_files(REPO_ROOT)
    assert not stale, "run `make crds`:\n" + "\n".join(diff for _, diff in stale)


def test_crd_chart_carries_the_same_bytes_as_the_crds_folder() -> None:
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        chart_copy = REPO_ROOT / "charts" / "retrieve-crds" / "files" / path.name
        assert chart_copy.read_bytes() == path.read_bytes(), path.name


def test_check_mode_reports_a_hand_edited_crd(tmp_path: Path) -> None:
    assert crds.main(["--root", str(tmp_path)]) == 0
    assert crds.main(["--root", str(tmp_path), "--check"]) == 0
    target = tmp_path / "crds" / "retrievetl.com_integrations.yaml"
    target.write_text(target.read_text() + "# edited\n")
    assert crds.main(["--root", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize(("label", "doc"), _example_documents(), ids=lambda v: str(v)[:60])
def test_every_example_manifest_validates_against_its_spec_model(
    label: str, doc: dict[str, Any]
) -> None:
    model = SPEC_MODELS.get(doc["kind"])
    if model is None:
        assert doc["kind"] in {"Namespace", "Secret"}, f"{label}: unexpected kind"
        return
    assert doc["apiVersion"] == "retrievetl.com/v1alpha1"
    model.model_validate(doc["spec"])


@pytest.mark.parametrize("crd", _retrieve_crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _schema_nodes(_root_schema(crd)):
        assert not FORBIDDEN_KEYWORDS & node.keys(), f"{path}: {FORBIDDEN_KEYWORDS & node.keys()}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None, f"{path}: null default"
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"


@pytest.mark.parametrize("crd", _retrieve_crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_every_spec_field_of_the_model_is_in_the_schema(crd: dict[str, Any]) -> None:
    model = SPEC_MODELS[crd["spec"]["names"]["kind"]]
    spec = _root_schema(crd)["properties"]["spec"]
    aliases = {field.alias or name for name, field in model.model_fields.items()}
    assert set(spec["properties"]) == aliases
    required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
    assert set(spec.get("required", [])) == required


def test_optional_model_fields_stay_optional_and_keep_their_defaults() -> None:
    spec = _root_schema(crds.integration_crd())["properties"]["spec"]
    assert "integrationId" not in spec["required"]
    assert spec["properties"]["enabled"]["default"] is True
    verify = spec["properties"]["verify"]
    assert verify["properties"]["preset"]["default"] == "generic"
    assert verify["properties"]["preset"]["enum"][-1] == "generic"
    timeout = spec["properties"]["destinations"]["items"]["properties"]["http"]["properties"][
        "timeoutSeconds"
    ]
    assert timeout == {
        "type": "number",
        "default": 10,
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 300,
    }


def test_open_maps_preserve_unknown_fields_and_string_maps_stay_typed() -> None:
    app_spec = _root_schema(crds.application_crd())["properties"]["spec"]["properties"]
    assert app_spec["receiver"]["properties"]["resources"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert app_spec["receiver"]["properties"]["nodeSelector"]["additionalProperties"] == {
        "type": "string"
    }
    rewrite_test = _root_schema(crds.integration_crd())["properties"]["spec"]["properties"][
        "rewrite"
    ]["properties"]["tests"]["items"]
    assert rewrite_test["properties"]["input"] == {"x-kubernetes-preserve-unknown-fields": True}


@pytest.mark.parametrize("crd", _retrieve_crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_every_cel_rule_names_its_field_and_runs_on_bounded_input(crd: dict[str, Any]) -> None:
    parents: dict[int, dict[str, Any]] = {}
    for _, node in _schema_nodes(_root_schema(crd)):
        if isinstance(node.get("items"), dict):
            parents[id(node["items"])] = node
    rules_seen = 0
    for path, node in _schema_nodes(_root_schema(crd)):
        for rule in node.get("x-kubernetes-validations", []):
            rules_seen += 1
            assert "spec." in rule["message"] or "metadata." in rule["message"], rule
            if node.get("type") == "string":
                assert "maxLength" in node, f"{path}: CEL on an unbounded string"
            if id(node) in parents:
                assert "maxItems" in parents[id(node)], f"{path}: CEL on an unbounded list"
    assert rules_seen >= 2


def test_application_crd_has_status_printer_columns_short_name_and_category() -> None:
    crd = crds.application_crd()
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "retrieveapplications.retrievetl.com"
    assert crd["spec"]["names"]["shortNames"] == ["rapp"]
    assert crd["spec"]["names"]["categories"] == ["retrieve"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Host": ".status.webhookHost",
        "Integrations": ".status.integrations",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Age": ".metadata.creationTimestamp",
    }


def test_integration_crd_printer_columns_show_url_readiness_and_counters() -> None:
    crd = crds.integration_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["rint"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Application",
        "URL",
        "Enabled",
        "Ready",
        "Received",
        "Rejected",
        "Failed",
        "Queue",
        "Dead",
        "Last-Received",
        "Age",
    ]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Rejected"] == ".status.rejectedLastHour"
    assert columns["Failed"] == ".status.failedLastHour"
    assert columns["Last-Received"] == ".status.lastReceivedAt"
    status = _root_schema(crd)["properties"]["status"]["properties"]
    for counter in ("receivedLastHour", "rejectedLastHour", "failedLastHour", "queueDepth"):
        assert status[counter]["type"] == "integer"
    assert {"webhookURL", "xmlWebhookURL", "integrationId", "lastReceivedAt", "deadLetters"} <= set(
        status
    )
    assert {"replayHandled", "observedGeneration", "conditions"} <= set(status)


def test_conditions_follow_the_api_conventions() -> None:
    for crd in _retrieve_crds():
        conditions = _root_schema(crd)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]["properties"]
        assert set(item) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        assert item["status"]["enum"] == ["True", "False", "Unknown"]


def test_a_union_that_is_not_optional_is_refused() -> None:
    class Ambiguous(BaseModel):
        value: int | str

    with pytest.raises(crd_structural.SchemaConversionError, match="anyOf"):
        crd_structural.structural_schema(Ambiguous)


@pytest.mark.parametrize("crd", _retrieve_crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_every_spec_field_is_documented_by_its_model(crd: dict[str, Any]) -> None:
    """kubectl explain text comes from the models (Field descriptions or class docstrings)."""
    spec = _root_schema(crd)["properties"]["spec"]
    assert spec.get("description")
    undocumented = [
        name for name, node in spec["properties"].items() if not node.get("description")
    ]
    assert not undocumented
    assert not hasattr(crds, "FIELD_DOCS")


def test_a_wrapped_class_docstring_is_one_line_of_kubectl_explain_text() -> None:
    class Wrapped(BaseModel):
        """First line
        and the second."""

        value: int = 0

    schema = crd_structural.structural_schema(Wrapped)
    assert schema["description"] == "First line and the second."


def test_kopf_peering_crds_are_kopf_dev_v1_cluster_and_namespaced() -> None:
    peering = {c["spec"]["names"]["kind"]: c for c in crds.kopf_peering_crds()}
    assert peering["ClusterKopfPeering"]["spec"]["scope"] == "Cluster"
    assert peering["KopfPeering"]["spec"]["scope"] == "Namespaced"
    assert {c["spec"]["group"] for c in peering.values()} == {"kopf.dev"}


def test_runtime_roles_only_read_configmaps_and_secrets_in_their_namespace() -> None:
    objects = rbac.runtime_rbac_objects("shop")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "retrieve-receiver"),
        ("Role", "retrieve-receiver"),
        ("RoleBinding", "retrieve-receiver"),
        ("ServiceAccount", "retrieve-worker"),
        ("Role", "retrieve-worker"),
        ("RoleBinding", "retrieve-worker"),
    ]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "shop"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "retrieve-operator"
        for rule in obj.get("rules", []):
            assert set(rule["verbs"]) == {"get", "list", "watch"}
            assert set(rule["resources"]) <= {"configmaps", "secrets"}
    binding = objects[2]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "retrieve-receiver", "namespace": "shop"}
    ]
    assert binding["roleRef"]["name"] == "retrieve-receiver"


def test_operator_never_writes_secrets_and_holds_what_runtime_roles_grant() -> None:
    rules = rbac.operator_rules()
    for rule in rules:
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) == {"get", "list", "watch"}
    # RBAC escalation check: the operator can only create the runtime Roles because it holds
    # every permission they grant.
    held = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for component in rbac.RUNTIME_COMPONENTS:
        for rule in rbac.runtime_rules(component):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert (group, resource, verb) in held


def _spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec: dict[str, Any] = schema["properties"]["spec"]
    return spec


def test_batch_bounds_and_notification_lists_are_checked_by_the_schema() -> None:
    integration = _spec_schema(crds.integration_crd())
    http = integration["properties"]["destinations"]["items"]["properties"]["http"]
    batch = http["properties"]["batch"]
    assert batch["required"] == ["maxRecords", "maxWaitMs"]
    assert batch["properties"]["maxRecords"]["minimum"] == 1
    assert batch["properties"]["maxRecords"]["maximum"] == 1000
    assert batch["properties"]["maxWaitMs"]["minimum"] == 0
    assert batch["properties"]["maxWaitMs"]["maximum"] == 60_000

    application = _spec_schema(crds.application_crd())
    notifications = application["properties"]["notifications"]
    assert notifications["x-kubernetes-list-type"] == "map"
    assert notifications["x-kubernetes-list-map-keys"] == ["name"]
    item = notifications["items"]
    assert item["properties"]["events"]["x-kubernetes-list-type"] == "set"
    assert item["properties"]["events"]["items"]["enum"] == [
        "deadLetter", "rewriteError", "pollFailed", "rejectedBurst",
    ]  # fmt: skip
    assert item["properties"]["format"]["enum"] == ["json", "slack"]
    assert item["properties"]["minIntervalSeconds"]["minimum"] == 1
    assert set(item["required"]) == {"name", "url", "events"}
