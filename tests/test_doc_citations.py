"""Every test the documentation cites as the backing of a promise exists.

README.md, SECURITY.md, docs/ and the chart's README name tests as `tests/x/test_y.py::test_z`,
or `test_y.py::test_z` for a file named just before. A renamed or deleted test would leave a
promise citing nothing; this fails naming the citation instead.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CITATION = re.compile(r"((?:tests/)?(?:[\w.-]+/)*test_\w+\.py)::(\w+)")


def documents() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found += sorted((ROOT / "charts").rglob("README.md"))
    return [path for path in found if path.is_file()]


@cache
def defined_tests(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


def resolve(cited: str) -> list[Path]:
    """The test files a citation can mean: its path, or every file of that name under tests/."""
    path = ROOT / cited if cited.startswith("tests/") else None
    if path is not None:
        return [path] if path.is_file() else []
    return sorted(p for p in TESTS.rglob(Path(cited).name) if p.as_posix().endswith(cited))


def citations() -> list[tuple[str, str, str]]:
    found = []
    for document in documents():
        text = document.read_text()
        for match in CITATION.finditer(text):
            found.append((document.relative_to(ROOT).as_posix(), match.group(1), match.group(2)))
    return found


def test_the_documents_cite_tests() -> None:
    assert len(citations()) >= 50  # the pattern still finds what the documents write


@pytest.mark.parametrize(
    ("document", "cited", "name"),
    [pytest.param(*c, id=f"{c[0]}:{c[1]}::{c[2]}") for c in citations()],
)
def test_a_cited_test_exists(document: str, cited: str, name: str) -> None:
    files = resolve(cited)
    assert files, f"{document} cites {cited}::{name}, and there is no such test file"
    assert any(name in defined_tests(path) for path in files), (
        f"{document} cites {cited}::{name}: no test of that name in "
        + ", ".join(p.relative_to(ROOT).as_posix() for p in files)
    )
