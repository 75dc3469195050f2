"""The loop supervisor: restarts with capped, jittered backoff, one log line per state change,
metrics per loop, the `down()` view, and clean cancellation. Nothing runs but the event loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from retrieve_core.supervision import Backoff, Beat, Supervisor

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

TINY = Backoff(initial=0.001, maximum=0.004, factor=2.0, jitter=0.5, healthy_after=100.0)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, metric: str, loop: str) -> float | None:
    return registry.get_sample_value(f"test_{metric}", {"loop": loop})


def test_the_backoff_doubles_from_its_start_and_stops_at_its_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, factor=2.0)

    assert [backoff.capped(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.capped(10_000) == 10.0  # no overflow however long the outage


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
@pytest.mark.parametrize("failures", [1, 3, 20])
def test_jitter_keeps_the_delay_between_its_floor_and_the_capped_delay(
    draw: float, failures: int
) -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, jitter=0.4)
    capped = backoff.capped(failures)

    delay = backoff.delay(failures, draw)

    assert (1 - 0.4) * capped <= delay <= capped
    assert delay == pytest.approx(capped * (1 - 0.4 * draw))


async def test_a_failing_loop_is_restarted_logged_once_each_way_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    supervisor = Supervisor(registry, "test", backoff=TINY, draw=lambda: 0.0)
    seen_while_down: list[tuple[list[str], float | None, float | None]] = []
    runs = 0
    recovered = asyncio.Event()

    async def flaky(beat: Beat) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            seen_while_down.append(
                (
                    supervisor.down(),
                    sample(registry, "loop_up", "reader"),
                    sample(registry, "loop_restarts_total", "reader"),
                )
            )
        if runs <= 5:
            raise ConnectionError(f"Connection refused ({runs})")
        beat()
        recovered.set()
        await asyncio.Event().wait()  # runs on, healthy

    with caplog.at_level(logging.DEBUG, logger="retrieve_core.supervision"):
        loop = supervisor.start("reader", flaky)
        await recovered.wait()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert warnings == [
        "loop reader failed: ConnectionError: Connection refused (1); retrying in 0.001 s"
    ]
    assert infos == ["loop reader recovered"]
    # Each restart saw the loop down, with one more restart counted each time.
    assert [down for down, _, _ in seen_while_down] == [["reader"]] * 5
    assert [up for _, up, _ in seen_while_down] == [0.0] * 5
    assert [count for _, _, count in seen_while_down] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert supervisor.down() == []
    assert supervisor.healthy
    assert sample(registry, "loop_up", "reader") == 1.0
    assert sample(registry, "loop_restarts_total", "reader") == 5.0
    assert (sample(registry, "loop_last_error_timestamp_seconds", "reader") or 0) > 0
    assert loop.failures == 5
    assert loop.retry_in == TINY.maximum  # capped: 0.001, 0.002, 0.004, 0.004, 0.004

    await supervisor.stop()
    assert loop.task.done()
    assert sample(registry, "loop_up", "reader") is None  # a stopped loop leaves no series


async def test_the_backoff_grows_while_failing_and_starts_over_after_a_healthy_run() -> None:
    clock = Clock()
    backoff = Backoff(initial=0.001, maximum=1.0, factor=2.0, jitter=0.5, healthy_after=60.0)
    supervisor = Supervisor(
        CollectorRegistry(), "test", backoff=backoff, clock=clock, draw=lambda: 0
    )
    delays: list[float] = []
    runs = 0
    done = asyncio.Event()

    async def body(beat: Beat) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            delays.append(loop.retry_in)
        if runs == 4:  # this run works for a long while (by the loop's clock), then fails
            beat()
            clock.now += 61.0
        if runs == 6:
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("boom")

    loop = supervisor.start("upkeep", body)
    await done.wait()
    await supervisor.stop()

    assert delays == [0.001, 0.002, 0.004, 0.001, 0.002]


async def test_jittered_delays_stay_within_their_bounds() -> None:
    draws = iter([0.0, 0.999, 0.5, 0.25])
    backoff = Backoff(initial=0.001, maximum=0.002, factor=2.0, jitter=0.5)
    supervisor = Supervisor(CollectorRegistry(), "test", backoff=backoff, draw=lambda: next(draws))
    delays: list[float] = []
    done = asyncio.Event()

    async def body(beat: Beat) -> None:
        if loop.failures:
            delays.append(loop.retry_in)
        if len(delays) == 4:
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("down")

    loop = supervisor.start("jittered", body)
    await done.wait()
    await supervisor.stop()

    assert delays == pytest.approx([0.001, 0.001001, 0.0015, 0.00175])
    for failures, delay in enumerate(delays, start=1):
        assert 0.5 * backoff.capped(failures) <= delay <= backoff.capped(failures)


async def test_an_optional_loop_that_is_down_does_not_make_the_supervisor_unhealthy() -> None:
    supervisor = Supervisor(CollectorRegistry(), "test", backoff=Backoff(initial=3600))
    failed = asyncio.Event()

    async def required(beat: Beat) -> None:
        beat()
        await asyncio.Event().wait()

    async def optional(beat: Beat) -> None:
        failed.set()
        raise OSError("no route")

    supervisor.start("read", required)
    sampler = supervisor.start("sample", optional, required=False)
    await failed.wait()  # the supervisor handled the failure before this waiter resumed

    assert not sampler.up

    assert supervisor.down() == []
    assert supervisor.healthy
    await supervisor.stop()


async def test_stop_cancels_a_running_loop_and_finish_ends_a_backoff_at_once() -> None:
    supervisor = Supervisor(CollectorRegistry(), "test", backoff=Backoff(initial=3600))
    running, failed = asyncio.Event(), asyncio.Event()
    cleaned_up = False

    async def blocked(beat: Beat) -> None:
        nonlocal cleaned_up
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up = True

    async def failing(beat: Beat) -> None:
        failed.set()
        raise RuntimeError("down for an hour")

    blocked_loop = supervisor.start("blocked", blocked)
    failing_loop = supervisor.start("failing", failing)
    await running.wait()
    await failed.wait()

    await asyncio.wait_for(failing_loop.finish(), 10)  # not after the hour's backoff
    await asyncio.wait_for(supervisor.stop(["blocked"]), 10)

    assert cleaned_up
    assert blocked_loop.task.cancelled()
    assert failing_loop.task.done()
    assert not failing_loop.task.cancelled()
    assert failing_loop.restarts == 0
    assert "blocked" not in supervisor.loops


async def test_a_loop_that_returns_has_ended_and_is_not_restarted() -> None:
    supervisor = Supervisor(CollectorRegistry(), "test", backoff=TINY)
    runs = 0

    async def once(beat: Beat) -> None:
        nonlocal runs
        runs += 1
        beat()

    loop = supervisor.start("once", once)
    await loop.task
    supervisor.start("once", once)  # an ended loop's name may be used again

    assert runs == 1
    assert loop.restarts == 0
    assert supervisor.down() == []

    async def forever(beat: Beat) -> None:
        await asyncio.Event().wait()

    blocked = supervisor.start("blocked", forever)
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("blocked", once)
    await supervisor.stop()
    assert blocked.task.cancelled()


async def test_supervisors_sharing_a_registry_share_its_series_instead_of_clashing() -> None:
    registry = CollectorRegistry()
    first, second = Supervisor(registry, "test"), Supervisor(registry, "test")
    started = asyncio.Event()

    async def body(beat: Beat) -> None:
        beat()
        started.set()
        await asyncio.Event().wait()

    first.start("one", body)
    await started.wait()

    assert second.metrics is first.metrics
    assert sample(registry, "loop_up", "one") == 1.0
    await first.stop()
