"""Numbers JSON does not have (Infinity, NaN) never reach a destination (issue 12, defect 6).

Before: `to_number("1.0e400")` in a field mapping gave `inf`, delivered as `Infinity` (not JSON).
Now the mapping fails the job with an error naming the field (retried, then dead-lettered, as
every mapping error); a rewrite's Infinity or NaN becomes null, as `JSON.stringify` makes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from retrieve_cli.sink import Sink
from retrieve_core.logstore import LogStatus

from .conftest import Harness

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

HarnessFactory = Callable[[dict[str, dict[str, Any]]], Harness]


async def test_a_mapping_computing_infinity_fails_the_job_and_sends_nothing(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    h = harness_factory(
        {
            "huge": {
                "fieldMapping": {"id": "id", "total": "to_number(total)"},
                "destinations": [{"name": "d", "http": {"url": sink.url_for("/huge")}}],
                "retry": {"maxAttempts": 2, "backoffSeconds": 0},
            }
        }
    )
    await h.start_worker()
    bad = await h.enqueue("huge", {"id": 1, "total": "1.0e400"})
    good = await h.enqueue("huge", {"id": 2, "total": "-0.0"})

    record = await h.wait_status(bad.id, LogStatus.DEAD_LETTER)
    await h.wait_status(good.id, LogStatus.SUCCEEDED)

    assert record.error == (
        "field mapping 'total' gave Infinity, a number JSON cannot carry "
        "(past a double's range, or not a number)"
    )
    assert [r.body for r in sink.requests_to("/huge")] == [{"id": 2, "total": -0.0}]


async def test_a_rewrites_infinity_and_nan_are_delivered_as_null(
    harness_factory: HarnessFactory, sink: Sink
) -> None:
    rewrite = (
        "return {jobStatus: 1, data: {a: Infinity, b: -1e308 * 10, c: NaN, d: [0 / 0], e: 1}};"
    )
    h = harness_factory(
        {
            "js": {
                "rewrite": {"javascript": rewrite},
                "destinations": [{"name": "d", "http": {"url": sink.url_for("/js")}}],
            }
        }
    )
    await h.start_worker()
    job = await h.enqueue("js", {"id": 1})

    await h.wait_status(job.id, LogStatus.SUCCEEDED)

    [request] = sink.requests_to("/js")
    assert request.body == {"a": None, "b": None, "c": None, "d": [None], "e": 1}
