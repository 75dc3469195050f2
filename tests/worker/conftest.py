"""Worker test harness: a real Redis, the root `sink` fixture as destination, a worker per test."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from retrieve_core.config import ApplicationConfig, IntegrationConfig, SecretStore
from retrieve_core.job import Job, new_job_id
from retrieve_core.keys import AppKeys
from retrieve_core.logstore import LogRecord, LogStatus, LogStore, add_record
from retrieve_core.models import IntegrationSpec, RetrieveApplicationSpec
from retrieve_core.provider import ConfigProvider
from retrieve_worker import Worker, WorkerSettings
from tests.support.redis_server import RedisServer

WAIT_SECONDS = 15.0


def make_app(name: str, integrations: dict[str, dict[str, Any]]) -> ApplicationConfig:
    """An application `test/<name>` with integrations given as Integration specs (camelCase)."""
    return ApplicationConfig(
        namespace="test",
        name=name,
        spec=RetrieveApplicationSpec.model_validate(
            {"webhook": {"domain": "example.com"}, "worker": {"concurrency": 8}}
        ),
        integrations=tuple(
            IntegrationConfig(
                id=integration_id,
                name=integration_id.lower(),
                spec=IntegrationSpec.model_validate({"application": name, **spec}),
            )
            for integration_id, spec in integrations.items()
        ),
    )


@dataclass
class Harness:
    redis: Redis
    redis_url: str
    provider: ConfigProvider
    app: ApplicationConfig
    workers: list[tuple[Worker, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def keys(self) -> AppKeys:
        return self.app.keys

    @property
    def logs(self) -> LogStore:
        return LogStore(self.redis, self.keys)

    def settings(self, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "consumer": f"worker-{uuid.uuid4().hex[:8]}",
            "block_ms": 100,
            "claim_interval_seconds": 0.2,
            "delayed_poll_seconds": 0.05,
            "shutdown_timeout_seconds": 5,
        }
        values.update(overrides)
        return WorkerSettings(**values)

    async def start_worker(self, **overrides: Any) -> Worker:
        worker = Worker(self.settings(**overrides), self.provider)
        task = asyncio.create_task(worker.run())
        self.workers.append((worker, task))
        await asyncio.wait_for(worker.running.wait(), WAIT_SECONDS)
        for consumer in worker.consumers.values():
            await asyncio.wait_for(consumer.ready.wait(), WAIT_SECONDS)
        return worker

    async def stop_workers(self) -> None:
        for worker, task in self.workers:
            worker.stop()
            await asyncio.wait_for(task, WAIT_SECONDS)
        self.workers.clear()

    async def enqueue(self, integration_id: str, payload: Any, **job_fields: Any) -> Job:
        """What the receiver does: the queued log record and the job, in one MULTI."""
        job = Job(
            id=new_job_id(),
            integration_id=integration_id,
            application=self.app.name,
            namespace=self.app.namespace,
            received_at=time.time(),
            source_ip="203.0.113.5",
            format="json",
            headers={"Content-Type": "application/json"},
            payload=payload,
            **job_fields,
        )
        record = LogRecord(
            id=job.id,
            ts=job.received_at,
            source_ip=job.source_ip,
            integration_id=integration_id,
            http_status=200,
            status=LogStatus.QUEUED,
            format="json",
            payload=json.dumps(payload),
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            add_record(pipe, self.keys, record, 3600)
            pipe.xadd(self.keys.jobs, job.encode())  # type: ignore[arg-type]
            await pipe.execute()
        return job

    async def wait_status(
        self, job_id: str, *statuses: LogStatus, within: float = WAIT_SECONDS
    ) -> LogRecord:
        deadline = time.monotonic() + within
        record = None
        while time.monotonic() < deadline:
            record = await self.logs.get(job_id)
            if record is not None and record.status in statuses:
                return record
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never reached {statuses}; last record: {record}")

    async def eventually(
        self, check: Callable[[], Awaitable[bool]], within: float = WAIT_SECONDS
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not met in time")


@pytest.fixture
async def harness_factory(
    redis_server: RedisServer, redis_client: Redis
) -> AsyncIterator[Callable[[dict[str, dict[str, Any]]], Harness]]:
    made: list[Harness] = []

    def make(integrations: dict[str, dict[str, Any]]) -> Harness:
        app = make_app(f"app-{uuid.uuid4().hex[:8]}", integrations)
        provider = ConfigProvider()
        provider.update((app,), SecretStore())
        harness = Harness(redis_client, redis_server.url, provider, app)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            await harness.stop_workers()
