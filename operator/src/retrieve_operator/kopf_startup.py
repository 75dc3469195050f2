"""kopf's start-up at scale: wake the object workers once, when everything is indexed.

Before any handler runs, kopf waits until every object of every indexed resource has been
indexed: a set of toggles (``aiotoggles.ToggleSet(all)``), one per object, made when the object
is first listed and dropped once it is indexed, while each indexed object's worker waits for
the whole set to be "on". kopf (1.4x) wakes *every* waiting worker each time *one* toggle is
made or dropped, so the start-up costs O(N²) wake-ups in the number of indexed objects: with
5,000 Integrations and their children, minutes before the first resume handler ran.

Every waiter waits for the set's aggregate state (``is_on() == state``), which only changes
when a toggle makes it change: waking the waiters then, and only then, is the same behaviour
at O(N). Installed when the handlers are loaded (handlers.py); idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

_MARK = "_retrieve_wakes_on_change"


async def _make_toggle(
    self: aiotoggles.ToggleSet, __val: bool = False, *, name: str | None = None
) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: aiotoggles.ToggleSet, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
    await _drop_toggles(self, [toggle])


def install() -> None:
    """Make kopf's toggle sets notify their waiters only when their aggregate state changes."""
    cls: Any = aiotoggles.ToggleSet
    if getattr(cls, _MARK, False):
        return
    cls.make_toggle = _make_toggle
    cls.drop_toggle = _drop_toggle
    cls.drop_toggles = _drop_toggles
    setattr(cls, _MARK, True)
