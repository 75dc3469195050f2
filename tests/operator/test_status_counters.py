"""Integration status from counter values, and the no-churn patch decision (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from retrieve_core.keys import COUNTER_BUCKET_SECONDS, AppKeys, counter_bucket
from retrieve_operator.settings import status_interval_seconds
from retrieve_operator.status_counters import (
    IntegrationCounts,
    counts_call,
    counts_from_reply,
    live_patch,
    live_status,
    window_buckets,
)
from retrieve_operator.status_refresh import replay_pending

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


def test_the_window_is_the_last_sixty_minute_buckets_ending_with_the_current_one() -> None:
    buckets = window_buckets(NOW)
    assert len(buckets) == 3600 // COUNTER_BUCKET_SECONDS == 60
    assert buckets[-1] == counter_bucket(NOW)
    assert buckets[0] == counter_bucket(NOW - 3600) + 1


def test_counts_are_decoded_per_integration_from_the_script_reply() -> None:
    reply = [7, 3, [5, 1, 1, b"1699999990.5", b"2"], [0, 4, 0, b"", b"1"], 3]

    counts, consistent = counts_from_reply(["a", "b"], reply)

    assert consistent
    assert counts.queue_depth == 7
    assert counts.integrations["a"] == IntegrationCounts(1699999990.5, 5, 1, 1, 2)
    assert counts.integrations["b"] == IntegrationCounts(None, 0, 4, 0, 1)


def test_dead_letter_counts_that_disagree_with_the_stream_are_flagged() -> None:
    _, consistent = counts_from_reply(["a"], [0, 5, [0, 0, 0, b"", b"2"], 2])
    assert not consistent


def test_the_script_reads_every_bucket_of_the_hour_of_each_integration() -> None:
    keys = AppKeys("shop", "yourapp")
    script_keys, args = counts_call(keys, ["a", "b"], NOW)
    assert script_keys[:4] == [keys.jobs, keys.dead_letters, keys.last_received, keys.dead_counts]
    assert len(script_keys) == 4 + 2 * 60
    assert script_keys[4] == keys.counters("a", counter_bucket(NOW) - 59)
    assert script_keys[-1] == keys.counters("b", counter_bucket(NOW))
    assert args == ["60", "received", "rejected", "failed", "a", "b"]


def test_status_fields_are_the_counts_with_an_rfc3339_last_received_time() -> None:
    status = live_status(IntegrationCounts(NOW, 12, 3, 2, 1), queue_depth=40)
    assert status == {
        "lastReceivedAt": "2023-11-14T22:13:20Z",
        "receivedLastHour": 12,
        "rejectedLastHour": 3,
        "failedLastHour": 2,
        "queueDepth": 40,
        "deadLetters": 1,
    }


def test_an_integration_that_never_received_has_no_last_received_time() -> None:
    assert live_status(IntegrationCounts(), 0)["lastReceivedAt"] is None


def test_unchanged_counters_need_no_patch_even_beside_other_status_fields() -> None:
    desired = live_status(IntegrationCounts(NOW, 1, 0, 0, 0), 0)
    current = {**desired, "webhookURL": "https://x/integration/a", "conditions": []}
    assert live_patch(current, desired) is None


def test_a_changed_counter_patches_only_the_fields_that_changed() -> None:
    before = live_status(IntegrationCounts(NOW, 1, 0, 0, 0), 0)
    after = live_status(IntegrationCounts(NOW + 60, 2, 0, 0, 0), 0)
    assert live_patch(before, after) == {
        "lastReceivedAt": "2023-11-14T22:14:20Z",
        "receivedLastHour": 2,
    }


def test_a_fresh_integration_gets_its_zero_counters_written_once() -> None:
    desired = live_status(IntegrationCounts(), 0)
    patch = live_patch({"webhookURL": "u"}, desired)
    assert patch == {
        "receivedLastHour": 0,
        "rejectedLastHour": 0,
        "failedLastHour": 0,
        "queueDepth": 0,
        "deadLetters": 0,
    }
    assert live_patch({**desired}, desired) is None


def _integration(annotation: str | None, handled: str | None) -> dict[str, Any]:
    annotations = {"retrievetl.com/replay-dead-letters": annotation} if annotation else {}
    status = {"replayHandled": handled} if handled else {}
    return {"metadata": {"name": "orders", "annotations": annotations}, "status": status}


@pytest.mark.parametrize(
    ("annotation", "handled", "pending"),
    [
        (None, None, False),
        ("2024-05-01", None, True),
        ("2024-05-01", "2024-05-01", False),
        ("again", "2024-05-01", True),
    ],
)
def test_a_replay_is_pending_only_for_an_annotation_value_not_yet_handled(
    annotation: str | None, handled: str | None, pending: bool
) -> None:
    assert replay_pending(_integration(annotation, handled)) is pending


def test_the_status_interval_defaults_to_15_seconds_and_follows_the_environment() -> None:
    assert status_interval_seconds({}) == 15.0
    assert status_interval_seconds({"RETRIEVE_STATUS_INTERVAL_SECONDS": "2"}) == 2.0
    assert status_interval_seconds({"RETRIEVE_STATUS_INTERVAL_SECONDS": "0"}) == 1.0
