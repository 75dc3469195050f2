"""Real Redis Cluster and Sentinel setups from Debian's redis-server, on loopback free ports.

`ClusterServers`: `masters` masters with `replicas` replicas each (`redis-cli --cluster
create`). `SentinelServers`: one primary, one replica, three sentinels (`redis-server
--sentinel`). Every node is the product's `RedisServer` (dev mode's launcher) without
persistence, stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Self

from retrieve_cli.redis_server import RedisServer

from .waits import free_port, wait_for

START_SECONDS = 30.0


def free_cluster_port(taken: Collection[int] = ()) -> int:
    """A free port, not in `taken`, whose cluster bus port (+10000) is free too, below the
    ephemeral range (redis-server refuses a cluster port above 55535)."""
    for _ in range(500):
        port = random.randrange(20000, 30000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_cli_binary() -> str:
    path = shutil.which("redis-cli")
    if path is None:
        raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
    return path


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """One redis-cli command against 127.0.0.1:`port`; its output ('' when it failed)."""
    try:
        done = subprocess.run(
            [redis_cli_binary(), "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def info(port: int, section: str) -> dict[str, str]:
    lines = redis_cli(port, "INFO", section, timeout=3).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def slot_owner(port: int, slot: int) -> int | None:
    """The port of the master serving `slot`, as the node on `port` sees it (None: no one)."""
    for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for part in fields[8:]:
            low, _, high = part.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    return None


class RedisNodes(ABC):
    """redis-server processes without persistence, by port; a context manager that starts them
    all and stops them all (a SIGSTOPped one is continued first, so it can shut down)."""

    def __init__(self) -> None:
        self.nodes: dict[int, RedisServer] = {}

    def spawn(self, port: int, *options: str, config: str | None = None) -> RedisServer:
        node = RedisServer(port, appendonly=False, options=options, config=config)
        self.nodes[port] = node  # before it starts: cleanup() removes its folder if it fails
        return node.start()

    def pid(self, port: int) -> int:
        return self.nodes[port].pid

    def running(self) -> list[int]:
        """The ports of the nodes that have not been killed."""
        return [port for port, node in self.nodes.items() if node.process is not None]

    def signal(self, port: int, sig: signal.Signals) -> None:
        process = self.nodes[port].process
        if process is not None and process.poll() is None:
            process.send_signal(sig)

    def kill(self, port: int) -> None:
        """SIGKILL, as when the node dies."""
        self.nodes[port].stop(kill=True)

    @abstractmethod
    def start(self) -> Self:
        """Spawns the nodes and waits (bounded) until they work together."""

    def cleanup(self) -> None:
        for port in self.running():
            self.signal(port, signal.SIGCONT)
        for node in self.nodes.values():
            node.cleanup()
        self.nodes.clear()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


class ClusterServers(RedisNodes):
    """A Redis Cluster of `masters` masters with `replicas` replicas each."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.master_count, self.replicas_each = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        taken: set[int] = set()
        while len(self.ports) < masters * (1 + replicas):
            port = free_cluster_port(taken)
            taken |= {port, port + 10000}
            self.ports.append(port)

    @property
    def url(self) -> str:
        """Two seeds only: the client learns the rest of the topology from them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> Self:
        for port in self.ports:
            self.spawn(
                port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
            )  # fmt: skip
        done = subprocess.run(
            [redis_cli_binary(), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}")
        wait_for("cluster state ok on every node", self._all_ok, START_SECONDS)
        return self

    def _all_ok(self) -> bool:
        for port in self.ports:
            state = redis_cli(port, "CLUSTER", "INFO", timeout=3)
            if "cluster_state:ok" not in state or (
                f"cluster_known_nodes:{len(self.ports)}" not in state
            ):
                return False
        return len(self.masters()) == self.master_count and all(
            info(port, "replication").get("master_link_status") == "up" for port in self.replicas()
        )

    def _roles(self) -> list[tuple[int, str]]:
        return [(port, info(port, "replication").get("role", "")) for port in self.running()]

    def masters(self) -> list[int]:
        return [port for port, role in self._roles() if role == "master"]

    def replicas(self) -> list[int]:
        return [port for port, role in self._roles() if role == "slave"]

    def replica_of(self, master: int) -> int:
        for port in self.replicas():
            if info(port, "replication").get("master_port") == str(master):
                return port
        raise LookupError(f"no replica of {master}")

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot`, as the first running node says."""
        owner = slot_owner(self.running()[0], slot)
        if owner is None:
            raise LookupError(f"slot {slot} is not served")
        return owner


class SentinelServers(RedisNodes):
    """One primary, one replica and three sentinels monitoring them as `service`."""

    def __init__(self, service: str = "retrieve") -> None:
        super().__init__()
        self.service = service
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{sentinels}/{self.service}/0"

    def start(self) -> Self:
        self.spawn(self.primary_port)
        self.spawn(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        wait_for("replica in sync", lambda: self._in_sync(self.replica_port), START_SECONDS)
        for port in self.sentinel_ports:
            config = (
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            self.spawn(port, "--sentinel", config=config)
        wait_for("sentinels see each other and the replica", self._sentinels_ready, START_SECONDS)
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
            START_SECONDS,
        )
        self.primary_port, self.replica_port = new, old
        return new


def _pairs(output: str) -> list[tuple[str, str]]:
    lines = output.splitlines()
    return list(zip(lines[0::2], lines[1::2], strict=False))
