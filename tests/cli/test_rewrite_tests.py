"""`retrieve test-rewrite FILE`: the real command on the shipped example and a broken copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "20-shopify-orders.yaml"


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retrieve_cli.main", "test-rewrite", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_shipped_shopify_example_passes_with_exit_code_0() -> None:
    result = _run(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  shop/shopify-orders: a single order becomes a list" in result.stdout
    assert "1 passed, 0 failed" in result.stdout


def test_a_broken_mapping_fails_with_exit_code_1_and_shows_the_difference(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("to_number(total_price)", "total_price"))
    result = _run(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  shop/shopify-orders: a single order becomes a list" in result.stdout
    assert 'data[0].total: expected 9.99, got "9.99"' in result.stdout


def test_every_document_of_a_multi_document_file_is_run(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    second = text.replace("name: shopify-orders", "name: shopify-orders-2").replace(
        "507f1f77bcf86cd799439011", "507f1f77bcf86cd799439012"
    )
    both = tmp_path / "both.yaml"
    both.write_text(text + "\n---\n" + second.replace("9.99}]", "10}]"))
    result = _run(both)
    assert result.returncode == 1
    assert "PASS  shop/shopify-orders: a single order becomes a list" in result.stdout
    assert "FAIL  shop/shopify-orders-2: a single order becomes a list" in result.stdout
    assert "data[0].total: expected 10, got 9.99" in result.stdout


@pytest.mark.parametrize(
    "content",
    [
        "kind: [\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "apiVersion: retrievetl.com/v1alpha1\nkind: Integration\nmetadata: {name: x}\n"
        "spec: {application: 'Not A Name'}\n",
    ],
    ids=["not-yaml", "no-integration", "invalid-spec"],
)
def test_an_invalid_file_exits_2_with_a_message(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = _run(path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    assert _run(tmp_path / "absent.yaml").returncode == 2


def test_a_test_name_with_terminal_escapes_is_printed_escaped_on_one_line(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(
        EXAMPLE.read_text().replace(
            "name: a single order becomes a list",
            'name: "a single order\\x1b]0;owned\\x07\\nPASS  forged: row"',
        )
    )
    result = _run(hostile)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("PASS")]
    assert lines == [
        "PASS  shop/shopify-orders: a single order\\x1b]0;owned\\x07\\nPASS  forged: row"
    ]
