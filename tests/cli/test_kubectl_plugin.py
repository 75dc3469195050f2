"""`kubectl retrieve`: signing for every preset, and the plugin against a running `retrieve dev`."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from retrieve_cli.kubectl_plugin import Resolved, build_signed_request
from retrieve_core.config import SecretStore
from retrieve_core.models import IntegrationSpec, VerifySpec
from retrieve_receiver.signatures import compile_scheme, sign, verify
from tests.e2e.conftest import DevServer, config_dir, dev_server, dns_server
from tests.support.processes import Sink

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


@pytest.mark.e2e
async def test_send_delivers_a_github_signed_webhook_to_a_running_dev_server(
    dev_server: DevServer, sink: Sink, tmp_path: Path
) -> None:
    config = str(dev_server.config_dir)
    data = tmp_path / "push.json"
    data.write_text(json.dumps({"ref": "refs/heads/main", "after": "abc123"}))

    url = await aplugin("url", "github-push", "--config-dir", config)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == "https://webhook-yourapp.retrievetl.com/integration/GITHUB1"

    sent = await aplugin("send", "github-push", "--config-dir", config, "--data", str(data),
                  "--url", dev_server.url)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
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
    data = tmp_path / "push.json"
    data.write_text(json.dumps({"ref": "refs/heads/dead"}))
    sink.status = 500
    sent = await aplugin("send", "github-push", "--config-dir", config, "--data", str(data),
                  "--url", dev_server.url)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
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
