"""`retrieve receiver --processes N`: N receiver processes on one port, under one parent.

One event loop uses one core; a pod asking for several cores runs several receivers. The parent:

- starts N children (`retrieve receiver ... --processes 1`), each binding the public port with
  SO_REUSEPORT, so the kernel spreads new connections over them, and its admin port on a private
  loopback port;
- once every child answers `/healthz`, serves the admin port itself: `/healthz`, `/readyz` (its
  configuration and Redis, as one receiver's), `/api/logs`, the console, and `/metrics` with every
  child's metrics, each sample labelled `process="<index>"`, plus
  `retrieve_receiver_process_up{process,pid}`;
- on SIGTERM/SIGINT forwards SIGTERM to every child, which stops accepting, finishes the
  requests in flight and exits; the parent exits when all have (0 when all exited 0);
- when a child exits on its own, stops the others and exits 1 instead of restarting it: a pod
  running fewer processes than it asked for would hide behind a passing probe, and Kubernetes
  restarts the container (with backoff and a restart count someone can see).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

from retrieve_core.constants import ENV_REDIS_URL
from retrieve_core.provider import ConfigProvider

from .components import SourceFactory, run_until_signal

if TYPE_CHECKING:
    from retrieve_receiver.settings import ReceiverSettings

log = logging.getLogger("retrieve.supervisor")

CHILD_START_TIMEOUT = 60.0
CHILD_DRAIN_TIMEOUT = 35.0
"""How long a child may take to drain after SIGTERM (its own limit is 10 s) before SIGKILL."""

_PR_SET_PDEATHSIG = 1


class ChildExited(Exception):
    """A receiver process ended without being asked to."""


def die_with_supervisor() -> None:
    """In a child (`--supervised`): SIGTERM when the supervisor dies, even by SIGKILL (Linux).

    Set by the child itself, not between fork and exec (the supervisor has threads then)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before that: nobody would forward SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_command(args: argparse.Namespace, admin_port: int) -> list[str]:
    """The command line of one child: this receiver's, as one process sharing the port."""
    command = [sys.executable, "-m", "retrieve_cli.main", "--log-level", args.log_level]
    command += ["receiver", "--host", args.host, "--port", str(args.port)]
    command += ["--admin-host", "127.0.0.1", "--admin-port", str(admin_port)]
    command += ["--processes", "1", "--supervised"]
    if args.config_dir is not None:
        command += ["--config-dir", str(args.config_dir)]
    if args.from_cluster:
        command.append("--from-cluster")
    if args.namespace:
        command += ["--namespace", args.namespace]
    if args.app:
        command += ["--app", args.app]
    return command


class ReceiverProcesses:
    """The children of one supervisor (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, count: int) -> None:
        self.args = args
        self.count = count
        self.admin_ports = [_free_loopback_port() for _ in range(count)]
        self.children: list[asyncio.subprocess.Process] = []
        self.serving = asyncio.Event()
        self._stopping = False

    def sources(self) -> list[tuple[int, int, str]]:
        return [
            (index, child.pid, f"http://127.0.0.1:{port}/metrics")
            for index, (child, port) in enumerate(
                zip(self.children, self.admin_ports, strict=False)
            )
        ]

    async def run(self) -> None:
        """Start the children, wait until each serves, then until they end."""
        env = dict(os.environ)
        if self.args.redis_url:  # by environment: a URL's password stays out of `ps`
            env[ENV_REDIS_URL] = self.args.redis_url
        try:
            for index, port in enumerate(self.admin_ports):
                if self._stopping:  # SIGTERM while starting: start no more (finally: drain)
                    return
                child = await asyncio.create_subprocess_exec(
                    *child_command(self.args, port), env=env
                )
                self.children.append(child)
                log.info("receiver process %d started (pid %d)", index, child.pid)
            exits = [asyncio.ensure_future(child.wait()) for child in self.children]
            await self._until_serving(exits)
            self.serving.set()
            await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
            if not self._stopping:
                self._raise_for_exit()
            await asyncio.wait(exits)
            failed = [c for c in self.children if c.returncode not in (0, None)]
            if failed:
                codes = ", ".join(f"pid {c.pid}: {c.returncode}" for c in failed)
                raise ChildExited(f"receiver processes failed while draining ({codes})")
        finally:
            await self._kill_leftovers()

    def stop(self) -> None:
        """SIGTERM to every child: each drains and exits (`run` then returns)."""
        self._stopping = True
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    def _raise_for_exit(self) -> None:
        for index, child in enumerate(self.children):
            if child.returncode is not None:
                self.stop()
                raise ChildExited(
                    f"receiver process {index} (pid {child.pid}) exited with "
                    f"{child.returncode}; stopping the others"
                )

    async def _until_serving(self, exits: Sequence[asyncio.Future[int]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHILD_START_TIMEOUT
        waiting = set(range(self.count))
        while waiting and not self._stopping:
            if any(e.done() for e in exits):
                self._raise_for_exit()
            if loop.time() > deadline:
                raise ChildExited(f"receiver processes {sorted(waiting)} never became healthy")
            for index in list(waiting):
                url = f"http://127.0.0.1:{self.admin_ports[index]}/healthz"
                if await asyncio.to_thread(_answers, url):
                    waiting.discard(index)
            if waiting:
                await asyncio.sleep(0.1)

    async def _kill_leftovers(self) -> None:
        live = [c for c in self.children if c.returncode is None]
        if not live:
            return
        self.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHILD_DRAIN_TIMEOUT):
                await asyncio.gather(*(c.wait() for c in live))
        for child in live:
            if child.returncode is None:
                log.warning("receiver process pid %d did not drain in time: killed", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def supervise_receivers(
    args: argparse.Namespace,
    source: SourceFactory,
    provider: ConfigProvider,
    settings: ReceiverSettings,
) -> None:
    """Run `args.processes` receivers and the shared admin port until SIGTERM (see above)."""
    from retrieve_receiver.metrics import ProcessSource, process_group_metrics
    from retrieve_receiver.serving import run_admin

    group = ReceiverProcesses(args, args.processes)
    metrics = process_group_metrics(lambda: [ProcessSource(*s) for s in group.sources()])

    async def admin() -> None:
        await group.serving.wait()
        await run_admin(settings, provider, args.admin_host or args.host, args.admin_port, metrics)

    await run_until_signal(
        [
            (source(provider), None),
            (admin(), None),
            (group.run(), group.stop),
        ]
    )
