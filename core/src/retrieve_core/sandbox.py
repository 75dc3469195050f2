"""The rewrite-function sandbox (DESIGN.md, "Job and workflow contract").

A rewrite function is a JavaScript function *body* run with `jobData` in scope. It runs in a plain
V8 isolate (mini-racer): no module loader, no network, no file system (`require`, `fetch` and
`process` do not exist, and no Python function is ever exposed to it), under a time limit
(`timeoutMs`) and a heap limit (`memoryMiB`). `console.log/info/warn/error` are captured.
`ArrayBuffer` and the typed arrays do not exist either: their memory is outside V8's heap, where
the heap limit would not count it, so without them the limit bounds every allocation.

Creating an isolate costs ~50 ms, so one context per integration (and code version) is kept and
reused, with the user's function compiled once. A context that timed out, ran out of memory, or
whose function replaced a built-in the sandbox relies on (checked after every job: the job fails
with an error saying so) is thrown away and recreated on the next call. JavaScript runs on the
isolate's own thread, so the async API never blocks the event loop; calls to one context are
serialized, and jobs waiting for the same context are sent together in one call (each keeps its
own result, console and error).

A spec's own examples (`rewrite.tests`) are run by `retrieve_core.rewrite_examples`.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from py_mini_racer import JSEvalException, JSOOMException, JSTimeoutException, MiniRacer

from .models import RewriteSpec

MAX_CONSOLE_LINES = 100
MAX_CONSOLE_LINE_CHARS = 2000
MAX_RESULT_CHARS = 16 * 1024 * 1024
MAX_ERROR_CHARS = 2000
TAMPERED = "TAMPERED"
MSG_TAMPERED = (
    "rewrite function changed a built-in the sandbox relies on (JSON, Reflect, Array.prototype, "
    "String.prototype, or a toJSON on a prototype); its isolate was recycled"
)

RewriteErrorKind = Literal["thrown", "timeout", "memory", "shape", "compile", "tampered"]


class RewriteError(Exception):
    """The rewrite function did not produce a usable result (thrown, timed out, OOM, bad shape)."""

    def __init__(
        self, message: str, *, kind: RewriteErrorKind = "thrown", console: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.console = console or []


@dataclass(frozen=True)
class RewriteResult:
    job_status: int
    """1: success, `data` goes on; 0: the job failed on purpose (no retry)."""
    data: Any
    message: str = ""
    console: list[str] = field(default_factory=list)


# The prelude runs once per context. It replaces `console`, removes the few non-ECMAScript globals
# mini-racer installs, compiles the user's body with `new Function` (so it cannot escape the
# wrapper), and defines a non-writable entry point taking the JSON text of a list of `jobData`.
_PRELUDE = r"""
(function (source, maxLines, maxLineChars, maxResultChars) {
  'use strict';
  const parse = JSON.parse, stringify = JSON.stringify, StringCtor = String;
  const apply = Reflect.apply, describe = Object.getOwnPropertyDescriptor;
  const ArrayProto = Array.prototype, StringProto = String.prototype;
  const ObjectProto = Object.prototype;
  const hasOwn = ObjectProto.hasOwnProperty;
  // What the sandbox itself relies on: a function that replaces one of these (or adds a toJSON
  // to a prototype) has broken its isolate, which is then recycled (`__retrieveRun` says so).
  const relied = [
    [JSON, 'parse'], [JSON, 'stringify'], [Reflect, 'apply'], [Object, 'getOwnPropertyDescriptor'],
    [ArrayProto, 'map'], [ArrayProto, 'join'], [ArrayProto, 'push'], [ArrayProto, 'slice'],
    [StringProto, 'slice'], [ObjectProto, 'hasOwnProperty'], [globalThis, 'String'],
  ];
  const originals = relied.map(([owner, name]) => owner[name]);
  const noToJSON = [ObjectProto, ArrayProto, StringProto, Number.prototype, Boolean.prototype];
  const intact = () => {
    for (let i = 0; i < relied.length; i++) {
      const found = describe(relied[i][0], relied[i][1]);
      if (!found || found.value !== originals[i]) return false;
    }
    for (let i = 0; i < noToJSON.length; i++) {
      if (apply(hasOwn, noToJSON[i], ['toJSON'])) return false;
    }
    return true;
  };
  const lines = [];
  let dropped = 0;
  const show = (v) => {
    if (typeof v === 'string') return v;
    if (v instanceof Error) return StringCtor(v);
    try { const s = stringify(v); return s === undefined ? StringCtor(v) : s; }
    catch (e) { return StringCtor(v); }
  };
  const logger = (prefix) => function () {
    if (lines.length >= maxLines) { dropped++; return; }
    let line = prefix + Array.prototype.map.call(arguments, show).join(' ');
    if (line.length > maxLineChars) line = line.slice(0, maxLineChars) + '...';
    lines.push(line);
  };
  const console = Object.freeze({
    log: logger(''), info: logger('[info] '), debug: logger('[debug] '),
    warn: logger('[warn] '), error: logger('[error] '),
  });
  const fixed = (name, value) =>
    Object.defineProperty(globalThis, name, {value, writable: false, configurable: false});
  fixed('console', console);
  // Nothing asynchronous or outside ECMAScript: the function runs to completion, synchronously.
  // No ArrayBuffer either (nor what makes or shares one): its memory lives outside V8's heap,
  // where the heap limit (memoryMiB) does not count it; without it every allocation does.
  const extras = [
    'setTimeout', 'clearTimeout', '__timer_manager', '__TimerManager', 'WebAssembly',
    'ArrayBuffer', 'SharedArrayBuffer', 'DataView', 'Atomics', 'Int8Array', 'Uint8Array',
    'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array', 'Uint32Array',
    'Float16Array', 'Float32Array', 'Float64Array', 'BigInt64Array', 'BigUint64Array',
  ];
  for (const name of extras) {
    try { delete globalThis[name]; } catch (e) { globalThis[name] = undefined; }
  }
  const userFunction = new Function('jobData', source);
  const runOne = function (jobData) {
    lines.length = 0; dropped = 0;
    let out;
    try {
      out = {ok: true, result: userFunction(jobData)};
    } catch (e) {
      const text = (e && e.stack) ? StringCtor(e.stack) : StringCtor(e);
      out = {ok: false, error: text};
    }
    if (dropped) lines.push('... ' + dropped + ' more console line(s) dropped');
    out.console = lines.slice();
    let text;
    try { text = stringify(out); }
    catch (e) {
      text = stringify({ok: false, shape: 'a value that is not JSON: ' + e, console: out.console});
    }
    if (text === undefined) text = stringify({ok: true, console: out.console});
    if (text.length > maxResultChars) {
      const shape = 'a result larger than ' + maxResultChars + ' characters';
      text = stringify({ok: false, shape, console: out.console});
    }
    return text;
  };
  // Many jobs in one call: one round trip to the isolate instead of one per job. After each
  // job the built-ins are checked: a broken isolate answers TAMPERED instead of results that
  // its own broken built-ins made.
  const run = (input) => {
    const jobs = parse(input);
    let out = '[';
    for (let i = 0; i < jobs.length; i++) {
      out += (i ? ',' : '') + runOne(jobs[i]);
      if (!intact()) return 'TAMPERED';
    }
    return out + ']';
  };
  fixed('__retrieveRun', run);
  return true;
})
"""


def code_key(integration_id: str, spec: RewriteSpec) -> str:
    """Identifies one compiled version of an integration's rewrite function."""
    digest = hashlib.sha256(spec.javascript.encode()).hexdigest()[:16]
    return f"{integration_id}:{digest}:{spec.memory_mib}"


_ERROR_LINE = re.compile(r"^(?:[\w$]*Error|Uncaught)\b.*$", re.MULTILINE)
# A frame of the user's function: `new Function` puts its body after two header lines.
_USER_FRAME = re.compile(r"eval at .*<anonymous>:(\d+):(\d+)\)")


def describe_js_error(text: str) -> str:
    """`TypeError: x is undefined (line 3, column 7)` from a V8 error text and stack."""
    first = _ERROR_LINE.search(text)
    message = first.group(0).strip() if first else (text.strip().splitlines() or ["error"])[0]
    if not first and ":" in message and message.startswith(("<anonymous>", "undefined")):
        message = message.split(":", 2)[-1].strip()
    frame = _USER_FRAME.search(text)
    if frame:
        line, column = int(frame.group(1)) - 2, int(frame.group(2))
        message = f"{message} (line {line}, column {column})"
    return message[:MAX_ERROR_CHARS]


def has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def parse_result(raw: Mapping[str, Any]) -> RewriteResult:
    """Checks the shape of what the function returned: `{jobStatus: 1|0, data, message}`."""
    console = [str(line) for line in raw.get("console", [])]
    if "shape" in raw:
        raise RewriteError(
            f"rewrite function returned {raw['shape']}", kind="shape", console=console
        )
    if not raw.get("ok"):
        message = describe_js_error(str(raw.get("error", "unknown error")))
        raise RewriteError(f"rewrite function threw: {message}", kind="thrown", console=console)
    if "result" not in raw:
        raise RewriteError(
            "rewrite function returned undefined; "
            "it must return {jobStatus: 1 or 0, data, message}",
            kind="shape",
            console=console,
        )
    result = raw["result"]
    if not isinstance(result, dict):
        shown = json.dumps(result)[:200]
        raise RewriteError(
            f"rewrite function returned {shown}; it must return an object "
            "{jobStatus: 1 or 0, data, message}",
            kind="shape",
            console=console,
        )
    if "jobStatus" not in result:
        raise RewriteError(
            "rewrite function returned an object without jobStatus (expected 1 or 0)",
            kind="shape",
            console=console,
        )
    status = result["jobStatus"]
    if isinstance(status, bool) or status not in (0, 1):
        raise RewriteError(
            f"rewrite function returned jobStatus {json.dumps(status)[:100]} (expected 1 or 0)",
            kind="shape",
            console=console,
        )
    message = result.get("message", "")
    if message is None:
        message = ""
    if not isinstance(message, str):
        message = json.dumps(message)
    if status == 1 and "data" not in result:
        raise RewriteError(
            "rewrite function returned jobStatus 1 without data", kind="shape", console=console
        )
    return RewriteResult(int(status), result.get("data"), message, console)


class _Context:
    """One isolate with one compiled rewrite function, bound to the event loop that made it.

    mini-racer runs JavaScript on the isolate's own native thread and reports back to the loop,
    so awaiting a call never blocks the loop (no Python thread pool is needed, and none would be
    faster: each call would still hop to the isolate's thread). The lock keeps one call at a
    time per context (the console buffer is per context).
    """

    def __init__(self, spec: RewriteSpec) -> None:
        self.lock = asyncio.Lock()
        self.broken = False
        self.racer = MiniRacer()  # on the running loop: its async API is the one we use
        memory_bytes = spec.memory_mib * 1024 * 1024
        self.racer.set_hard_memory_limit(memory_bytes)
        self.racer.set_soft_memory_limit(memory_bytes * 3 // 4)

    async def compile(self, spec: RewriteSpec) -> None:
        limits = f"{MAX_CONSOLE_LINES}, {MAX_CONSOLE_LINE_CHARS}, {MAX_RESULT_CHARS}"
        code = f"{_PRELUDE}({json.dumps(spec.javascript)}, {limits})"
        try:
            await self._eval(code, max(spec.timeout_ms, 1000), spec)
        except RewriteError as exc:
            raise RewriteError(
                exc.message.replace("rewrite function failed", "rewrite function does not compile"),
                kind="compile" if exc.kind == "thrown" else exc.kind,
            ) from exc

    async def call(
        self, job_datas: list[Any], spec: RewriteSpec
    ) -> list[RewriteResult | RewriteError]:
        """Runs the function once per `jobData`, all in one trip to the isolate.

        A job's own failure (thrown, bad shape) is its item; a time-out or OOM of the whole call
        raises, and the context is then broken.
        """
        raw = await self._eval(
            f"__retrieveRun({json.dumps(json.dumps(job_datas))})", spec.timeout_ms, spec
        )
        if self.racer.was_hard_memory_limit_reached():
            self.broken = True
        if raw == TAMPERED:
            self.broken = True  # recycled: the next call gets a new isolate
            raise RewriteError(MSG_TAMPERED, kind="tampered")
        try:
            items = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            items = None
        if not isinstance(items, list) or len(items) != len(job_datas):
            self.broken = True  # whatever did this, that isolate is not reused
            raise RewriteError(MSG_TAMPERED, kind="tampered")
        results: list[RewriteResult | RewriteError] = []
        for item in items:
            if not isinstance(item, dict):
                results.append(RewriteError(MSG_TAMPERED, kind="tampered"))
                continue
            try:
                results.append(parse_result(item))
            except RewriteError as exc:
                results.append(exc)
        return results

    async def _eval(self, code: str, timeout_ms: int, spec: RewriteSpec) -> Any:
        try:
            return await asyncio.wait_for(self.racer.eval_cancelable(code), timeout_ms / 1000)
        except (TimeoutError, JSTimeoutException) as exc:
            self.broken = True
            raise RewriteError(
                f"rewrite function timed out after {timeout_ms} ms", kind="timeout"
            ) from exc
        except JSOOMException as exc:
            self.broken = True
            raise RewriteError(
                f"rewrite function exceeded its memory limit of {spec.memory_mib} MiB",
                kind="memory",
            ) from exc
        except JSEvalException as exc:
            # The wrapper catches what the function throws: an exception here is a compile error
            # or an isolate that was terminated, which we do not reuse.
            self.broken = True
            raise RewriteError(
                f"rewrite function failed: {describe_js_error(str(exc))}", kind="thrown"
            ) from exc

    def close(self) -> None:
        self.broken = True
        self.racer.close()


_live_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_live_sandboxes() -> None:
    # An isolate left open after a JS timeout keeps the interpreter from exiting.
    for sandbox in list(_live_sandboxes):
        sandbox.close()


class Sandbox:
    """A cache of rewrite contexts (LRU-bounded) for the event loop that uses it.

    `await sandbox.run(key, spec, job_data)` never blocks the loop: JavaScript runs on the
    isolate's thread, one call at a time per context, in parallel across contexts.
    """

    def __init__(self, max_contexts: int = 256, max_batch: int = 64) -> None:
        self.max_contexts = max_contexts
        self.max_batch = max_batch
        self._contexts: OrderedDict[str, _Context] = OrderedDict()
        self._queues: dict[str, list[tuple[RewriteSpec, Any, asyncio.Future[RewriteResult]]]] = {}
        self._drainers: dict[str, asyncio.Task[None]] = {}
        self._batch_limit: dict[str, int] = {}
        self._closed = False
        _live_sandboxes.add(self)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def context_count(self) -> int:
        return len(self._contexts)

    async def _context(self, key: str, spec: RewriteSpec) -> _Context:
        ctx = self._contexts.get(key)
        if ctx is not None and not ctx.broken:
            self._contexts.move_to_end(key)
            return ctx
        if self._closed:
            raise RewriteError("rewrite sandbox is closed")
        # A new code version of an integration replaces the old one; the cache stays bounded.
        integration = key.split(":", 1)[0] + ":"
        for other in [k for k in self._contexts if k == key or k.startswith(integration)]:
            self._retire(other)
        while len(self._contexts) >= self.max_contexts:
            self._retire(next(iter(self._contexts)))
        ctx = _Context(spec)
        self._contexts[key] = ctx
        try:
            await ctx.compile(spec)
        except BaseException:
            self._retire(key)
            raise
        return ctx

    def _retire(self, key: str) -> None:
        ctx = self._contexts.pop(key, None)
        if ctx is None:
            return
        ctx.broken = True
        if not ctx.lock.locked():
            ctx.close()
        # else: the call holding the lock closes it when it finishes

    async def run(self, key: str, spec: RewriteSpec, job_data: Any) -> RewriteResult:
        """Runs the rewrite function of `spec` (context `key`, see `code_key`) on `job_data`.

        Calls waiting for the same context are sent to the isolate together (one round trip
        for up to `max_batch` jobs); each still gets its own result, console and errors.
        """
        future: asyncio.Future[RewriteResult] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((spec, job_data, future))
        drainer = self._drainers.get(key)
        if drainer is None or drainer.done():
            self._drainers[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: str) -> None:
        queue = self._queues.get(key, [])
        while queue:
            limit = self._batch_limit.get(key, self.max_batch)
            batch = queue[:limit]
            del queue[:limit]
            try:
                results = await self._run_batch(key, batch[-1][0], [b[1] for b in batch])
            except BaseException as exc:  # nobody may wait forever
                error = exc if isinstance(exc, RewriteError) else RewriteError(repr(exc))
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, RewriteError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        self._queues.pop(key, None)

    async def _run_batch(
        self, key: str, spec: RewriteSpec, job_datas: list[Any]
    ) -> list[RewriteResult | RewriteError]:
        try:
            return await self._call(key, spec, job_datas)
        except RewriteError as exc:
            if len(job_datas) == 1 or exc.kind == "compile":
                return [exc] * len(job_datas)
        # The batch as a whole timed out or ran out of memory: run each job alone, so only the
        # job that caused it fails. When none does, the function is just slow: stop batching.
        results: list[RewriteResult | RewriteError] = []
        for job_data in job_datas:
            try:
                results.extend(await self._call(key, spec, [job_data]))
            except RewriteError as exc:
                results.append(exc)
        if not any(
            isinstance(r, RewriteError) and r.kind in ("timeout", "memory") for r in results
        ):
            self._batch_limit[key] = 1
        return results

    async def _call(
        self, key: str, spec: RewriteSpec, job_datas: list[Any]
    ) -> list[RewriteResult | RewriteError]:
        ctx = await self._context(key, spec)
        async with ctx.lock:
            try:
                return await ctx.call(job_datas, spec)
            finally:
                if ctx.broken:
                    if self._contexts.get(key) is ctx:
                        del self._contexts[key]
                    ctx.close()

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Closes the contexts whose key `keep` refuses (integrations removed from the config)."""
        for key in [k for k in self._contexts if not keep(k)]:
            self._retire(key)
            self._batch_limit.pop(key, None)

    def close(self) -> None:
        self._closed = True
        for drainer in self._drainers.values():
            drainer.cancel()
        for key in list(self._contexts):
            ctx = self._contexts.pop(key)
            ctx.close()
