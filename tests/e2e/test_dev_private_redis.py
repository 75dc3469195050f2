"""`retrieve dev` without --redis-url starts a private redis-server (the launcher the tests use
too), and on the way out stops it and removes its data."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.ports import free_port
from tests.support.processes import EXAMPLES, RetrieveProcess

pytestmark = pytest.mark.e2e


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_dev_mode_runs_on_a_private_redis_it_removes_on_exit(tmp_path: Path) -> None:
    temp, state = tmp_path / "tmp", tmp_path / "state"
    temp.mkdir()
    port, admin = free_port(), free_port()
    dev = RetrieveProcess(
        ["dev", "--config-dir", str(EXAMPLES), "--host", "127.0.0.1", "--port", str(port),
         "--admin-port", str(admin)],
        env={"TMPDIR": str(temp), "XDG_STATE_HOME": str(state)},
    ).start()  # fmt: skip
    try:
        dev.wait_http(f"http://127.0.0.1:{admin}/readyz")
        redis_url = json.loads((state / "retrieve" / "dev.json").read_text())["redis_url"]
        redis_port = urlsplit(redis_url).port
        assert redis_port is not None
        assert answers_ping(redis_port)
        assert [p.name.startswith("retrieve-redis-") for p in temp.iterdir()] == [True]
    finally:
        code = dev.stop(signal.SIGTERM)
    assert code == 0, dev.output()
    assert not answers_ping(redis_port)
    assert list(temp.iterdir()) == []  # its data folder is gone
    assert not (state / "retrieve" / "dev.json").exists()
