"""Running `retrieve` subcommands as real subprocesses. The tests' HTTP destination is the
product's `retrieve_cli.sink.Sink` (the `sink` fixture of tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from retrieve_cli.sink import Sink, SinkRequest

# Re-exported for tests written before the sink moved to the product; import it from there.
__all__ = [
    "EXAMPLES",
    "REPO",
    "RetrieveProcess",
    "Sink",
    "SinkRequest",
    "retrieve_command",
    "write_config",
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def retrieve_command() -> list[str]:
    return [sys.executable, "-m", "retrieve_cli.main"]


class RetrieveProcess:
    """One `retrieve ...` subprocess; its output goes to a file the test can show on failure."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        # A refused request's log record may wait 0.5 s for Redis when deployed; tests read
        # those records back, and a loaded machine's slow fsync must not drop one.
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS": "10",
            **(env or {}),
        }
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
