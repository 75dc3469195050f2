"""kopf's start-up at scale: wake the object workers once, when everything is indexed; and
hold less of each object while they wait.

Before any handler runs, kopf waits until every object of every indexed resource has been
indexed: a set of toggles (``aiotoggles.ToggleSet(all)``), one per object, made when the object
is first listed and dropped once it is indexed, while the worker of every object listed until
then (of any watched resource, indexed or not) waits for the whole set to be "on". kopf (1.4x)
wakes *every* waiting worker each time *one* toggle is made or dropped, so the start-up costs
O(N²) wake-ups in the number of indexed objects: with 5,000 Integrations and their children,
minutes before the first resume handler ran.

Every waiter waits for the set's aggregate state (``is_on() == state``), which only changes
when a toggle makes it change: waking the waiters then, and only then, is the same behaviour
at O(N). Installed when the handlers are loaded (handlers.py); idempotent.

Each waiting worker holds its object's body as listed, so a restart holds every object at once
(its peak memory). :func:`drop_managed_fields`, called by the index functions (which kopf runs
before the wait), takes the biggest part that nothing reads out of those bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def drop_managed_fields(body: Mapping[str, Any]) -> None:
    """Remove ``metadata.managedFields`` from the body kopf holds for an object.

    Every field manager's record of the fields it set: more than half of a listed Integration
    or Deployment as parsed (about 9 of 15 KiB, 24 of 47 KiB), and neither kopf nor this
    operator reads it (kopf's patches are built apart from the body; the reconciler keeps
    children without it, plan.seen_child). kopf's body is a view of the parsed JSON: the
    metadata it returns is that dict.
    """
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
