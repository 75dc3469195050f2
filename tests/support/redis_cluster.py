"""Real Redis Cluster and Sentinel setups from Debian's redis-server, on loopback free ports.

`ClusterServers`: 3 masters and 3 replicas (`redis-cli --cluster create`). `SentinelServers`: one
primary, one replica, three sentinels (`redis-server --sentinel`). Every process is stopped by
its pid; every wait is bounded.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from .ports import free_port

START_SECONDS = 30.0


def free_cluster_port() -> int:
    """A free port below the ephemeral range whose cluster bus port (+10000) is free too
    (redis-server refuses a cluster port above 55535)."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install redis-server redis-tools)")
    return path


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """One redis-cli command against 127.0.0.1:`port`; its output ('' when it failed)."""
    try:
        done = subprocess.run(
            [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def wait_for(what: str, condition: Callable[[], bool], seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def info(port: int, section: str) -> dict[str, str]:
    lines = redis_cli(port, "INFO", section).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


class _Processes:
    """Redis processes in one temporary folder, stopped by pid."""

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *extra: str, config: str | None = None) -> None:
        folder = self.dir / str(port)
        folder.mkdir(exist_ok=True)
        args = [_binary("redis-server")]
        if config is not None:  # sentinels rewrite their config file: it must be theirs
            (folder / "sentinel.conf").write_text(config)
            args.append(str(folder / "sentinel.conf"))
        args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        args += ["--loglevel", "warning", *extra]
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(f"redis on port {port}", lambda: self._pings(port), 10)

    def _pings(self, port: int) -> bool:
        process = self.processes[port]
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited ({process.returncode})")
        return redis_cli(port, "PING", timeout=2).strip() == "PONG"

    def kill(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def cleanup(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterServers(_Processes):
    """A 3-master, 3-replica Redis Cluster."""

    def __init__(self) -> None:
        super().__init__("retrieve-cluster-")
        self.ports: list[int] = []
        while len(self.ports) < 6:
            port = free_cluster_port()
            if not {port, port + 10000} & {p + d for p in self.ports for d in (0, 10000)}:
                self.ports.append(port)

    @property
    def url(self) -> str:
        """Two seeds only: the client learns the rest of the topology from them."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def start(self) -> Self:
        try:
            for port in self.ports:
                self.spawn(
                    port,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                )  # fmt: skip
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            done = subprocess.run(
                [_binary("redis-cli"), "--cluster", "create", *nodes,
                 "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}")
            wait_for("cluster state ok on every node", self._all_ok)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _all_ok(self) -> bool:
        for port in self.ports:
            cluster = redis_cli(port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in cluster or "cluster_known_nodes:6" not in cluster:
                return False
        return len(self.masters()) == 3 and all(
            info(port, "replication").get("master_link_status") == "up" for port in self.replicas()
        )

    def _roles(self) -> list[tuple[int, str]]:
        return [(port, info(port, "replication").get("role", "")) for port in self.ports]

    def masters(self) -> list[int]:
        return [port for port, role in self._roles() if role == "master"]

    def replicas(self) -> list[int]:
        return [port for port, role in self._roles() if role == "slave"]

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot`, as the cluster says."""
        for line in redis_cli(self.ports[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"slot {slot} is not served")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.cleanup()


class SentinelServers(_Processes):
    """One primary, one replica and three sentinels monitoring them as `service`."""

    def __init__(self, service: str = "retrieve") -> None:
        super().__init__("retrieve-sentinel-")
        self.service = service
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{sentinels}/{self.service}/0"

    def start(self) -> Self:
        try:
            self.spawn(self.primary_port)
            self.spawn(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
            wait_for("replica in sync", lambda: self._in_sync(self.replica_port))
            for port in self.sentinel_ports:
                config = (
                    f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} 1000\n"
                    f"sentinel failover-timeout {self.service} 10000\n"
                )
                self.spawn(port, "--sentinel", config=config)
            wait_for("sentinels see each other and the replica", self._sentinels_ready)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _in_sync(self, port: int) -> bool:
        return info(port, "replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            state = dict(_pairs(redis_cli(port, "SENTINEL", "MASTER", self.service)))
            if state.get("num-other-sentinels") != "2" or state.get("num-slaves") != "1":
                return False
        return True

    def named_primary(self, sentinel_port: int | None = None) -> int | None:
        """The primary's port, as a sentinel names it."""
        port = sentinel_port or self.sentinel_ports[0]
        reply = redis_cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service).split()
        return int(reply[1]) if len(reply) == 2 else None

    def kill_primary(self) -> int:
        """SIGKILLs the primary; waits (bounded) until every sentinel names the replica and it
        accepts writes. Returns the new primary's port."""
        old, new = self.primary_port, self.replica_port
        self.kill(old)
        wait_for(
            "the sentinels promoted the replica",
            lambda: (
                all(self.named_primary(port) == new for port in self.sentinel_ports)
                and info(new, "replication").get("role") == "master"
            ),
        )
        self.primary_port, self.replica_port = new, old
        return new

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.cleanup()


def _pairs(output: str) -> list[tuple[str, str]]:
    lines = output.splitlines()
    return list(zip(lines[0::2], lines[1::2], strict=False))
