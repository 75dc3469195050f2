"""How a record is written into a destination request's body (a pure function)."""

from __future__ import annotations

import json

import pytest

from retrieve_worker.destinations import encode_record

pytestmark = pytest.mark.unit


def test_a_record_is_compact_utf8_json_that_reads_back_the_same() -> None:
    record = {"id": 2**70, "total": 9.99, "name": "Zoë \u2028", "tags": [None, True], "n": -0.0}
    body = encode_record(record)
    assert body == json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(body) == record


def test_a_lone_surrogate_from_the_senders_json_goes_out_escaped() -> None:
    record = json.loads('{"note": "\\ud800 and é"}')
    body = encode_record(record)
    assert body == b'{"note":"\\ud800 and \\u00e9"}'
    assert json.loads(body) == record
