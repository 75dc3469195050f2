"""Free loopback ports (the product's `free_port`, which dev mode uses too), and bounded waits
until a condition holds, a port listens or a URL answers: one copy for tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable

from retrieve_cli.redis_server import free_port

__all__ = ["free_port", "wait_for", "wait_http", "wait_listening"]


def wait_for(what: str, condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Polls `condition` every 0.1 s until it holds; RuntimeError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def wait_listening(port: int, seconds: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port`."""

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(f"something listening on port {port}", accepts, seconds)


def wait_http(
    url: str, seconds: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until `url` answers 2xx or 3xx; fails at once if `process` (the server) has exited."""

    def answers() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False

    wait_for(f"{url} answering", answers, seconds)
