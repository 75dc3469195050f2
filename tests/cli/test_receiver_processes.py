"""The command line a `retrieve receiver --processes N` supervisor gives each of its children."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieve_cli.main import build_parser
from retrieve_cli.receiver_processes import child_command

pytestmark = pytest.mark.unit


def _child(*argv: str) -> list[str]:
    args = build_parser().parse_args(["receiver", *argv])
    return child_command(args, admin_port=40123)


def test_a_child_shares_the_public_port_and_serves_its_admin_on_loopback_only() -> None:
    command = _child("--config-dir", "cfg", "--host", "0.0.0.0", "--port", "8080",
                     "--processes", "3")  # fmt: skip
    assert command[command.index("--port") + 1] == "8080"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--admin-host") + 1] == "127.0.0.1"
    assert command[command.index("--admin-port") + 1] == "40123"
    assert command[command.index("--processes") + 1] == "1"  # children never supervise
    assert "--supervised" in command  # SO_REUSEPORT, and dies with its supervisor
    assert command[command.index("--config-dir") + 1] == str(Path("cfg"))


def test_a_childs_redis_url_never_appears_on_its_command_line() -> None:
    command = _child("--from-cluster", "--namespace", "shop", "--app", "yourapp",
                     "--redis-url", "redis://:secret@redis:6379/0", "--processes", "2")  # fmt: skip
    assert not [part for part in command if "secret" in part]
    assert "--from-cluster" in command
    assert command[command.index("--namespace") + 1] == "shop"
    assert command[command.index("--app") + 1] == "yourapp"


def test_the_processes_option_defaults_to_one_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert build_parser().parse_args(["receiver"]).processes == 1
    monkeypatch.setenv("RETRIEVE_RECEIVER_PROCESSES", "4")
    assert build_parser().parse_args(["receiver"]).processes == 4
