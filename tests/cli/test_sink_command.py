"""`retrieve sink`: the throwaway destination prints each request and answers the status asked."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.processes import RetrieveProcess

pytestmark = pytest.mark.e2e


def post_once_listening(sink: RetrieveProcess, url: str, body: bytes) -> tuple[int, Any]:
    """POSTs `body` as soon as the sink listens: (status, decoded answer)."""
    request = urllib.request.Request(url, data=body, method="POST")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except OSError:
            assert sink.process is not None
            assert sink.process.poll() is None, sink.output()
            if time.monotonic() > deadline:
                raise AssertionError(f"the sink never listened:\n{sink.output()}") from None
            time.sleep(0.1)


def test_the_sink_prints_each_request_and_answers_the_status_asked() -> None:
    port = free_port()
    sink = RetrieveProcess(["sink", "--port", str(port), "--status", "202"]).start()
    try:
        answer = post_once_listening(
            sink, f"http://127.0.0.1:{port}/orders?x=1", json.dumps({"id": "\x1b[31m7"}).encode()
        )
    finally:
        sink.stop()
    assert answer == (202, {"received": True})
    lines = sink.output().splitlines()
    assert f"sink listening on http://127.0.0.1:{port}/ (answers 202)" in lines
    printed = [line for line in lines if line.startswith("POST ")]
    assert len(printed) == 1, lines
    assert printed[0].startswith('POST /orders?x=1 {"id": "')
    assert "\x1b" not in printed[0]  # terminal controls are shown, not acted on
