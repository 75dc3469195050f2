"""Running `retrieve` subcommands as real subprocesses, and an HTTP sink the tests own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def retrieve_command() -> list[str]:
    return [sys.executable, "-m", "retrieve_cli.main"]


class RetrieveProcess:
    """One `retrieve ...` subprocess; its output goes to a file the test can show on failure."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(tempfile.mkstemp(prefix="retrieve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RetrieveProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*retrieve_command(), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"retrieve exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} not ready after {timeout} s:\n{self.output()}")

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a pod's node dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _point_destinations_at(documents: Sequence[Any], sink_url: str) -> None:
    for document in documents:
        for destination in (document or {}).get("spec", {}).get("destinations", []) or []:
            url: str = destination["http"]["url"]
            path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
            destination["http"]["url"] = f"{sink_url}/{path}"


def write_config(directory: Path, sink_url: str, extra: Sequence[dict[str, Any]] = ()) -> Path:
    """Copy examples/ (and extra manifests) with every destination pointed at the test's sink."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(EXAMPLES.glob("*.yaml")):
        documents = list(yaml.safe_load_all(source.read_text()))
        _point_destinations_at(documents, sink_url)
        (directory / source.name).write_text(yaml.safe_dump_all(documents, sort_keys=False))
    if extra:
        documents = json.loads(json.dumps(list(extra)))  # a deep copy the caller keeps intact
        _point_destinations_at(documents, sink_url)
        (directory / "90-test-extra.yaml").write_text(
            yaml.safe_dump_all(documents, sort_keys=False)
        )
    return directory


@dataclass
class SinkRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Sink:
    """A destination the test runs: records completed requests; can fail or stall on demand."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    status: int = 200
    delay: float = 0.0
    received: list[SinkRequest] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.status
        transport = request.transport
        if transport is None or transport.is_closing():
            # The sender went away while we stalled (e.g. a SIGKILLed worker): not a delivery.
            raise web.HTTPServiceUnavailable()
        if status < 300:
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            self.received.append(SinkRequest(request.path, dict(request.headers), body))
        return web.json_response({"ok": status < 300}, status=status)

    async def start(self) -> Sink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.received if r.path == path]

    async def wait_for(self, count: int, path: str | None = None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = [r for r in self.received if path is None or r.path == path]
            if len(seen) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"sink got {len(self.received)} requests, wanted {count} on {path}: {self.received}"
        )
