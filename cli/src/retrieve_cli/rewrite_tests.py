"""`retrieve test-rewrite FILE`: run an Integration's `rewrite.tests` examples locally.

The same sandbox and field mapping the operator runs before a rewrite goes live (DESIGN.md,
"Job and workflow contract"), for users' CI pipelines. Exit codes: 0 every example passed,
1 one failed, 2 the file is not a valid Integration manifest (or has no examples to run).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from pydantic import ValidationError

from retrieve_core.constants import KIND_INTEGRATION
from retrieve_core.manifests import ManifestError, format_validation_error, iter_manifests
from retrieve_core.models import IntegrationSpec
from retrieve_core.rewrite_examples import RewriteTestFailure, run_rewrite_tests

from .terminal import safe_text

EXIT_PASSED: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2


@dataclass(frozen=True)
class ExampleResult:
    integration: str
    name: str
    failure: RewriteTestFailure | None


def load_integrations(path: Path) -> list[tuple[str, IntegrationSpec]]:
    """Every Integration of the file (several YAML documents allowed), validated."""
    found: list[tuple[str, IntegrationSpec]] = []
    for manifest in iter_manifests([path]):
        if manifest.kind != KIND_INTEGRATION:
            continue
        try:
            spec = IntegrationSpec.model_validate(manifest.document.get("spec") or {})
        except ValidationError as exc:
            raise ManifestError(f"{manifest.label}: {format_validation_error(exc)}") from exc
        found.append((f"{manifest.namespace}/{manifest.name}", spec))
    if not found:
        raise ManifestError(f"{path}: no {KIND_INTEGRATION} found")
    return found


def run_examples(label: str, spec: IntegrationSpec) -> list[ExampleResult]:
    """Each example on its own, so every one gets a verdict even when names repeat."""
    if spec.rewrite is None:
        return []
    results: list[ExampleResult] = []
    for test in spec.rewrite.tests:
        single = spec.rewrite.model_copy(update={"tests": [test]})
        failures = run_rewrite_tests(single, spec.field_mapping)
        results.append(ExampleResult(label, test.name, failures[0] if failures else None))
    return results


def report(results: list[ExampleResult], out: TextIO) -> None:
    for result in results:
        # Names come from a file that may have come from anywhere: one line each, no escapes.
        title = f"{safe_text(result.integration)}: {safe_text(result.name)}"
        if result.failure is None:
            print(f"PASS  {title}", file=out)
            continue
        print(f"FAIL  {title}", file=out)
        for difference in result.failure.message.split("; "):
            print(f"      {safe_text(difference)}", file=out)
    failed = sum(1 for r in results if r.failure is not None)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)


def check_file(path: Path, out: TextIO, err: TextIO) -> int:
    try:
        integrations = load_integrations(path)
    except (ManifestError, OSError) as exc:
        print(f"error: {safe_text(str(exc))}", file=err)
        return EXIT_INVALID
    results: list[ExampleResult] = []
    for label, spec in integrations:
        results += run_examples(label, spec)
    if not results:
        print(f"error: {path}: no rewrite.tests examples to run", file=err)
        return EXIT_INVALID
    report(results, out)
    return EXIT_FAILED if any(r.failure is not None for r in results) else EXIT_PASSED


def run_test_rewrite(args: argparse.Namespace) -> int:
    return check_file(Path(args.file), sys.stdout, sys.stderr)
