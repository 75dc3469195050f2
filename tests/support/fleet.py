"""Separate `retrieve receiver` and `retrieve worker` processes over one Redis, a load generator
that knows which requests were answered 200, and the ledger that checks none of them was lost.

Used by the fault tests (`tests/faults/`, through the `fleet` fixture) and the multi-process e2e
tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from redis.asyncio import Redis

from retrieve_cli.sink import Sink
from retrieve_core.job import Job
from retrieve_core.keys import AppKeys

from .ports import free_port
from .processes import RetrieveProcess
from .queue_state import quiescent
from .redis_server import RedisServer

NAMESPACE = "faults"
APP = "fleet"
INTEGRATION = "FLEET1"
DELIVERY_HEADER = "X-Test-Delivery"
SINK_PATH = "/fleet"
KEYS = AppKeys(NAMESPACE, APP)


def write_fleet_config(
    directory: Path,
    sink_url: str,
    *,
    retry: dict[str, Any] | None = None,
    integration: dict[str, Any] | None = None,
    application: dict[str, Any] | None = None,
    extra: Sequence[dict[str, Any]] = (),
) -> Path:
    """One application whitelisting loopback, one integration delivering to the sink.

    The integration dedupes on `X-Test-Delivery`, so a client may retry a request whose answer
    it never got (a dropped connection) without creating a second job.
    """
    directory.mkdir(parents=True, exist_ok=True)
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "RetrieveApplication",
            "metadata": {"name": APP, "namespace": NAMESPACE},
            "spec": {
                "webhook": {"enabled": True, "domain": "retrievetl.com"},
                "allowedList": ["127.0.0.1"],
                **(application or {}),
            },
        },
        {
            "apiVersion": "retrievetl.com/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": "fleet-events", "namespace": NAMESPACE},
            "spec": {
                "application": APP,
                "integrationId": INTEGRATION,
                "dedupe": {"header": DELIVERY_HEADER, "ttlSeconds": 3600},
                "destinations": [
                    {"name": "sink", "http": {"url": f"{sink_url}{SINK_PATH}", "timeoutSeconds": 5}}
                ],
                "retry": retry or {"maxAttempts": 8, "backoffSeconds": 0.2, "maxBackoffSeconds": 1},
                **(integration or {}),
            },
        },
        *extra,
    ]
    (directory / "fleet.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return directory


class Receiver:
    """A `retrieve receiver --config-dir` process on its own ports."""

    def __init__(self, config_dir: Path, redis_url: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self._args = [
            "receiver",
            "--config-dir",
            str(config_dir),
            "--redis-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
        ]
        self._env = env
        self.process = RetrieveProcess(self._args, env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> Receiver:
        self.process.start()
        self.process.wait_http(f"{self.admin_url}/readyz")
        return self

    def restart(self) -> Receiver:
        self.process.stop()
        self.process = RetrieveProcess(self._args, self._env)
        return self.start()


class Worker:
    """A `retrieve worker --config-dir` process; `RETRIEVE_CLAIM_IDLE_SECONDS` is kept short."""

    def __init__(
        self,
        config_dir: Path,
        redis_url: str,
        *,
        concurrency: int = 8,
        claim_idle_seconds: float = 1.5,
    ) -> None:
        self.admin_port = free_port()
        self._args = [
            "worker",
            "--config-dir",
            str(config_dir),
            "--redis-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--admin-port",
            str(self.admin_port),
            "--concurrency",
            str(concurrency),
        ]
        self._env = {"RETRIEVE_CLAIM_IDLE_SECONDS": str(claim_idle_seconds)}
        self.process = RetrieveProcess(self._args, self._env)
        self.starts = 0

    def start(self, wait: bool = True) -> Worker:
        self.process = RetrieveProcess(self._args, self._env)
        self.process.start()
        self.starts += 1
        if wait:
            self.process.wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Ledger:
    """What the client saw: the answer each delivery id finally got."""

    sent: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    """Every HTTP status received, retries included."""
    connection_errors: int = 0
    disconnects: int = 0
    """Of `connection_errors`, those after the request was written (the answer never came)."""
    accepted: set[int] = field(default_factory=set)
    """Sequence numbers answered 200 (at least once)."""
    final: dict[int, int | None] = field(default_factory=dict)
    """Sequence number -> last status (None: never answered)."""
    unexpected: list[tuple[int, Any]] = field(default_factory=list)
    """Answers outside the contract's shapes."""
    timeline: list[tuple[float, int | None]] = field(default_factory=list)
    """(monotonic time the answer arrived, status or None for a connection error)."""


async def post_one(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    seq: int,
    ledger: Ledger,
    *,
    attempts: int = 1,
    retry_statuses: frozenset[int] = frozenset(),
    retry_delay: float = 0.05,
) -> int | None:
    """POSTs `{"seq": n}` with delivery id n; on a connection error (or a status in
    `retry_statuses`) tries the next URL, up to `attempts` times. Records what it saw."""
    body = json.dumps({"seq": seq}).encode()
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: f"d-{seq}"}
    status: int | None = None
    for attempt in range(attempts):
        url = urls[(seq + attempt) % len(urls)]
        try:
            async with session.post(
                f"{url}/integration/{INTEGRATION}", data=body, headers=headers
            ) as answer:
                status = answer.status
                payload = await answer.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ledger.connection_errors += 1
            ledger.timeline.append((time.monotonic(), None))
            if not isinstance(exc, aiohttp.ClientConnectorError):
                ledger.disconnects += 1
            status = None
            await asyncio.sleep(retry_delay)
            continue
        ledger.answers[status] += 1
        ledger.timeline.append((time.monotonic(), status))
        if (
            not isinstance(payload, dict)
            or set(payload) != {"result", "error"}
            or payload["result"] is not (status == 200)
        ):
            ledger.unexpected.append((status, payload))
        if status == 200:
            ledger.accepted.add(seq)
            break
        if status not in retry_statuses:
            break
        await asyncio.sleep(retry_delay)
    ledger.final[seq] = status
    return status


async def send_load(
    urls: Sequence[str],
    count: int,
    ledger: Ledger,
    *,
    concurrency: int = 32,
    rate: float | None = None,
    attempts: int = 1,
    retry_statuses: frozenset[int] = frozenset(),
    start: int = 0,
    timeout: float = 30.0,
) -> None:
    """Sends `count` requests (sequence numbers start..start+count-1), `concurrency` at a time,
    at most `rate` a second when given. `timeout` is far above any answer the receiver gives
    (its Redis waits end in a 503 within seconds): a request stored but answered late on a
    loaded machine must not count as refused."""
    numbers = itertools.count(start)
    end = start + count
    began = time.monotonic()
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def lane(session: aiohttp.ClientSession) -> None:
        while (seq := next(numbers)) < end:
            if rate is not None:
                due = began + (seq - start) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            ledger.sent += 1
            await post_one(
                session, urls, seq, ledger, attempts=attempts, retry_statuses=retry_statuses
            )

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))


def delivered_seqs(sink: Sink) -> tuple[Counter[int], Counter[str]]:
    """(deliveries per sequence number, deliveries per Idempotency-Key) the sink recorded."""
    by_seq: Counter[int] = Counter()
    by_key: Counter[str] = Counter()
    for request in sink.received:
        if request.path != SINK_PATH or not isinstance(request.body, dict):
            continue
        by_seq[int(request.body["seq"])] += 1
        by_key[request.headers.get("Idempotency-Key", "")] += 1
    return by_seq, by_key


async def dead_lettered_seqs(redis: Redis) -> set[int]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(KEYS.dead_letters)  # type: ignore[assignment]
    return {int(Job.decode(fields).payload["seq"]) for _, fields in entries}


@dataclass
class Tally:
    """The counts a fault test prints and asserts on."""

    name: str
    sent: int
    ok: int
    status_503: int
    other_statuses: dict[int, int]
    connection_errors: int
    delivered: int
    dead_lettered: int
    duplicates: int
    delivered_not_acked: int
    lost: list[int]
    foreign: list[int]

    def line(self) -> str:
        return (
            f"[{self.name}] sent={self.sent} 200={self.ok} 503={self.status_503} "
            f"other={self.other_statuses} conn_errors={self.connection_errors} "
            f"delivered={self.delivered} dead_lettered={self.dead_lettered} "
            f"duplicates={self.duplicates} delivered_not_acked={self.delivered_not_acked} "
            f"lost={len(self.lost)}"
        )


async def tally(name: str, ledger: Ledger, sink: Sink, redis: Redis) -> Tally:
    by_seq, by_key = delivered_seqs(sink)
    dead = await dead_lettered_seqs(redis)
    done = set(by_seq) | dead
    sent_range = set(ledger.final)
    others = {s: n for s, n in ledger.answers.items() if s not in (200, 503)}
    return Tally(
        name=name,
        sent=len(ledger.final),
        ok=len(ledger.accepted),
        status_503=ledger.answers[503],
        other_statuses=others,
        connection_errors=ledger.connection_errors,
        delivered=len(by_seq),
        dead_lettered=len(dead),
        duplicates=sum(by_key.values()) - len(by_key),
        delivered_not_acked=len(set(by_seq) - ledger.accepted),
        lost=sorted(ledger.accepted - done),
        foreign=sorted(done - sent_range),
    )


async def wait_settled(ledger: Ledger, sink: Sink, redis: Redis, timeout: float) -> None:
    """Waits until every accepted request is delivered or dead-lettered, and the queue is
    quiescent: a straggler (a late duplicate, a delivery of an unacknowledged request) would
    have reached the sink by then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        by_seq, _ = delivered_seqs(sink)
        missing = ledger.accepted - set(by_seq) - await dead_lettered_seqs(redis)
        if not missing and await quiescent(redis, KEYS):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"not settled in {timeout} s: {len(ledger.accepted)} accepted, "
        f"{len(delivered_seqs(sink)[0])} delivered, {len(await dead_lettered_seqs(redis))} dead"
    )


@dataclass
class Fleet:
    """Receivers and workers (separate processes) over one Redis, delivering to the test's sink,
    and the ledger of what the load generator saw; `close()` stops all of them."""

    directory: Path
    redis_server: RedisServer
    sink: Sink
    ledger: Ledger = field(default_factory=Ledger)
    receivers: list[Receiver] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    config: Path | None = None
    _redis: Redis | None = None

    def configure(self, **options: Any) -> Path:
        """The fleet's manifests (`write_fleet_config` options); before the first process."""
        self.config = write_fleet_config(self.directory, self.sink.url, **options)
        return self.config

    def _config(self) -> Path:
        return self.config if self.config is not None else self.configure()

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.redis_server.url)
        return self._redis

    def receiver(self) -> Receiver:
        """One more receiver, started and ready."""
        receiver = Receiver(self._config(), self.redis_server.url).start()
        self.receivers.append(receiver)
        return receiver

    def worker(self, concurrency: int = 8) -> Worker:
        """One more worker, started and ready."""
        worker = Worker(self._config(), self.redis_server.url, concurrency=concurrency).start()
        self.workers.append(worker)
        return worker

    async def answered(self, count: int, timeout: float = 30.0) -> None:
        """Waits until the load generator has had `count` answers: the load is under way."""
        deadline = time.monotonic() + timeout
        while sum(self.ledger.answers.values()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.ledger.answers} answers, wanted {count}")
            await asyncio.sleep(0.05)

    async def settled(self, name: str, timeout: float = 40.0) -> Tally:
        """The counts, once everything accepted is delivered or dead-lettered (`wait_settled`)."""
        await wait_settled(self.ledger, self.sink, self.redis, timeout=timeout)
        return await tally(name, self.ledger, self.sink, self.redis)

    async def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for receiver in self.receivers:
            receiver.process.stop()
        if self._redis is not None:
            await self._redis.aclose()
