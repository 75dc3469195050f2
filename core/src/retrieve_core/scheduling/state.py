"""What `retrieve poll` remembers per integration (Redis hash `AppKeys.poll_state`).

`since` is the start time of the last *successful* run: the next run asks the source for items
changed after it (a failed run leaves it, so its window is asked for again). The rest describes
the last run, for the operator's Integration status (`lastPollAt`, `polledItems`, `polledNew`,
`lastPollError`) and the `PollFailing` condition.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class PollState:
    since: float | None = None
    """Start of the last successful run (unix time); None before the first success."""
    last_run_at: float | None = None
    seen: int = 0
    new: int = 0
    error: str = ""

    @property
    def failing(self) -> bool:
        return bool(self.error)

    def to_hash(self) -> dict[str, str]:
        out = {"seen": str(self.seen), "new": str(self.new), "error": self.error}
        if self.since is not None:
            out["since"] = repr(self.since)
        if self.last_run_at is not None:
            out["last_run_at"] = repr(self.last_run_at)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> PollState:
        data = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

        def number(name: str) -> float | None:
            try:
                return float(data[name]) if data.get(name) else None
            except ValueError:
                return None

        return cls(
            since=number("since"),
            last_run_at=number("last_run_at"),
            seen=int(number("seen") or 0),
            new=int(number("new") or 0),
            error=data.get("error", ""),
        )

    def status_fields(self) -> dict[str, Any]:
        """The Integration status fields (None: never polled)."""
        if self.last_run_at is None:
            return {}
        return {
            "lastPollAt": rfc3339(self.last_run_at),
            "polledItems": self.seen,
            "polledNew": self.new,
            "lastPollError": self.error,
        }
