"""A fresh job's stream entry, built on the receiver's fast path, is the model's encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from retrieve_core.job import Job, new_job_id, new_job_json


@pytest.mark.unit
@pytest.mark.parametrize(
    "payload",
    [
        {"order": {"id": 2**70, "total": 99.99, "items": [{"sku": "é", "n": None}]}},
        [1, 2.5, "x", True, None],
        "text",
        float("inf"),
        {"deep": [[[[{"a": {}}]]]]},
    ],
)
def test_new_job_json_is_the_models_encoding(payload: Any) -> None:
    fields: dict[str, Any] = {
        "integration_id": "507f1f77bcf86cd799439011",
        "application": "yourapp",
        "namespace": "shop",
        "received_at": 1_700_000_000.123456,
        "source_ip": "2001:db8::1",
        "format": "json",
        "headers": {"x-shopify-topic": "orders/create"},
        "payload": payload,
    }
    job_id = new_job_id()
    encoded = new_job_json(job_id=job_id, **fields)
    assert encoded.decode() == Job(id=job_id, **fields).model_dump_json()
    assert Job.model_validate_json(encoded).id == job_id


@pytest.mark.unit
def test_job_ids_are_unique_and_time_ordered() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 29 and int(i, 16) >= 0 for i in ids)
    assert ids[0][:13] <= ids[-1][:13]


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        b'{"order": {"id": 1180591620717411303424, "total": 99.99, "note": "\\u00e9\\n"}}',
        b' [1, 2.5, "x", true, null] \n',
        b'"text"',
        b"{}",
    ],
)
def test_a_verbatim_json_payload_reads_back_as_the_encoded_one(body: bytes) -> None:
    fields: dict[str, Any] = {
        "job_id": new_job_id(),
        "integration_id": "ABC123",
        "application": "yourapp",
        "namespace": "shop",
        "received_at": 1_700_000_000.5,
        "source_ip": "127.0.0.1",
        "format": "json",
        "headers": {},
        "payload": json.loads(body),
    }
    verbatim = Job.model_validate_json(new_job_json(**fields, payload_json=body))
    encoded = Job.model_validate_json(new_job_json(**fields))
    assert verbatim == encoded
    assert verbatim.payload == json.loads(body)
