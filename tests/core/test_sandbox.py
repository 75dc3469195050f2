"""The rewrite sandbox: limits, isolation, console capture, result shape, and rewrite tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrieve_core.models import IntegrationSpec, RewriteSpec, RewriteTest
from retrieve_core.rewrite_examples import json_differences, run_rewrite_tests
from retrieve_core.sandbox import (
    MAX_CONSOLE_LINES,
    RewriteError,
    RewriteResult,
    Sandbox,
    code_key,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def job_data(payload: Any) -> dict[str, Any]:
    return {"job": {"id": "j1", "data": {"data": payload, "headers": {}}}}


async def run(js: str, payload: Any = None, **limits: Any) -> Any:
    spec = RewriteSpec(javascript=js, **limits)
    async with Sandbox() as sandbox:
        return await sandbox.run(code_key("i", spec), spec, job_data(payload))


def example_integration() -> IntegrationSpec:
    manifest = yaml.safe_load((EXAMPLES / "20-shopify-orders.yaml").read_text())
    return IntegrationSpec.model_validate(manifest["spec"])


async def test_the_function_body_sees_job_data_and_its_result_comes_back() -> None:
    result = await run(
        "let p = jobData.job.data.data; return {jobStatus: 1, data: [p.a * 2], message: 'ok'};",
        {"a": 21},
    )
    assert (result.job_status, result.data, result.message) == (1, [42], "ok")


async def test_an_infinite_loop_times_out_and_the_context_is_recreated_usable() -> None:
    spec = RewriteSpec(
        javascript="if (jobData.job.data.data.spin) { while (true) {} }"
        " return {jobStatus: 1, data: jobData.job.data.data.n};",
        timeout_ms=2000,  # the loop still times out; the calls that must succeed have room
    )
    key = code_key("loop", spec)
    async with Sandbox() as sandbox:
        assert (await sandbox.run(key, spec, job_data({"n": 1}))).data == 1
        with pytest.raises(RewriteError) as caught:
            # The sandbox's own timeout ends the loop; wait_for only stops a hang.
            await asyncio.wait_for(sandbox.run(key, spec, job_data({"spin": True})), 30)
        assert caught.value.kind == "timeout"
        assert str(caught.value) == "rewrite function timed out after 2000 ms"
        assert sandbox.context_count == 0  # the timed-out context was thrown away
        assert (await sandbox.run(key, spec, job_data({"n": 2}))).data == 2
        assert sandbox.context_count == 1


async def test_in_a_batch_only_the_job_that_loops_times_out() -> None:
    spec = RewriteSpec(
        javascript="if (jobData.job.data.data.spin) { while (true) {} }"
        " return {jobStatus: 1, data: jobData.job.data.data.n};",
        timeout_ms=2000,  # the others, run again alone after the batch timed out, have room
    )
    key = code_key("batch", spec)
    async with Sandbox() as sandbox:
        payloads = [{"n": n, "spin": n == 3} for n in range(8)]
        results = await asyncio.gather(
            *(sandbox.run(key, spec, job_data(p)) for p in payloads), return_exceptions=True
        )
    assert [r.data if not isinstance(r, BaseException) else "timeout" for r in results] == [
        0,
        1,
        2,
        "timeout",
        4,
        5,
        6,
        7,
    ]
    assert isinstance(results[3], RewriteError)
    assert results[3].kind == "timeout"


async def test_a_huge_allocation_is_a_memory_error_not_a_crash() -> None:
    spec = RewriteSpec(
        javascript="if (jobData.job.data.data.hog) {"
        " let a = []; while (true) a.push({n: a.length}); }"
        " return {jobStatus: 1, data: 'fine'};",
        memory_mib=16,
        timeout_ms=10_000,
    )
    key = code_key("hog", spec)
    async with Sandbox() as sandbox:
        with pytest.raises(RewriteError) as caught:
            await sandbox.run(key, spec, job_data({"hog": True}))
        assert caught.value.kind == "memory"
        assert "memory limit of 16 MiB" in str(caught.value)
        assert (await sandbox.run(key, spec, job_data({}))).data == "fine"


TYPED = [
    "ArrayBuffer", "SharedArrayBuffer", "DataView", "Atomics", "Int8Array", "Uint8Array",
    "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array", "WebAssembly",
]  # fmt: skip


async def test_no_allocation_escapes_the_heap_limit_through_array_buffers() -> None:
    """Before: ArrayBuffer memory was outside the heap limit; a rewrite limited to 16 MiB
    filled 256 MiB of typed arrays and succeeded (issue 12, defect 2)."""
    spec = RewriteSpec(
        javascript="const kept = [];"
        " for (let i = 0; i < 16; i++) kept.push(new Uint8Array(16 * 1024 * 1024).fill(7));"
        " return {jobStatus: 1, data: kept.length};",
        memory_mib=16,
        timeout_ms=10_000,
    )
    async with Sandbox() as sandbox:
        with pytest.raises(RewriteError) as caught:
            await sandbox.run(code_key("buffers", spec), spec, job_data({}))
        assert caught.value.kind == "thrown"
        assert "Uint8Array is not defined" in str(caught.value)
        names = ", ".join(f"typeof {name}" for name in TYPED)
        result = await run(f"return {{jobStatus: 1, data: [{names}]}};")
        assert result.data == ["undefined"] * len(TYPED)


@pytest.mark.parametrize(
    "tamper",
    [
        "Array.prototype.join = () => 'x';",
        "Array.prototype.map = function () { return []; };",
        "JSON.stringify = () => '{}';",
        "Object.prototype.toJSON = function () { return 'owned'; };",
        "String = function () { return ''; };",
    ],
)
async def test_a_function_that_breaks_a_builtin_gets_a_clear_error_and_a_fresh_isolate(
    tamper: str,
) -> None:
    """Before: every later job of the integration failed with a JSONDecodeError."""
    spec = RewriteSpec(
        javascript=f"if (jobData.job.data.data.tamper) {{ {tamper} }}"
        " return {jobStatus: 1, data: [jobData.job.data.data.n]};"
    )
    key = code_key("tamper", spec)
    async with Sandbox() as sandbox:
        assert (await sandbox.run(key, spec, job_data({"n": 1}))).data == [1]
        with pytest.raises(RewriteError) as caught:
            await sandbox.run(key, spec, job_data({"n": 2, "tamper": True}))
        assert caught.value.kind == "tampered"
        assert str(caught.value) == (
            "rewrite function changed a built-in the sandbox relies on (JSON, Reflect, "
            "Array.prototype, String.prototype, or a toJSON on a prototype); "
            "its isolate was recycled"
        )
        for n in (3, 4):  # the next jobs run in a new isolate, unharmed
            assert (await sandbox.run(key, spec, job_data({"n": n}))).data == [n]
        # In a batch, only the job that breaks the isolate fails.
        payloads = [{"n": n, "tamper": n == 2} for n in range(5)]
        results = await asyncio.gather(
            *(sandbox.run(key, spec, job_data(p)) for p in payloads), return_exceptions=True
        )
        shown = [r.data if isinstance(r, RewriteResult) else getattr(r, "kind", r) for r in results]
        assert shown == [[0], [1], "tampered", [3], [4]]


async def test_the_loop_keeps_running_while_javascript_runs() -> None:
    spec = RewriteSpec(
        javascript="if (jobData.job.data.data.spin) { while (true) {} }"
        " return {jobStatus: 1, data: 1};",
        timeout_ms=2000,
    )
    key = code_key("ticks", spec)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with Sandbox() as sandbox:
        await sandbox.run(key, spec, job_data({}))  # the isolate made and compiled beforehand
        ticker = asyncio.create_task(tick())  # so only the ticks while JavaScript spins count
        try:
            with pytest.raises(RewriteError) as caught:
                await sandbox.run(key, spec, job_data({"spin": True}))
        finally:
            ticker.cancel()
    assert caught.value.kind == "timeout"
    assert ticks >= 5  # some 200 in the 2 s on an idle machine; none if the loop were blocked


async def test_no_network_file_or_process_access_is_available() -> None:
    result = await run(
        "return {jobStatus: 1, data: [typeof fetch, typeof require, typeof process,"
        " typeof XMLHttpRequest, typeof setTimeout, typeof WebAssembly, typeof Deno]};"
    )
    assert result.data == ["undefined"] * 7
    with pytest.raises(RewriteError, match="ReferenceError: require is not defined"):
        await run("const fs = require('fs'); return {jobStatus: 1, data: fs.readFileSync('/')};")
    with pytest.raises(RewriteError, match="fetch is not defined"):
        await run("fetch('http://example.com'); return {jobStatus: 1, data: 1};")


async def test_console_output_is_captured_and_bounded() -> None:
    result = await run(
        "console.log('hello', {a: 1}, [2]); console.warn('careful'); console.error(new Error('x'));"
        "console.info('x'.repeat(5000));"
        "for (let i = 0; i < 500; i++) console.log(i);"
        "return {jobStatus: 1, data: null};"
    )
    assert result.console[:3] == ['hello {"a":1} [2]', "[warn] careful", "[error] Error: x"]
    assert result.console[3].startswith("[info] xxx")
    assert len(result.console[3]) < 2100
    assert len(result.console) == MAX_CONSOLE_LINES + 1
    assert result.console[-1] == "... 404 more console line(s) dropped"


async def test_console_lines_belong_to_their_own_call() -> None:
    spec = RewriteSpec(
        javascript="console.log('n=' + jobData.job.data.data);"
        " return {jobStatus: 1, data: jobData.job.data.data};"
    )
    async with Sandbox() as sandbox:
        results = await asyncio.gather(
            *(sandbox.run(code_key("c", spec), spec, job_data(n)) for n in range(20))
        )
    assert [r.console for r in results] == [[f"n={n}"] for n in range(20)]


async def test_job_status_0_is_a_result_with_its_message() -> None:
    result = await run("return {jobStatus: 0, message: 'not for us'};")
    assert (result.job_status, result.message, result.data) == (0, "not for us", None)


@pytest.mark.parametrize(
    ("js", "expected"),
    [
        ("return {data: [1]};", "without jobStatus"),
        ("let x = 1;", "returned undefined"),
        ("return [1, 2];", "must return an object"),
        ("return {jobStatus: 2, data: []};", "jobStatus 2 (expected 1 or 0)"),
        ("return {jobStatus: true, data: []};", "jobStatus true"),
        ("return {jobStatus: 1};", "jobStatus 1 without data"),
        ("return {jobStatus: 1, data: 10n};", "not JSON"),
    ],
)
async def test_a_bad_return_shape_is_a_readable_error(js: str, expected: str) -> None:
    with pytest.raises(RewriteError) as caught:
        await run(js)
    assert caught.value.kind == "shape"
    assert expected in str(caught.value)


async def test_a_thrown_error_names_its_message_and_line() -> None:
    with pytest.raises(RewriteError) as caught:
        await run(
            "console.log('start');\nlet o = jobData.job.data.data;\nreturn o.missing.deeper;", {}
        )
    assert caught.value.kind == "thrown"
    assert str(caught.value) == (
        "rewrite function threw: TypeError: Cannot read properties of undefined "
        "(reading 'deeper') (line 3, column 18)"
    )
    assert caught.value.console == ["start"]


async def test_a_syntax_error_is_a_compile_error() -> None:
    with pytest.raises(RewriteError) as caught:
        await run("return {jobStatus: 1")
    assert caught.value.kind == "compile"
    assert "SyntaxError" in str(caught.value)


async def test_user_code_cannot_replace_the_console_or_the_entry_point() -> None:
    spec = RewriteSpec(
        javascript="try { console = null; } catch (e) {}"
        " try { globalThis.__retrieveRun = () => 'hijacked'; } catch (e) {}"
        " console.log('still here'); return {jobStatus: 1, data: 1};"
    )
    async with Sandbox() as sandbox:
        for _ in range(2):
            result = await sandbox.run(code_key("h", spec), spec, job_data(None))
            assert result.console == ["still here"]


async def test_a_new_code_version_replaces_the_old_context() -> None:
    first = RewriteSpec(javascript="return {jobStatus: 1, data: 'v1'};")
    second = RewriteSpec(javascript="return {jobStatus: 1, data: 'v2'};")
    async with Sandbox() as sandbox:
        assert (await sandbox.run(code_key("v", first), first, {})).data == "v1"
        assert (await sandbox.run(code_key("v", second), second, {})).data == "v2"
        assert sandbox.context_count == 1


def test_the_example_integration_rewrite_tests_pass() -> None:
    spec = example_integration()
    assert spec.rewrite is not None
    assert run_rewrite_tests(spec.rewrite, spec.field_mapping) == []


def test_a_wrong_expectation_gives_a_readable_difference() -> None:
    spec = example_integration()
    assert spec.rewrite is not None
    wrong = RewriteTest(
        name="wrong total",
        input={"order": {"id": 1, "email": "a@example.com", "total_price": "9.99"}},
        expect={
            "jobStatus": 1,
            "data": [{"order_id": 1, "customer_email": "a@example.com", "total": "9.99"}],
            "message": "Processed 2 orders",
        },
    )
    rewrite = spec.rewrite.model_copy(update={"tests": [wrong]})

    failures = run_rewrite_tests(rewrite, spec.field_mapping)

    assert [str(f) for f in failures] == [
        'test \'wrong total\': message: expected "Processed 2 orders", got "Processed 1 orders";'
        ' data[0].total: expected "9.99", got 9.99'
    ]


def test_rewrite_tests_report_errors_status_and_unknown_keys() -> None:
    rewrite = RewriteSpec(
        javascript="if (jobData.job.data.data.bad) throw new Error('bad input');"
        " return {jobStatus: jobData.job.data.data.skip ? 0 : 1, data: jobData.job.data.data};",
        tests=[
            RewriteTest(name="throws as expected", input={"bad": 1}, expect={"error": "bad input"}),
            RewriteTest(name="throws unexpectedly", input={"bad": 1}, expect={"jobStatus": 1}),
            RewriteTest(name="wrong status", input={"skip": True}, expect={"jobStatus": 1}),
            RewriteTest(name="typo", input={}, expect={"jobstatus": 1}),
            RewriteTest(name="no mapping", input={"a": 1}, expect={"data": {"a": 1}}),
        ],
    )

    failures = {f.name: f.message for f in run_rewrite_tests(rewrite, {})}

    assert failures == {
        "throws unexpectedly": "rewrite function threw: Error: bad input (line 1, column 38)",
        "wrong status": "jobStatus: expected 1, got 0",
        "typo": "unknown key(s) in expect: jobstatus (use data, error, jobStatus, message)",
    }


async def test_rewrite_tests_can_run_from_inside_an_event_loop() -> None:
    spec = example_integration()
    assert spec.rewrite is not None
    assert run_rewrite_tests(spec.rewrite, spec.field_mapping) == []


@pytest.mark.parametrize(
    ("expected", "actual", "differences"),
    [
        ({"a": 1}, {"a": 1.0}, []),
        ({"a": True}, {"a": 1}, ["a: expected true, got 1"]),
        ([1, 2], [1], ["value: expected 2 item(s), got 1: [1]"]),
        (
            {"a": {"b": 1}},
            {"a": {"c": 1}},
            ["a.b: expected 1, missing", "a.c: not expected, got 1"],
        ),
    ],
)
def test_json_differences_name_the_path(expected: Any, actual: Any, differences: list[str]) -> None:
    assert json_differences(expected, actual) == differences
