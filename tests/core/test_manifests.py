"""Dev mode reads the same manifests as `kubectl apply`; a bad one names file, object and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retrieve_core.manifests import ManifestError, load_directory
from retrieve_core.models import derive_integration_id

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

APP = """
apiVersion: retrievetl.com/v1alpha1
kind: RetrieveApplication
metadata: {name: shop, namespace: prod}
spec:
  webhook: {domain: example.com}
  allowedList: [127.0.0.1]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def integration(body: str, name: str = "orders") -> str:
    return f"""
apiVersion: retrievetl.com/v1alpha1
kind: Integration
metadata: {{name: {name}, namespace: prod}}
spec:
  application: shop
{body}
"""


def test_the_examples_load_with_their_integration_ids() -> None:
    (app,) = load_directory(REPO / "examples").applications
    assert (app.namespace, app.name, app.host) == (
        "shop",
        "yourapp",
        "webhook-yourapp.retrievetl.com",
    )
    assert {i.name: i.id for i in app.integrations} == {
        "shopify-orders": "507f1f77bcf86cd799439011",
        "legacy-xml-orders": "ABC123",
    }


def test_an_integration_without_an_id_gets_one_derived_from_namespace_and_name(
    tmp_path: Path,
) -> None:
    write(tmp_path, "app.yaml", APP)
    write(tmp_path, "int.yaml", integration(""))
    (app,) = load_directory(tmp_path).applications
    assert app.integrations[0].id == derive_integration_id("prod", "orders")
    assert derive_integration_id("prod", "orders") != derive_integration_id("other", "orders")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("  retry: {maxAttempts: 0}", "spec.retry.maxAttempts"),
        ("  retrys: {maxAttempts: 3}", "spec.retrys"),
        ("  integrationId: 'bad id!'", "spec.integrationId"),
        ("  verify: {preset: generic, secretRefs: [{name: s, key: k}]}", "spec.verify"),
    ],
)
def test_a_bad_integration_names_the_file_the_object_and_the_field(
    tmp_path: Path, body: str, expected: str
) -> None:
    write(tmp_path, "app.yaml", APP)
    bad = write(tmp_path, "int.yaml", integration(body))
    with pytest.raises(ManifestError) as error:
        load_directory(tmp_path)
    message = str(error.value)
    assert str(bad) in message
    assert "Integration prod/orders" in message
    assert expected in message


def test_a_bad_whitelist_entry_is_named(tmp_path: Path) -> None:
    bad = write(tmp_path, "app.yaml", APP.replace("[127.0.0.1]", "[127.0.0.1, 'not a host!']"))
    with pytest.raises(ManifestError) as error:
        load_directory(tmp_path)
    assert str(bad) in str(error.value)
    assert "RetrieveApplication prod/shop" in str(error.value)
    assert "spec.allowedList" in str(error.value)
    assert "'not a host!'" in str(error.value)


def test_an_integration_of_a_missing_application_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "int.yaml", integration(""))
    with pytest.raises(ManifestError, match=r"spec.application: RetrieveApplication prod/shop"):
        load_directory(tmp_path)


def test_two_integrations_with_one_id_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", APP)
    write(tmp_path, "a.yaml", integration("  integrationId: SAME1", "a"))
    write(tmp_path, "b.yaml", integration("  integrationId: SAME1", "b"))
    with pytest.raises(ManifestError, match=r"spec.integrationId: SAME1 is already used"):
        load_directory(tmp_path)


def test_a_missing_secret_is_named(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", APP)
    write(
        tmp_path,
        "int.yaml",
        integration("  verify: {preset: github, secretRefs: [{name: gh, key: secret}]}"),
    )
    with pytest.raises(ManifestError, match=r"Secret prod/gh with key 'secret' not found"):
        load_directory(tmp_path)


def test_retrieve_dev_reports_a_bad_manifest_in_one_line_and_exits_2(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", APP)
    write(tmp_path, "int.yaml", integration("  retry: {maxAttempts: 0}"))
    result = subprocess.run(
        [sys.executable, "-m", "retrieve_cli.main", "dev", "--config-dir", str(tmp_path),
         "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "spec.retry.maxAttempts" in result.stderr
    assert "Traceback" not in result.stderr
