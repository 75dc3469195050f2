"""Status conditions per the Kubernetes API conventions (pure functions).

A condition has `type`, `status` ("True"/"False"/"Unknown"), a CamelCase `reason`, a human
`message`, `lastTransitionTime` (changed only when `status` changes) and `observedGeneration`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(
    conditions: Iterable[Mapping[str, Any]] | None, condition_type: str
) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == condition_type:
            return condition
    return None


def merge_condition(
    previous: Iterable[Mapping[str, Any]] | None,
    condition: Condition,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions list with `condition` set; other types are kept as they are.

    `lastTransitionTime` stays what it was when the status did not change (a new reason or
    message is not a transition).
    """
    old = find_condition(previous, condition.type)
    transition = now
    if old is not None and old.get("status") == condition.status_text:
        transition = str(old.get("lastTransitionTime") or now)
    entry: dict[str, Any] = {
        "type": condition.type,
        "status": condition.status_text,
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    others = [dict(c) for c in previous or () if c.get("type") != condition.type]
    return sorted([*others, entry], key=lambda c: str(c.get("type")))
