"""`kubectl retrieve`: signing for every preset, and the plugin against a running `retrieve dev`."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from retrieve_cli.kubectl_plugin import Resolved, build_signed_request, main
from retrieve_cli.sink import Sink
from retrieve_core.config import SecretStore
from retrieve_core.logstore import LogRecord
from retrieve_core.models import IntegrationSpec, VerifySpec
from retrieve_core.notifications import NotificationAttempt
from retrieve_receiver.signatures import compile_scheme, sign, verify
from tests.e2e.conftest import DevServer, config_dir, dev_server, dns_server
from tests.support.ports import free_port

__all__ = ["config_dir", "dev_server", "dns_server"]  # fixtures used by the e2e test below

BODY = b'{"id": 820982911946154508, "email": "jon@example.com"}'
NOW = 1_700_000_000.0
PRESETS: list[dict[str, Any]] = [
    {"preset": "shopify"},
    {"preset": "woocommerce"},
    {"preset": "github"},
    {"preset": "stripe"},
    {"preset": "standard-webhooks"},
    {"preset": "generic", "header": "X-Signature"},
    {
        "preset": "generic",
        "header": "X-Signature",
        "algorithm": "hmac-sha512",
        "encoding": "hex",
        "prefix": "v1=",
        "signedContent": "{timestamp}.{body}",
        "timestampHeader": "X-Timestamp",
    },
    {
        "preset": "generic",
        "header": "X-Sig",
        "signedContent": "{id}:{body}",
        "algorithm": "hmac-sha1",
    },
]
SECRET = b"whsec_" + base64.b64encode(b"a standard-webhooks key of 24b")


def verify_spec(fields: dict[str, Any]) -> VerifySpec:
    return VerifySpec.model_validate({"secretRefs": [{"name": "s", "key": "k"}], **fields})


@pytest.mark.unit
@pytest.mark.parametrize("fields", PRESETS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_a_signed_request_verifies_with_the_receivers_verify(fields: dict[str, Any]) -> None:
    scheme = compile_scheme(verify_spec(fields), [SECRET])
    headers = CIMultiDict(sign(scheme, BODY, NOW, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"))
    assert verify(scheme, headers, BODY, NOW)
    assert not verify(scheme, headers, BODY + b" ", NOW)
    other = compile_scheme(verify_spec(fields), [b"another secret"])
    assert not verify(other, headers, BODY, NOW)


@pytest.mark.unit
def test_signing_uses_the_first_secret_and_any_rotated_secret_verifies() -> None:
    spec = verify_spec({"preset": "shopify"})
    signer = compile_scheme(spec, [b"next"])
    receiver = compile_scheme(spec, [b"current", b"next"])
    assert verify(receiver, CIMultiDict(sign(signer, BODY, NOW)), BODY, NOW)


@pytest.mark.unit
def test_send_adds_the_providers_delivery_id_for_dedupe() -> None:
    spec = IntegrationSpec.model_validate(
        {
            "application": "yourapp",
            "verify": {"preset": "github", "secretRefs": [{"name": "gh", "key": "secret"}]},
        }
    )
    secrets = SecretStore()
    secrets.put_secret("shop", "gh", {"secret": b"s3cret"})
    target = Resolved("shop", "github-push", "GITHUB1", spec, None, None, secrets)
    headers = build_signed_request(target, BODY, time.time(), "delivery-1")
    assert headers["X-GitHub-Delivery"] == "delivery-1"
    assert headers["X-Hub-Signature-256"].startswith("sha256=")


def plugin(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as kubectl finds it on PATH."""
    script = Path(sys.executable).with_name("kubectl-retrieve")
    assert script.exists(), "kubectl-retrieve is not installed with the package"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def aplugin(*args: str) -> subprocess.CompletedProcess[str]:
    """`plugin` off the event loop, which keeps serving the test's sink meanwhile."""
    return await asyncio.to_thread(plugin, *args)


async def send_push(
    dev_server: DevServer, tmp_path: Path, body: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`kubectl retrieve send github-push` of `body` to the dev server; it answered 2xx."""
    data = tmp_path / "push.json"
    data.write_text(json.dumps(body))
    sent = await aplugin("send", "github-push", "--config-dir", str(dev_server.config_dir),
                         "--data", str(data), "--url", dev_server.url)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return sent


@pytest.mark.e2e
async def test_send_delivers_a_github_signed_webhook_to_a_running_dev_server(
    dev_server: DevServer, sink: Sink, tmp_path: Path
) -> None:
    config = str(dev_server.config_dir)
    url = await aplugin("url", "github-push", "--config-dir", config)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == "https://webhook-yourapp.retrievetl.com/integration/GITHUB1"

    sent = await send_push(dev_server, tmp_path, {"ref": "refs/heads/main", "after": "abc123"})
    assert '200 {"result": true, "error": ""}' in sent.stdout
    await sink.wait_for(1, "/github")
    assert sink.bodies("/github") == [{"ref": "refs/heads/main", "after": "abc123"}]
    assert "X-Hub-Signature-256" not in sink.received[0].headers  # never forwarded

    # Without the secret the same body is refused: the signature is what made it through.
    unsigned = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{dev_server.url}/integration/GITHUB1", "-d", "{}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "Invalid webhook signature" in unsigned.stdout

    logs = await aplugin("logs", "github-push", "--config-dir", config, "--redis-url",
                  dev_server.redis_url, "--json")  # fmt: skip
    assert logs.returncode == 0, logs.stderr
    statuses = [json.loads(line)["status"] for line in logs.stdout.splitlines()]
    assert "rejected" in statuses
    assert any(s in {"succeeded", "queued"} for s in statuses)


@pytest.mark.e2e
async def test_replay_requeues_dead_letters_of_a_dev_server(
    dev_server: DevServer, sink: Sink, tmp_path: Path
) -> None:
    config = str(dev_server.config_dir)
    sink.status = 500
    await send_push(dev_server, tmp_path, {"ref": "refs/heads/dead"})
    common = ["github-push", "--config-dir", config, "--redis-url", dev_server.redis_url]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dead = await aplugin("logs", *common, "--status", "dead_letter", "--json")
        if dead.stdout.strip():
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError(dev_server.process.output())
    sink.status = 200
    replayed = await aplugin("replay", *common)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"integration": "GITHUB1", "replayed": 1}
    await sink.wait_for(1, "/github")


@pytest.mark.unit
def test_unknown_integration_is_reported_in_one_line(tmp_path: Path) -> None:
    answer = plugin("url", "nope", "--config-dir", str(Path(__file__).parents[2] / "examples"))
    assert answer.returncode == 1
    assert answer.stderr.strip().endswith(
        "Integration nope not found in " + str(Path(__file__).parents[2] / "examples")
    )


@pytest.mark.unit
def test_the_plugin_finds_receiver_pods_by_the_labels_the_operator_sets() -> None:
    from retrieve_cli.kubectl_plugin import receiver_selector
    from retrieve_operator.builders import selector_labels

    assert receiver_selector("yourapp") == selector_labels("yourapp", "receiver")


class FakeCluster:
    """The API server's pod proxy to a receiver, answering `answer` and keeping the requests."""

    def __init__(self, answer: dict[str, Any] | bytes, status: int = 200) -> None:
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.status, self.body = status, body
        self.requests: list[dict[str, Any]] = []

    def proxy(
        self, namespace: str, app: str, path: str, *, method: str = "GET",
        query: Sequence[tuple[str, str]] = (), headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        self.requests.append(
            {"pod_of": (namespace, app), "path": path, "method": method, "query": list(query),
             "headers": dict(headers or {})}
        )  # fmt: skip
        return self.status, self.body


def through_the_api_server(
    monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any] | bytes, status: int = 200
) -> FakeCluster:
    """`kubectl retrieve` on Integration shop/orders (ORDERS1 of yourapp), with no --redis-url."""
    from retrieve_cli import kubectl_cluster, kubectl_plugin

    spec = IntegrationSpec.model_validate({"application": "yourapp"})
    target = Resolved("shop", "orders", "ORDERS1", spec, None, None, SecretStore())
    cluster = FakeCluster(answer, status)
    monkeypatch.setattr(kubectl_plugin, "resolve", lambda args: target)
    monkeypatch.setattr(kubectl_cluster, "cluster_of", lambda args: cluster)
    monkeypatch.setenv("RETRIEVE_CONSOLE_TOKEN", "t0ken")
    return cluster


def record(n: int, message: str) -> dict[str, Any]:
    return LogRecord(
        id=f"job-{n}", ts=1_800_000_000 + n, source_ip="203.0.113.9", integration_id="ORDERS1",
        http_status=200, status="failed", attempts=3, message=message,
    ).model_dump(mode="json")  # fmt: skip


SCOPE = [("namespace", "shop"), ("app", "yourapp"), ("integration", "ORDERS1")]


@pytest.mark.unit
def test_logs_through_the_api_server_ask_a_receiver_pod_and_print_oldest_first_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [record(2, "newest \x1b[2J"), record(1, "oldest")]
    cluster = through_the_api_server(monkeypatch, {"records": records})

    assert main(["logs", "orders", "--status", "failed,dead_letter", "--limit", "5"]) == 0

    [request] = cluster.requests
    assert (request["pod_of"], request["path"], request["method"]) == (
        ("shop", "yourapp"),
        "/api/logs",
        "GET",
    )
    assert request["query"] == [
        *SCOPE,
        ("limit", "5"),
        ("status", "failed"),
        ("status", "dead_letter"),
    ]
    assert request["headers"]["Cookie"] == "retrieve_console=t0ken"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines] == ["oldest", "\\x1b[2J"]
    assert lines[0].startswith("2027-01-15 08:00:01.000Z  203.0.113.9     200  failed")


@pytest.mark.unit
def test_notification_logs_through_the_api_server_filter_by_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    attempt = NotificationAttempt(
        ts=1_800_000_000, notification="ops", event="deadLetter", integration_id="ORDERS1",
        result="failed", http_status=502, error="answered 502",
    )  # fmt: skip
    answer = {"attempts": [attempt.model_dump(mode="json")]}
    cluster = through_the_api_server(monkeypatch, answer)

    assert main(["logs", "orders", "--notifications", "--status", "failed", "--json"]) == 0

    [request] = cluster.requests
    assert request["path"] == "/console/api/notifications"
    assert request["query"] == [*SCOPE, ("limit", "50"), ("result", "failed")]
    assert request["headers"]["X-Retrieve-Console"] == "1"
    [line] = capsys.readouterr().out.splitlines()
    assert NotificationAttempt.model_validate_json(line) == attempt


@pytest.mark.unit
def test_replay_through_the_api_server_posts_to_a_receiver_pod(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = through_the_api_server(monkeypatch, {"replayed": 4})

    assert main(["replay", "orders"]) == 0

    [request] = cluster.requests
    assert (request["path"], request["method"], request["query"]) == (
        "/console/api/replay",
        "POST",
        SCOPE,
    )
    assert json.loads(capsys.readouterr().out) == {"integration": "ORDERS1", "replayed": 4}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "needs"),
    [(["logs", "orders"], "get pods/proxy"), (["replay", "orders"], "create pods/proxy")],
)
def test_a_refused_proxy_request_is_one_escaped_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    needs: str,
) -> None:  # fmt: skip
    through_the_api_server(monkeypatch, b"refused \x1b[2J\n\x07", status=403)

    assert main(argv) == 1

    [line] = capsys.readouterr().err.splitlines()
    assert "HTTP 403 refused \\x1b[2J\\n\\x07 (" in line
    assert line.endswith(f"(needs list pods and {needs})")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["logs", "orders"], "logs through the cluster needs the receiver's console token"),
        (["logs", "orders", "--status", "nope"], "unknown status 'nope'"),
        (["logs", "orders", "--notifications", "-s", "sent,failed"], "sent or failed (once)"),
    ],
)
def test_usage_mistakes_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
    message: str,
) -> None:  # fmt: skip
    through_the_api_server(monkeypatch, {})
    monkeypatch.delenv("RETRIEVE_CONSOLE_TOKEN")

    assert main(argv) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("kubectl retrieve: ")
    assert message in line


HOSTILE_ANSWER = "accepted \x1b]0;pwned\x07\x1b[2J\r\nFORGED\x08\x9b31m\u202e\x85 done"
HOSTILE_SHOWN = "accepted \\x1b]0;pwned\\x07\\x1b[2J\\r\\nFORGED\\x08\\x9b31m\\u202e\\x85 done"
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.mark.unit
@pytest.mark.parametrize("status", [200, 502])
async def test_send_shows_the_receivers_answer_escaped_on_one_line(
    tmp_path: Path, status: int
) -> None:
    """SECURITY.md: `kubectl retrieve send` prints through `retrieve_cli.terminal`: "every
    control character (C0, DEL, C1), bidi or zero-width format character and line separator is
    shown as a visible escape". The receiver it sends to (any `--url`) chooses its answer."""

    async def receiver(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, text=HOSTILE_ANSWER)

    app = web.Application()
    app.router.add_post("/integration/{id}", receiver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    data = tmp_path / "order.json"
    data.write_text('{"id": 1}')
    examples = str(Path(__file__).parents[2] / "examples")
    try:
        sent = await aplugin("send", "shopify-orders", "--config-dir", examples,
                             "--data", str(data), "--url", f"http://127.0.0.1:{port}")  # fmt: skip
    finally:
        await runner.cleanup()

    assert sent.returncode == (0 if status == 200 else 1), sent.stderr
    output = sent.stdout + sent.stderr
    acting = [c for c in output if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert acting == [], f"control characters reached the terminal: {acting!r}\n{output}"
    assert sent.stdout == (
        f"POST http://127.0.0.1:{port}/integration/507f1f77bcf86cd799439011 -> {status} "
        f"{HOSTILE_SHOWN}\n"
    )
