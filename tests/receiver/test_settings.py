"""The receiver's environment settings against what SECURITY.md's tables say of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retrieve_receiver.settings import ReceiverSettings

pytestmark = pytest.mark.unit

SECURITY = Path(__file__).resolve().parents[2] / "SECURITY.md"
FIELDS = {
    "RETRIEVE_HEADER_TIMEOUT_SECONDS": "header_timeout",
    "RETRIEVE_BODY_TIMEOUT_SECONDS": "body_timeout",
    "RETRIEVE_MAX_CONNECTIONS": "max_connections",
    "RETRIEVE_ADMIN_MAX_CONNECTIONS": "admin_max_connections",
    "RETRIEVE_IDLE_TIMEOUT_SECONDS": "idle_timeout",
}


def documented_defaults() -> dict[str, float]:
    """`| \\`RETRIEVE_X\\` | default | ...` rows of the "Slow clients and connections" table."""
    section = SECURITY.read_text().split("### Slow clients and connections", 1)[1]
    section = section.split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(RETRIEVE_[A-Z_]+)` \| ([\d.]+) \|", section, re.M)
    return {name: float(value) for name, value in rows}


def test_the_connection_limits_table_names_every_limit_with_its_real_default() -> None:
    documented = documented_defaults()
    assert set(documented) == set(FIELDS)
    settings = ReceiverSettings.from_env({})
    for name, field in FIELDS.items():
        assert getattr(settings, field) == documented[name], name


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_limit_is_read_from_its_variable(name: str) -> None:
    assert getattr(ReceiverSettings.from_env({name: "7"}), FIELDS[name]) == 7


def test_the_rejected_payload_bound_defaults_to_1_kib_and_is_read_from_its_variable() -> None:
    """SECURITY.md: `RETRIEVE_REJECTED_PAYLOAD_BYTES` (default 1024)."""
    assert ReceiverSettings.from_env({}).rejected_payload_bytes == 1024
    variable = {"RETRIEVE_REJECTED_PAYLOAD_BYTES": "0"}
    assert ReceiverSettings.from_env(variable).rejected_payload_bytes == 0


def test_the_redis_waits_default_to_2_and_half_a_second_and_are_read_from_their_variables() -> None:
    """README: `RETRIEVE_REDIS_TIMEOUT_SECONDS` (2) and `RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS`
    (0.5)."""
    defaults = ReceiverSettings.from_env({})
    assert (defaults.redis_timeout, defaults.log_write_timeout) == (2.0, 0.5)
    read = ReceiverSettings.from_env(
        {"RETRIEVE_REDIS_TIMEOUT_SECONDS": "30", "RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS": "1.5"}
    )
    assert (read.redis_timeout, read.log_write_timeout) == (30.0, 1.5)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("RETRIEVE_REDIS_TIMEOUT_SECONDS", "0", "must be above 0"),
        ("RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS", "0", "must be above 0"),
        ("RETRIEVE_REDIS_TIMEOUT_SECONDS", "-1", "must not be negative"),
        ("RETRIEVE_REDIS_TIMEOUT_SECONDS", "nan", "is not a finite number"),
        ("RETRIEVE_HEADER_TIMEOUT_SECONDS", "inf", "is not a finite number"),
        ("RETRIEVE_MAX_CONNECTIONS", "ten", "is not a number"),
    ],
)
def test_a_setting_out_of_range_is_refused_with_its_name(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        ReceiverSettings.from_env({name: raw})
    assert str(refused.value).startswith(f"{name}={raw!r}")
