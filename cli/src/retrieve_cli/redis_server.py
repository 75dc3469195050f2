"""A private `redis-server` on a free loopback port: dev mode's Redis, and the tests' and benches'.

Data lives in a temporary folder (AOF), kept across `stop()`/`start()` so a restart keeps what was
acknowledged, and removed by `cleanup()` (or leaving the `with` block).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

INSTALL_HINT = (
    "redis-server was not found on PATH. Dev mode starts a private Redis when no --redis-url is "
    "given. Install one:\n"
    "  Debian/Ubuntu: sudo apt-get install redis-server\n"
    "  macOS:         brew install redis\n"
    "  Fedora:        sudo dnf install redis\n"
    "or point dev mode at a running Redis with --redis-url redis://HOST:6379/0"
)


class RedisNotInstalled(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`redis-server` on 127.0.0.1, with AOF unless `appendonly=False`.

    `appendfsync="always"` makes every acknowledged write survive a SIGKILL (what the fault
    tests check); dev mode and the benches use Redis's default, `everysec`. `options` go last on
    the command line (a cluster node's, a sentinel's); `config` is the text of a config file
    given first (a sentinel rewrites its own, so it must be one).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        options: Sequence[str] = (),
        config: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.options = list(options)
        self.config = config
        self.dir = Path(tempfile.mkdtemp(prefix="retrieve-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        return self.process.pid

    def start(self, timeout: float = 10.0) -> Self:
        """Starts the server (again, on the same port and data) and waits for its PONG."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(INSTALL_HINT)
        config_file = self.dir / "redis.conf"
        if self.config is not None and not config_file.exists():  # a restart keeps its rewrites
            config_file.write_text(self.config)
        self.process = subprocess.Popen(
            [
                binary,
                *([str(config_file)] if self.config is not None else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: Ctrl-C in the terminal must not stop Redis before the worker drains.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop(kill=True)
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} in {timeout} s")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown), or SIGKILL as when the node dies; the data stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stops the server and removes its data."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
