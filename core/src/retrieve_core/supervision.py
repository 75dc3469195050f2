"""Supervised long-lived tasks: a named loop restarted with capped, jittered backoff when it raises.

A component's background loops (a worker's read, claim and upkeep loops, a receiver's log trim)
run under one `Supervisor`:

- `start(name, factory)` runs `factory(beat)` in a task. The loop calls `beat()` after each
  successful round (a Redis round trip that worked): that is how a loop that failed says it has
  recovered.
- When the coroutine raises, it is started again after `Backoff.delay(failures)`: exponential,
  capped, with jitter so that many loops failing together do not retry in step. A run that lasted
  `healthy_after` seconds before failing resets the backoff.
- One log line per state change, not per retry: "loop X failed: <error>; retrying in N s" when it
  goes down, "loop X recovered" at its first beat after that. Retries in between log at DEBUG.
- Metrics per loop in the caller's registry: `<prefix>_loop_restarts_total`, `<prefix>_loop_up`,
  `<prefix>_loop_last_error_timestamp_seconds` (label `loop`).
- `down()` names the required loops that are down, for `/readyz`.
- A coroutine that returns has ended and is not restarted. `SupervisedLoop.finish()` stops the
  restarting and waits for the running round to return; `stop()` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

Beat = Callable[[], None]
"""Called by a loop after a successful round."""
LoopFactory = Callable[[Beat], Awaitable[None]]
"""Makes one run of a loop; called again for each restart."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter."""

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    """The delay is taken uniformly from [(1 - jitter) * d, d], where d is the capped delay."""
    healthy_after: float = 30.0
    """A run that lasted this long before it failed counts as healthy: the backoff starts over."""

    def capped(self, failures: int) -> float:
        """The delay before the next start after `failures` failures in a row, before jitter."""
        exponent = max(0, failures - 1)
        if self.initial * self.factor ** min(exponent, 64) >= self.maximum:
            return self.maximum
        return float(self.initial * self.factor**exponent)

    def delay(self, failures: int, draw: float) -> float:
        """`capped(failures)` less a jitter share; `draw` is uniform in [0, 1)."""
        return self.capped(failures) * (1.0 - self.jitter * draw)


class SupervisorMetrics:
    """The loops' metrics, registered once in a registry the caller owns (`of`)."""

    @classmethod
    def of(cls, registry: CollectorRegistry, prefix: str) -> SupervisorMetrics:
        """The metrics `prefix` in `registry`, registered at the first call: supervisors that
        share a registry (an app factory called twice on one registry) share its series."""
        known = _REGISTERED.setdefault(registry, {})
        if prefix not in known:
            known[prefix] = cls(registry, prefix)
        return known[prefix]

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.restarts = Counter(
            f"{prefix}_loop_restarts_total",
            "Restarts of a background loop after it failed.",
            ["loop"],
            registry=registry,
        )
        self.up = Gauge(
            f"{prefix}_loop_up",
            "1 while a background loop runs normally, 0 from its failure until it recovers.",
            ["loop"],
            registry=registry,
        )
        self.last_error = Gauge(
            f"{prefix}_loop_last_error_timestamp_seconds",
            "Unix time of a background loop's last failure (0: none).",
            ["loop"],
            registry=registry,
        )

    def forget(self, name: str) -> None:
        for metric in (self.restarts, self.up, self.last_error):
            with contextlib.suppress(KeyError):
                metric.remove(name)


_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, SupervisorMetrics]] = (
    weakref.WeakKeyDictionary()
)


class SupervisedLoop:
    """One named loop under a `Supervisor` (see the module's docstring)."""

    def __init__(
        self, supervisor: Supervisor, name: str, factory: LoopFactory, required: bool
    ) -> None:
        self.name = name
        self.required = required
        self.up = True
        self.failures = 0
        """Failures in a row (reset by a healthy run)."""
        self.restarts = 0
        self.retry_in = 0.0
        """The delay chosen after the last failure."""
        self.last_error: BaseException | None = None
        self._supervisor = supervisor
        self._factory = factory
        self._finishing = asyncio.Event()
        self._metrics = supervisor.metrics
        self._metrics.up.labels(name).set(1)
        self._metrics.last_error.labels(name).set(0)
        self._metrics.restarts.labels(name)
        self.task = asyncio.create_task(self._run(), name=f"loop {name}")

    def beat(self) -> None:
        """The loop did a round's work: if it was down, it has recovered."""
        if self.up:
            return
        self.up = True
        self._metrics.up.labels(self.name).set(1)
        log.info("loop %s recovered", self.name)

    async def finish(self) -> None:
        """No more restarts; waits for the running round to return (a backoff ends at once)."""
        self._finishing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.task)

    async def stop(self) -> None:
        """Cancels the loop and waits for it to end."""
        self._finishing.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        supervisor = self._supervisor
        while not self._finishing.is_set():
            started = supervisor.clock()
            try:
                await self._factory(self.beat)
            except Exception as exc:
                if supervisor.clock() - started >= supervisor.backoff.healthy_after:
                    self.failures = 0
                self.failures += 1
                self.last_error = exc
                self._metrics.last_error.labels(self.name).set(time.time())
                delay = self.retry_in = supervisor.backoff.delay(self.failures, supervisor.draw())
                if self.up:
                    self.up = False
                    self._metrics.up.labels(self.name).set(0)
                    log.warning(
                        "loop %s failed: %s; retrying in %.3g s",
                        self.name,
                        _describe(exc),
                        delay,
                    )
                else:
                    log.debug("loop %s failed again: %s", self.name, _describe(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finishing.wait(), delay)
                if self._finishing.is_set():
                    return
                self.restarts += 1
                self._metrics.restarts.labels(self.name).inc()
                continue
            return  # a loop that returns has ended


class Supervisor:
    """Runs named loops, restarts them when they fail, and says which required ones are down."""

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = SupervisorMetrics.of(registry, prefix)
        self.backoff = backoff if backoff is not None else Backoff()
        self.clock = clock
        self.draw = draw
        self.loops: dict[str, SupervisedLoop] = {}

    def start(self, name: str, factory: LoopFactory, *, required: bool = True) -> SupervisedLoop:
        """Starts `factory(beat)` as the loop `name` (a name in use is refused)."""
        if name in self.loops and not self.loops[name].task.done():
            raise ValueError(f"loop {name} is already running")
        loop = SupervisedLoop(self, name, factory, required)
        self.loops[name] = loop
        return loop

    def down(self) -> list[str]:
        """The required loops that failed and have not recovered yet."""
        return sorted(
            name
            for name, loop in self.loops.items()
            if loop.required and not loop.up and not loop.task.done()
        )

    @property
    def healthy(self) -> bool:
        return not self.down()

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancels the given loops (default: all), waits for them and forgets their metrics."""
        chosen = list(self.loops) if names is None else [n for n in names if n in self.loops]
        await asyncio.gather(*(self.loops[name].stop() for name in chosen))
        self.forget(chosen)

    def forget(self, names: list[str]) -> None:
        """Drops ended loops from the view and their metrics from the registry."""
        for name in names:
            loop = self.loops.get(name)
            if loop is not None and loop.task.done():
                del self.loops[name]
                self.metrics.forget(name)


def _describe(exc: BaseException) -> str:
    text = str(exc).rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
