"""kopf's "everything is indexed" toggle set, as installed by kopf_startup: waiters are woken
when the set's state changes, not on every toggle made or dropped, with kopf's semantics; and
the bodies kopf holds meanwhile lose their managedFields."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles

from retrieve_operator import kopf_startup

pytestmark = pytest.mark.unit


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


async def test_waiters_for_the_whole_set_are_released_once_every_toggle_is_dropped() -> None:
    kopf_startup.install()
    toggles = aiotoggles.ToggleSet(all)
    condition = CountingCondition()
    toggles._condition = condition
    members = [await toggles.make_toggle(name=f"object-{n}") for n in range(200)]
    waiters = [asyncio.create_task(toggles.wait_for(True)) for _ in range(200)]
    await asyncio.sleep(0)
    condition.notified = 0  # the first toggle turned the empty (on) set off
    for member in members[:-1]:
        await toggles.drop_toggle(member)
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    assert condition.notified == 0

    await toggles.drop_toggles(members[-1:])
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    assert toggles.is_on()
    assert condition.notified == 1


async def test_an_any_set_still_wakes_its_waiters_when_a_toggle_turns_on_or_a_new_one_is_on() -> (
    None
):
    kopf_startup.install()
    paused = aiotoggles.ToggleSet(any)
    first = await paused.make_toggle(False)
    waiter = asyncio.create_task(paused.wait_for(True))
    await asyncio.sleep(0)
    assert not waiter.done()
    await first.turn_to(True)  # a member's own change notifies, as before
    await asyncio.wait_for(waiter, timeout=10)

    await first.turn_to(False)
    waiter = asyncio.create_task(paused.wait_for(True))
    await asyncio.sleep(0)
    await paused.make_toggle(True)  # a new toggle that turns the set on
    await asyncio.wait_for(waiter, timeout=10)

    off = asyncio.create_task(paused.wait_for(False))
    await asyncio.sleep(0)
    await paused.drop_toggles(list(paused))
    await asyncio.wait_for(off, timeout=10)
    assert paused.is_off()


def test_the_managed_fields_are_dropped_from_the_parsed_body_kopf_holds() -> None:
    raw: Any = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "yourapp-receiver",
            "annotations": {"retrievetl.com/desired-digest": "abc"},
            "managedFields": [{"manager": "retrieve-operator", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"replicas": 2},
    }
    body = kopf.Body(raw)
    kopf_startup.drop_managed_fields(body)
    assert raw["metadata"] == {
        "name": "yourapp-receiver",
        "annotations": {"retrievetl.com/desired-digest": "abc"},
    }
    assert body.meta.annotations == {"retrievetl.com/desired-digest": "abc"}
    assert raw["spec"] == {"replicas": 2}
    unusual: Any = {"kind": "Unusual"}
    kopf_startup.drop_managed_fields(kopf.Body(unusual))  # no metadata: nothing to do
