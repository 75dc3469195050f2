"""`retrieve worker` settings from its arguments and environment."""

from __future__ import annotations

import argparse

import pytest

from retrieve_cli.components import CommandError, _worker_settings
from retrieve_cli.main import build_parser

pytestmark = pytest.mark.unit


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["worker", "--config-dir", "examples", *args])


def test_the_consumer_name_comes_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "worker-pod-1")
    monkeypatch.delenv("RETRIEVE_WORKER_CONSUMER", raising=False)
    assert _worker_settings(parse()).consumer == "worker-pod-1"
    assert _worker_settings(parse("--consumer", "edge-1")).consumer == "edge-1"
    monkeypatch.setenv("RETRIEVE_WORKER_CONSUMER", "edge-2")
    assert _worker_settings(parse()).consumer == "edge-2"


@pytest.mark.parametrize("name", ["", "  ", "edge\x1b[31m", "x" * 201])
def test_an_unusable_consumer_name_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(CommandError, match=r"--consumer: .* is not a usable consumer name"):
        _worker_settings(parse("--consumer", name))
