"""A rewrite's own examples (`spec.rewrite.tests`), run through rewrite + field mapping.

The operator runs them before it lets a new rewrite version reach the workers (Ready=False,
`RewriteTestFailed`, with the difference), and `retrieve test-rewrite FILE` runs them locally.
Each example runs in a fresh sandbox context (`retrieve_core.sandbox`), so one example cannot leak
state into the next; differences are reported by JSON path (`data[0].total: expected ..., got ...`).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .job import Job
from .mapping import FieldMapping, MappingError, apply_mapping, compile_mapping
from .models import RewriteSpec, RewriteTest
from .sandbox import RewriteError, Sandbox, has_running_loop


@dataclass(frozen=True)
class RewriteTestFailure:
    name: str
    message: str

    def __str__(self) -> str:
        return f"test {self.name!r}: {self.message}"


_EXPECT_KEYS = {"jobStatus", "data", "message", "error"}


def _same(a: Any, b: Any) -> bool:
    """Equality of JSON values where true is not 1 and 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def json_differences(expected: Any, actual: Any, path: str = "", limit: int = 10) -> list[str]:
    """Readable differences between two JSON values, by path (`data[0].total: ...`)."""
    out: list[str] = []

    def walk(exp: Any, act: Any, where: str) -> None:
        if len(out) >= limit or _same(exp, act):
            return
        label = where or "value"
        if isinstance(exp, dict) and isinstance(act, dict):
            for key in exp:
                if key not in act:
                    out.append(f"{where}.{key}: expected {_show(exp[key])}, missing")
                else:
                    walk(exp[key], act[key], f"{where}.{key}")
            for key in act:
                if key not in exp and len(out) < limit:
                    out.append(f"{where}.{key}: not expected, got {_show(act[key])}")
            return
        if isinstance(exp, list) and isinstance(act, list):
            if len(exp) != len(act):
                out.append(f"{label}: expected {len(exp)} item(s), got {len(act)}: {_show(act)}")
                return
            for i, (x, y) in enumerate(zip(exp, act, strict=True)):
                walk(x, y, f"{where}[{i}]")
            return
        out.append(f"{label}: expected {_show(exp)}, got {_show(act)}")

    walk(expected, actual, path)
    return [line.lstrip(".") for line in out]


def _test_job_data(payload: Any) -> dict[str, Any]:
    job = Job(
        id="rewrite-test",
        integration_id="rewrite-test",
        application="rewrite-test",
        namespace="rewrite-test",
        received_at=0.0,
        source_ip="127.0.0.1",
        format="json",
        payload=payload,
    )
    return job.job_data()


def run_rewrite_tests(
    spec: RewriteSpec, field_mapping: Mapping[str, str] | None = None
) -> list[RewriteTestFailure]:
    """Blocking form of `check_rewrite_tests` (runs its own event loop, in a thread if needed)."""
    if not has_running_loop():
        return asyncio.run(check_rewrite_tests(spec, field_mapping))
    result: list[list[RewriteTestFailure]] = []

    def target() -> None:
        result.append(asyncio.run(check_rewrite_tests(spec, field_mapping)))

    thread = threading.Thread(target=target, name="rewrite-tests")
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("rewrite tests did not run")
    return result[0]


async def check_rewrite_tests(
    spec: RewriteSpec, field_mapping: Mapping[str, str] | None = None
) -> list[RewriteTestFailure]:
    """Runs each `rewrite.tests` example through rewrite + field mapping; [] when all pass.

    `expect` may hold `jobStatus`, `data` (the records after field mapping: a list when the
    function returned a list), `message`, and `error` (a substring of the error the function is
    expected to raise). Each test gets a fresh context, so one cannot leak state into the next.
    """
    if not spec.tests:
        return []
    try:
        mapping = compile_mapping(field_mapping or {})
    except MappingError as exc:
        return [RewriteTestFailure(t.name, str(exc)) for t in spec.tests]
    failures: list[RewriteTestFailure] = []
    async with Sandbox(max_contexts=1) as sandbox:
        for number, test in enumerate(spec.tests):
            failure = await _run_one_test(sandbox, f"rewrite-test:{number}", spec, test, mapping)
            if failure is not None:
                failures.append(failure)
    return failures


async def _run_one_test(
    sandbox: Sandbox, key: str, spec: RewriteSpec, test: RewriteTest, mapping: FieldMapping
) -> RewriteTestFailure | None:
    expect = test.expect
    unknown = sorted(set(expect) - _EXPECT_KEYS)
    if unknown:
        return RewriteTestFailure(
            test.name,
            f"unknown key(s) in expect: {', '.join(unknown)} "
            f"(use {', '.join(sorted(_EXPECT_KEYS))})",
        )
    try:
        result = await sandbox.run(key, spec, _test_job_data(test.input))
    except RewriteError as exc:
        if "error" in expect and str(expect["error"]) in exc.message:
            return None
        return RewriteTestFailure(test.name, exc.message)
    if "error" in expect:
        return RewriteTestFailure(
            test.name,
            f"expected an error containing {expect['error']!r}, got jobStatus {result.job_status}",
        )
    problems: list[str] = []
    if "jobStatus" in expect and not _same(expect["jobStatus"], result.job_status):
        problems.append(
            f"jobStatus: expected {_show(expect['jobStatus'])}, got {result.job_status}"
        )
    if "message" in expect and expect["message"] != result.message:
        problems.append(
            f"message: expected {_show(expect['message'])}, got {_show(result.message)}"
        )
    if "data" in expect:
        try:
            data = apply_mapping(mapping, result.data)
        except MappingError as exc:
            problems.append(f"data: {exc}")
        else:
            problems.extend(json_differences(expect["data"], data, "data"))
    return RewriteTestFailure(test.name, "; ".join(problems)) if problems else None
