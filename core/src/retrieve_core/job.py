"""The job carried by an application's Redis stream (DESIGN.md, "Job and workflow contract")."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PayloadFormat = Literal["json", "form", "xml"]

JOB_FIELD = "job"


def new_job_id() -> str:
    """A time-ordered, unique id: milliseconds since the epoch then 64 random bits (hex)."""
    return f"{int(time.time() * 1000):013x}{os.urandom(8).hex()}"


class Job(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    integration_id: str
    application: str
    namespace: str
    received_at: float
    source_ip: str
    format: PayloadFormat
    headers: dict[str, str] = Field(default_factory=dict)
    payload: Any = None
    attempt: int = 0
    """How many processing attempts have already failed (0 for a fresh job)."""
    replayed: int = 0
    deliveries: dict[str, int] = Field(default_factory=dict)
    """Deliveries settled by earlier attempts, `"<destination>/<record index>"` -> HTTP status
    (2xx delivered, 4xx refused for good), so a retry does not send them again."""

    def encode(self) -> dict[str, str]:
        return {JOB_FIELD: self.model_dump_json()}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Job:
        raw = fields.get(JOB_FIELD) or fields.get(JOB_FIELD.encode())  # type: ignore[call-overload]
        if raw is None:
            raise ValueError("stream entry has no 'job' field")
        return cls.model_validate(json.loads(raw))

    def job_data(self) -> dict[str, Any]:
        """The `jobData` a rewrite function sees; `job.data.data` is the payload, as in the docs."""
        return {
            "job": {
                "id": self.id,
                "integrationId": self.integration_id,
                "application": self.application,
                "receivedAt": self.received_at,
                "sourceIp": self.source_ip,
                "format": self.format,
                "attempt": self.attempt + 1,
                "data": {"data": self.payload, "headers": self.headers},
            }
        }
