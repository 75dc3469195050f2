"""Integration status of scheduled polls: `lastPollAt`, `polledItems`, `polledNew`,
`lastPollError` and the `PollFailing` condition, from what `retrieve poll` stored in Redis.

One pipelined read per application (:func:`read_poll_states`) and a pure function per
Integration (:func:`poll_status_patch`) that returns the merge patch, or None when the status
already says it (no churn). An Integration whose schedule was removed loses the fields and the
condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from retrieve_core.constants import (
    CONDITION_POLL_FAILING,
    REASON_POLL_FAILED,
    REASON_POLL_SUCCEEDED,
)
from retrieve_core.keys import AppKeys
from retrieve_core.redisclient import RedisClient
from retrieve_core.scheduling.state import PollState

from .conditions import Condition, merge_condition, now_rfc3339
from .plan import ObjectRecord, integration_id_of

POLL_FIELDS: Final = ("lastPollAt", "polledItems", "polledNew", "lastPollError")


async def read_poll_states(
    redis: RedisClient, keys: AppKeys, integration_ids: Sequence[str]
) -> dict[str, PollState]:
    """The poll state of each integration (one round trip); never polled: an empty state."""
    if not integration_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for integration_id in integration_ids:
            pipe.hgetall(keys.poll_state(integration_id))
        replies = await pipe.execute()
    return {
        integration_id: PollState.from_hash(reply or {})
        for integration_id, reply in zip(integration_ids, replies, strict=True)
    }


def wants_poll_status(members: Sequence[ObjectRecord]) -> bool:
    """Whether any Integration has a schedule, or poll status left from a removed one."""
    return any(
        (r.spec or {}).get("schedule")
        or r.status.get("lastPollAt")
        or any(c.get("type") == CONDITION_POLL_FAILING for c in r.status.get("conditions") or [])
        for r in members
    )


async def poll_patches(
    redis: RedisClient | None, app: ObjectRecord, members: Sequence[ObjectRecord]
) -> dict[str, dict[str, Any]]:
    """Integration uid -> status merge patch, for those whose poll status changed (the hook the
    periodic status poll calls, status_refresh.py). One Redis round trip for the application."""
    if redis is None:
        return {}
    scheduled = {r.uid: bool((r.spec or {}).get("schedule")) for r in members}
    ids = sorted({integration_id_of(r) for r in members if scheduled[r.uid]})
    states = await read_poll_states(redis, AppKeys(app.namespace, app.name), ids)
    now = now_rfc3339()
    patches: dict[str, dict[str, Any]] = {}
    for record in members:
        patch = poll_status_patch(
            record.status,
            states.get(integration_id_of(record)),
            scheduled=scheduled[record.uid],
            generation=record.generation,
            now=now,
        )
        if patch is not None:
            patches[record.uid] = patch
    return patches


def poll_condition(state: PollState) -> Condition:
    if state.failing:
        return Condition(CONDITION_POLL_FAILING, True, REASON_POLL_FAILED, state.error[:1000])
    message = f"last poll saw {state.seen} item(s), {state.new} new"
    return Condition(CONDITION_POLL_FAILING, False, REASON_POLL_SUCCEEDED, message)


def poll_status_patch(
    current: Mapping[str, Any],
    state: PollState | None,
    *,
    scheduled: bool,
    generation: int | None,
    now: str,
) -> dict[str, Any] | None:
    """The status merge patch for one Integration, None when nothing would change.

    `state` None or never run: nothing to say yet (fields stay unset, no condition)."""
    conditions = list(current.get("conditions") or [])
    has_condition = any(c.get("type") == CONDITION_POLL_FAILING for c in conditions)
    if not scheduled or state is None or state.last_run_at is None:
        patch: dict[str, Any] = {k: None for k in POLL_FIELDS if current.get(k) is not None}
        if has_condition:
            patch["conditions"] = [c for c in conditions if c.get("type") != CONDITION_POLL_FAILING]
        return patch or None
    desired: dict[str, Any] = dict(state.status_fields())
    merged = merge_condition(conditions, poll_condition(state), generation=generation, now=now)
    old = next((c for c in conditions if c.get("type") == CONDITION_POLL_FAILING), None)
    new = next(c for c in merged if c.get("type") == CONDITION_POLL_FAILING)
    same_condition = old is not None and all(
        old.get(k) == new.get(k) for k in ("status", "reason", "message")
    )
    if not same_condition:
        desired["conditions"] = merged
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    return patch or None
