"""The job carried by an application's Redis stream (DESIGN.md, "Job and workflow contract")."""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

PayloadFormat = Literal["json", "form", "xml"]

JOB_FIELD = "job"


_FRESH_JOB_TAIL = b',"attempt":0,"replayed":0,"deliveries":{}}'

# Job ids need to be unique, not secret: a generator seeded from os.urandom (and again in a
# forked child) gives 64 random bits without a system call per id.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_job_id() -> str:
    """A time-ordered, unique id: milliseconds since the epoch then 64 random bits (hex)."""
    return f"{int(time.time() * 1000):013x}{_ids.getrandbits(64):016x}"


def new_job_json(
    *,
    job_id: str,
    integration_id: str,
    application: str,
    namespace: str,
    received_at: float,
    source_ip: str,
    format: PayloadFormat,
    headers: dict[str, str],
    payload: Any,
    payload_json: bytes | None = None,
) -> bytes:
    """The stream entry of a fresh job: `Job(...).model_dump_json()`, byte for byte (tested),
    without building and validating the model, for the receiver's hot path.

    `payload_json`, the payload's own JSON text (a body that is valid JSON the job parser
    reads back as `payload`), is embedded as it is instead of encoding `payload` again.
    Raises `PydanticSerializationError` for a payload JSON cannot carry (nesting too deep).
    """
    if payload_json is not None:
        head = to_json(
            {
                "id": job_id,
                "integration_id": integration_id,
                "application": application,
                "namespace": namespace,
                "received_at": received_at,
                "source_ip": source_ip,
                "format": format,
                "headers": headers,
            },
            inf_nan_mode="null",
        )
        return b'%b,"payload":%b%b' % (head[:-1], payload_json, _FRESH_JOB_TAIL)
    return to_json(
        {
            "id": job_id,
            "integration_id": integration_id,
            "application": application,
            "namespace": namespace,
            "received_at": received_at,
            "source_ip": source_ip,
            "format": format,
            "headers": headers,
            "payload": payload,
            "attempt": 0,
            "replayed": 0,
            "deliveries": {},
        },
        inf_nan_mode="null",
    )


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
