"""`retrieve receiver --processes 2`: two processes share the port, the parent shows both in
/metrics, SIGTERM lets a request waiting for Redis finish before every process exits cleanly,
and a process that dies takes the supervisor down with an error."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.support.fleet import INTEGRATION, KEYS, write_fleet_config
from tests.support.ports import free_port
from tests.support.processes import RetrieveProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

MAX_CONNECTIONS = 200
"""Connections tried until both processes accepted one (the kernel hashes each to one)."""


class Processes:
    def __init__(self, config: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.process = RetrieveProcess(
            [
                "receiver",
                "--config-dir", str(config),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--admin-port", str(self.admin_port),
                "--redis-url", redis_url,
                "--processes", "2",
            ],
            env,
        )  # fmt: skip

    def start(self) -> Processes:
        self.process.start()
        self.process.wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


def post_on_a_new_connection(port: int, body: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(len(body)) + body)
        return _status(_read_answer(sock))


def _head(length: int) -> bytes:
    return (
        f"POST /integration/{INTEGRATION} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(4096)
        assert chunk, data
        rest += chunk
    return head + b"\r\n\r\n" + rest


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _requests_by_process(
    metrics: dict[str, list[tuple[dict[str, str], float]]],
) -> dict[str, float]:
    counts: dict[str, float] = {}
    for labels, value in metrics.get("retrieve_receiver_requests_total", []):
        if labels.get("status") == "200":
            counts[labels["process"]] = counts.get(labels["process"], 0) + value
    return counts


def test_two_receiver_processes_share_the_port_and_both_accept_webhooks(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    receivers = Processes(config, private_redis_server.url).start()
    redis = Redis.from_url(private_redis_server.url)
    try:
        sent = 0
        while sent < MAX_CONNECTIONS:
            body = json.dumps({"order": sent}).encode()
            assert post_on_a_new_connection(receivers.port, body) == 200
            sent += 1
            if sent % 10 == 0 and len(_requests_by_process(receivers.metrics())) == 2:
                break
        metrics = receivers.metrics()
        by_process = _requests_by_process(metrics)
        assert sorted(by_process) == ["0", "1"], by_process
        assert sum(by_process.values()) == sent
        assert redis.xlen(KEYS.jobs) == sent
        up = metrics["retrieve_receiver_process_up"]
        pids = {labels["pid"] for labels, value in up if value == 1}
        assert len(pids) == 2
        assert receivers.process.process is not None
        assert str(receivers.process.process.pid) not in pids  # children, not the parent
    finally:
        redis.close()
        receivers.process.stop()


def test_sigterm_drains_a_request_in_flight_then_every_process_exits_cleanly(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    # The request waits for Redis while the processes stop: longer than the 2 s Redis timeout
    # would allow (a 503) on a loaded machine.
    redis_wait = {"RETRIEVE_REDIS_TIMEOUT_SECONDS": "30"}
    receivers = Processes(config, private_redis_server.url, redis_wait).start()
    redis = Redis.from_url(private_redis_server.url)
    parent = receivers.process.process
    assert parent is not None
    children = {
        int(labels["pid"]) for labels, _ in receivers.metrics()["retrieve_receiver_process_up"]
    }
    try:
        body = json.dumps({"order": "in flight"}).encode()
        redis.client_pause(30_000, all=False)  # writes wait: the request stays in flight
        with socket.create_connection(("127.0.0.1", receivers.port), timeout=20) as sock:
            sock.sendall(_head(len(body)) + body)
            _wait_until(lambda: int(redis.info("clients")["blocked_clients"]) >= 1)
            receivers.process.send_signal(signal.SIGTERM)
            _wait_until_refused(receivers.port)  # both processes stopped accepting
            redis.client_unpause()
            answer = _read_answer(sock)
        assert _status(answer) == 200
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"result": True, "error": ""}
        assert parent.wait(timeout=30) == 0, receivers.process.output()
        assert redis.xlen(KEYS.jobs) == 1
        for pid in children:
            _wait_until_gone(pid)
    finally:
        redis.close()
        receivers.process.stop()


def test_a_receiver_process_that_dies_stops_the_supervisor_with_an_error(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    receivers = Processes(config, private_redis_server.url).start()
    parent = receivers.process.process
    assert parent is not None
    children = sorted(
        int(labels["pid"]) for labels, _ in receivers.metrics()["retrieve_receiver_process_up"]
    )
    try:
        os.kill(children[0], signal.SIGKILL)
        assert parent.wait(timeout=30) == 1
        assert "exited with -9" in receivers.process.output()
        _wait_until_gone(children[1])
    finally:
        receivers.process.stop()


def _wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _wait_until_refused(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still accepts {timeout} s after SIGTERM")


def _wait_until_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


def test_receiver_processes_end_when_their_supervisor_is_killed_outright(
    tmp_path: Path, private_redis_server: RedisServer
) -> None:
    config = write_fleet_config(tmp_path / "config", "http://127.0.0.1:9")
    receivers = Processes(config, private_redis_server.url).start()
    parent = receivers.process.process
    assert parent is not None
    children = [
        int(labels["pid"]) for labels, _ in receivers.metrics()["retrieve_receiver_process_up"]
    ]
    try:
        parent.kill()
        parent.wait(timeout=10)
        for pid in children:  # orphans get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            _wait_until_gone_or_zombie(pid)
    finally:
        receivers.process.stop()


def _wait_until_gone_or_zombie(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")
