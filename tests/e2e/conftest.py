"""End-to-end fixtures: `retrieve dev` as a subprocess, a sink, a config folder per test."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieve_cli.sink import Sink
from tests.receiver.dns_server import LoopbackDNS
from tests.support.ports import free_port
from tests.support.processes import RetrieveProcess, write_config
from tests.support.redis_server import RedisServer

GITHUB_SECRET = "It's a Secret to Everybody"

# Manifests the tests add to examples/: a partner app whitelisting only 127.0.0.2 and a domain,
# a disabled integration, and a GitHub-signed integration.
EXTRA: list[dict[str, Any]] = [
    {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "RetrieveApplication",
        "metadata": {"name": "partner", "namespace": "shop"},
        "spec": {
            "webhook": {"enabled": True, "domain": "retrievetl.com"},
            "allowedList": ["127.0.0.2", "partner.test"],
        },
    },
    {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "partner-events", "namespace": "shop"},
        "spec": {
            "application": "partner",
            "integrationId": "PARTNER1",
            "destinations": [{"name": "sink", "http": {"url": "http://127.0.0.1:9/partner"}}],
        },
    },
    {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "paused", "namespace": "shop"},
        "spec": {"application": "yourapp", "integrationId": "PAUSED1", "enabled": False},
    },
    {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "github-webhook", "namespace": "shop"},
        "data": {"secret": base64.b64encode(GITHUB_SECRET.encode()).decode()},
    },
    {
        "apiVersion": "retrievetl.com/v1alpha1",
        "kind": "Integration",
        "metadata": {"name": "github-push", "namespace": "shop"},
        "spec": {
            "application": "yourapp",
            "integrationId": "GITHUB1",
            "verify": {
                "preset": "github",
                "secretRefs": [{"name": "github-webhook", "key": "secret"}],
            },
            "destinations": [{"name": "sink", "http": {"url": "http://127.0.0.1:9/github"}}],
            "retry": {"maxAttempts": 3, "backoffSeconds": 0.2, "maxBackoffSeconds": 1},
        },
    },
]


@pytest.fixture
def config_dir(tmp_path: Path, sink: Sink) -> Path:
    return write_config(tmp_path / "config", sink.url, EXTRA)


class DevServer:
    def __init__(self, config_dir: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.redis_url = redis_url
        self.config_dir = config_dir
        self.process = RetrieveProcess(
            [
                "dev",
                "--config-dir",
                str(config_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
                "--redis-url",
                redis_url,
            ],
            env={"RETRIEVE_CLAIM_IDLE_SECONDS": "2", **(env or {})},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        self.process.start()
        self.process.wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    def restart(self) -> DevServer:
        self.process = RetrieveProcess(self.process.args, self.process.env)
        return self.start()


# Reverse and forward records for the domain-whitelist tests (partner.test is whitelisted).
DNS_RECORDS = {
    ("PTR", "4.0.0.127.in-addr.arpa"): ["hook.partner.test"],
    ("A", "hook.partner.test"): ["127.0.0.4"],
    ("PTR", "5.0.0.127.in-addr.arpa"): ["mail.elsewhere.example"],
    ("A", "mail.elsewhere.example"): ["127.0.0.5"],
    ("PTR", "6.0.0.127.in-addr.arpa"): ["spoof.partner.test"],
    ("A", "spoof.partner.test"): ["127.0.0.9"],
}


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LoopbackDNS]:
    """Every dev server resolves through this loopback DNS server, never the system's."""
    with LoopbackDNS(DNS_RECORDS) as server:
        yield server


@pytest.fixture
def dev_server(
    config_dir: Path, private_redis_server: RedisServer, dns_server: LoopbackDNS
) -> Iterator[DevServer]:
    env = {"RETRIEVE_DNS_SERVERS": f"127.0.0.1:{dns_server.port}"}
    server = DevServer(config_dir, private_redis_server.url, env).start()
    try:
        yield server
    finally:
        server.process.stop()
