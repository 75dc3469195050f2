"""The 5-field cron parser used to validate spec.schedule.cron and to run polls in dev mode."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from retrieve_core.models import ScheduleSpec
from retrieve_core.scheduling.cron import CronError, parse_cron

pytestmark = pytest.mark.unit


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def test_every_fifteen_minutes_matches_quarter_hours_only() -> None:
    cron = parse_cron("*/15 * * * *")
    assert cron.minutes == frozenset({0, 15, 30, 45})
    assert cron.matches(at("2026-03-04T10:30:00"))
    assert not cron.matches(at("2026-03-04T10:31:00"))


def test_ranges_steps_lists_and_names_combine() -> None:
    cron = parse_cron("0,30 9-17/4 * jan-mar mon-fri")
    assert cron.minutes == frozenset({0, 30})
    assert cron.hours == frozenset({9, 13, 17})
    assert cron.months == frozenset({1, 2, 3})
    assert cron.weekdays == frozenset({1, 2, 3, 4, 5})
    assert cron.matches(at("2026-02-02T13:30:00"))  # a Monday
    assert not cron.matches(at("2026-02-01T13:30:00"))  # a Sunday


def test_a_restricted_day_of_month_or_weekday_matches_either_like_vixie_cron() -> None:
    cron = parse_cron("0 0 1 * 1")  # the 1st of the month, and every Monday
    assert cron.matches(at("2026-04-01T00:00:00"))  # a Wednesday, the 1st
    assert cron.matches(at("2026-04-06T00:00:00"))  # a Monday
    assert not cron.matches(at("2026-04-07T00:00:00"))


def test_weekday_seven_is_sunday_and_macros_expand() -> None:
    assert parse_cron("0 0 * * 7").weekdays == frozenset({0})
    assert parse_cron("@hourly") == parse_cron("0 * * * *")
    assert parse_cron("@daily").matches(at("2026-01-01T00:00:00"))


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "goes backwards"),
        ("* * * foo *", "month: 'foo' is not a number"),
        ("1,,2 * * * *", "empty list item"),
    ],
)
def test_invalid_expressions_are_refused_with_the_field_named(
    expression: str, complaint: str
) -> None:
    with pytest.raises(CronError, match=complaint):
        parse_cron(expression)


def test_the_schedule_model_refuses_a_bad_cron() -> None:
    source = {"http": {"url": "https://api.example/orders", "idField": "id"}}
    assert ScheduleSpec.model_validate({"cron": " 0 */6 * * * ", "source": source}).cron == (
        "0 */6 * * *"
    )
    with pytest.raises(ValidationError, match="minute: 99"):
        ScheduleSpec.model_validate({"cron": "99 * * * *", "source": source})
