"""The single-node cluster of ``hack/node`` (docs/node.md), driven from outside its pods.

Every command runs inside the node's network namespace through ``hack/node/run`` (kubectl, helm,
curl, and the test's own Python clients), so no test traffic leaves that namespace.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
NODE_DIR: Final = REPO_ROOT / "hack" / "node"
RUN: Final = NODE_DIR / "run"
NODE_IP: Final = "10.250.0.1"
INGRESS: Final = f"http://{NODE_IP}"
APP_NAMESPACE: Final = "shop"
RELEASE_NAMESPACE: Final = "retrieve-system"
HOST: Final = "webhook-yourapp.retrievetl.com"
JSON_ID: Final = "507f1f77bcf86cd799439011"
XML_ID: Final = "ABC123"

T = TypeVar("T")


class NodeError(AssertionError):
    """A command against the node failed (its output is in the message)."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def run(
    argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the node's network namespace (``hack/node/run``)."""
    proc = subprocess.run(
        [str(RUN), *argv],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )
    if check and proc.returncode != 0:
        raise NodeError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
) -> str:
    return run(["kubectl", *args], input=input, check=check, timeout=timeout).stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args: str, timeout: float = 600.0) -> str:
    return run(["helm", *args], timeout=timeout).stdout


def post(
    path: str,
    body: str,
    *,
    content_type: str = "application/json",
    sender: str = "127.0.0.1",
    host: str = HOST,
    headers: Sequence[str] = (),
) -> HttpAnswer:
    """POST through Traefik from the loopback address ``sender`` (the sender's identity)."""
    argv = ["curl", "-sS", "--max-time", "10", "--interface", sender, "-X", "POST"]
    argv += ["-H", f"Host: {host}", "-H", f"Content-Type: {content_type}"]
    for header in headers:
        argv += ["-H", header]
    argv += ["--data-binary", "@-", "-w", "\n%{http_code}", f"{INGRESS}{path}"]
    out = run(argv, input=body, check=False).stdout
    text, _, code = out.rpartition("\n")
    return HttpAnswer(int(code or 0), text)


def post_accepted(path: str, body: str, *, host: str = HOST, timeout: float = 60.0) -> HttpAnswer:
    """POST until the answer is 200 (while an Ingress or a pod is being replaced)."""

    def probe() -> HttpAnswer | None:
        answer = post(path, body, host=host)
        return answer if answer.status == 200 else None

    return eventually(f"POST {path} to be accepted", probe, timeout)


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (NodeError, ValueError, KeyError) as exc:
            last, value = exc, None
        if value is not None and value is not False:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl_json("-n", namespace, "get", "pods", "-l", selector)[
        "items"
    ]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    def ready(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    return [p for p in pods(namespace, selector) if ready(p)]


def sink_records() -> list[tuple[str, Any]]:
    """(path, JSON body) of every request the sink pod printed."""
    out = kubectl("-n", APP_NAMESPACE, "logs", "deploy/sink", "--tail=-1")
    records = []
    for line in out.splitlines():
        method, _, rest = line.partition(" ")
        path, _, body = rest.partition(" ")
        if method == "POST" and body:
            records.append((path, json.loads(body)))
    return records


class Stream:
    """The bounded sender of ``tests/support/node_stream.py``, running inside the namespace."""

    def __init__(self, *args: str, path: str = f"/integration/{JSON_ID}") -> None:
        python = str(REPO_ROOT / ".venv" / "bin" / "python")
        argv = [python, "-m", "tests.support.node_stream", "--url", f"{INGRESS}{path}"]
        self.stop_file = Path(tempfile.mkdtemp(prefix="retrieve-stream-")) / "stop"
        argv += ["--stop-file", str(self.stop_file)]
        self.proc = subprocess.Popen(
            [str(RUN), *argv, "--host", HOST, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )

    def stop_sending(self) -> None:
        """No new webhooks from now on (those under way are still retried until answered)."""
        self.stop_file.touch()

    def result(self, timeout: float = 300.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise NodeError(f"stream exited {self.proc.returncode}: {err[-3000:]}")
        result: dict[str, Any] = json.loads(out)
        return result


def log_records(integration: str, *, status: str | None = None) -> list[dict[str, Any]]:
    """Webhook log records through `kubectl retrieve logs --json` (the admin API, via the API
    server's pod proxy, with the application's console token from its Secret)."""
    token = kubectl(
        "-n", APP_NAMESPACE, "get", "secret", "yourapp-console", "-o", "jsonpath={.data.token}"
    )
    plugin = str(REPO_ROOT / ".venv" / "bin" / "kubectl-retrieve")
    argv = ["env", f"RETRIEVE_CONSOLE_TOKEN={base64.b64decode(token).decode()}", plugin, "logs"]
    argv += [integration, "-n", APP_NAMESPACE, "--json", "--limit", "200"]
    if status:
        argv += ["--status", status]
    out = run(argv).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def keep_node() -> bool:
    return os.environ.get("RETRIEVE_NODE_KEEP", "") not in ("", "0")
