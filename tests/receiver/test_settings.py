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
