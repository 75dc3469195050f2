"""The worker: serves each application's job stream and runs the workflow of every job.

One `AppConsumer` per served application (consumer.py: reading, reclaiming, upkeep loops), whose
jobs a `JobRunner` runs and records (jobs.py). The worker follows the configuration: a new
application gets a consumer, a removed one is drained and dropped. Every long-lived loop runs
under one `Supervisor` (retrieve_core.supervision): `down()` names the required loops that are
down, for `/readyz` (admin.py).

Delivery is at least once: an entry is acked only in the script call that stores its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from retrieve_core.config import ApplicationConfig, IntegrationConfig
from retrieve_core.provider import ConfigProvider, ConfigSnapshot
from retrieve_core.redisclient import RedisClient, Timeouts, connect_redis
from retrieve_core.sandbox import Sandbox
from retrieve_core.supervision import Backoff, Supervisor

from .consumer import AppConsumer
from .destinations import create_client
from .httpclient import DestinationClient
from .metrics import WorkerMetrics
from .notify import Notifier

log = logging.getLogger(__name__)


def default_consumer_name() -> str:
    """The pod name in Kubernetes (`POD_NAME` from the downward API), else host and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    concurrency: int | None = None
    """Jobs in flight per application; None takes the application's `spec.worker.concurrency`."""
    consumer: str = field(default_factory=default_consumer_name)
    applications: tuple[str, ...] = ()
    """`namespace/name` of the applications to serve; empty serves every one the provider has."""
    block_ms: int = 2000
    read_count: int = 128
    claim_idle_ms: int = 60_000
    """A delivery unacknowledged for this long is taken over by another consumer."""
    claim_interval_seconds: float = 10.0
    max_deliveries: int = 10
    """A job delivered this many times without an outcome is dead-lettered (poison pill)."""
    delayed_poll_seconds: float = 0.5
    delayed_batch: int = 500
    log_trim_interval_seconds: float = 60.0
    queue_sample_seconds: float = 5.0
    """How often the queue depth and processing-delay gauges are sampled."""
    shutdown_timeout_seconds: float = 30.0
    commit_batch: int = 256
    max_rewrite_contexts: int = 256
    notify_poll_seconds: float = 0.5
    """How often due error notifications are claimed (the first of a quiet spell waits this
    long at most)."""
    loop_backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.1, maximum=5.0))
    """How a failed loop (read, claim, ...) is restarted: capped exponential backoff, jitter;
    the cap bounds how long jobs wait after Redis is back."""
    admin_max_connections: int = 64
    """Open connections the admin port (probes, metrics) accepts at once (0: no cap)."""
    admin_header_timeout: float = 10.0
    """Seconds a connection to the admin port has to send a complete request head (0: none)."""


def _app_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class Worker:
    """Serves the applications of a `ConfigProvider` until `stop()`."""

    def __init__(
        self,
        settings: WorkerSettings,
        provider: ConfigProvider,
        *,
        registry: CollectorRegistry | None = None,
        redis: RedisClient | None = None,
        client: DestinationClient | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.metrics = WorkerMetrics(registry)
        self.supervisor = Supervisor(
            self.metrics.registry, "retrieve_worker", backoff=settings.loop_backoff
        )
        self._own_redis = redis is None
        # Commands are bounded; the blocking XREADGROUP sets its own (shorter) block time.
        timeouts = Timeouts(socket=settings.block_ms / 1000 + 10)
        self.redis = redis if redis is not None else connect_redis(settings.redis_url, timeouts)
        self._own_client = client is None
        self._client = client
        self.sandbox = Sandbox(max_contexts=settings.max_rewrite_contexts)
        self.notifier = Notifier()
        self.consumers: dict[str, AppConsumer] = {}
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._integrations: dict[tuple[str, str, str], IntegrationConfig] = {}
        self._version = -1
        self.running = asyncio.Event()

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def client(self) -> DestinationClient:
        """The HTTP client of the destinations."""
        if self._client is None:
            raise RuntimeError("the worker is not running")
        return self._client

    def stop(self) -> None:
        self._stop.set()

    def down(self) -> list[str]:
        """The required loops that failed and have not recovered (empty: all is well)."""
        return self.supervisor.down()

    # ------------------------------------------------------------------ configuration

    def _served(self, snapshot: ConfigSnapshot) -> dict[str, ApplicationConfig]:
        wanted = set(self.settings.applications)
        return {
            _app_id(app.namespace, app.name): app
            for app in snapshot.applications
            if not wanted or _app_id(app.namespace, app.name) in wanted
        }

    def application(self, namespace: str, name: str) -> ApplicationConfig | None:
        return self.provider.current.application(namespace, name)

    def integration(
        self, namespace: str, name: str, integration_id: str
    ) -> IntegrationConfig | None:
        snapshot = self.provider.current
        if snapshot.version != self._version:
            self._integrations = {
                (app.namespace, app.name, i.id): i
                for app in snapshot.applications
                for i in app.integrations
            }
            self._version = snapshot.version
        return self._integrations.get((namespace, name, integration_id))

    def _on_config(self, _snapshot: ConfigSnapshot) -> None:
        self._changed.set()

    async def _reconcile(self) -> None:
        served = self._served(self.provider.current)
        for app_id in [a for a in self.consumers if a not in served]:
            consumer = self.consumers.pop(app_id)
            log.info("no longer serving %s", app_id)
            await consumer.wait_stopped()
        for app_id, app in served.items():
            if app_id not in self.consumers:
                consumer = AppConsumer(self, app)
                self.consumers[app_id] = consumer
                consumer.start()
                log.info(
                    "serving %s as consumer %s (concurrency %d)",
                    app_id,
                    self.settings.consumer,
                    consumer.concurrency,
                )
        live = {i.id for app in served.values() for i in app.integrations}
        self.sandbox.forget(lambda key: key.split(":", 1)[0] in live)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        if self._client is None:
            self._client = create_client()
        self.provider.subscribe(self._on_config)
        try:
            await self._wait(self.provider.loaded)
            while not self._stop.is_set():
                self._changed.clear()
                await self._reconcile()
                self.running.set()
                await self._wait(self._changed)
        finally:
            await asyncio.gather(
                *(c.wait_stopped() for c in self.consumers.values()), return_exceptions=True
            )
            self.consumers.clear()
            await self.supervisor.stop()
            self.sandbox.close()
            await self.notifier.close()
            if self._own_client and self._client is not None:
                await self._client.close()
                self._client = None
            if self._own_redis:
                await self.redis.aclose()

    async def _wait(self, event: asyncio.Event) -> None:
        """Waits for `event` or for `stop()`."""
        if event.is_set():
            return
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


async def run_worker(
    settings: WorkerSettings,
    provider: ConfigProvider,
    *,
    registry: CollectorRegistry | None = None,
    handle_signals: bool = True,
) -> None:
    """Runs a worker until SIGTERM/SIGINT (when `handle_signals`) or cancellation.

    On a signal the worker stops reading, finishes in-flight jobs and leaves the consumer group.
    Metrics go to `registry` (serve it on `/metrics` if you like).
    """
    worker = Worker(settings, provider, registry=registry)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, worker.stop)
                installed.append(signum)
    try:
        await worker.run()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
