"""The tier hook: collection fails, naming the test, unless a test has exactly one tier marker."""

from __future__ import annotations

import pytest

from tests.support.tiers import TIERS

pytestmark = pytest.mark.unit
pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n" + "".join(
    f"    {tier}: a tier\n" for tier in TIERS
)


def run_collection(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_sample=source)
    return pytester.runpytest_inprocess("-p", "tests.support.tiers", "--collect-only", "-q")


def test_a_test_without_a_tier_fails_collection_and_is_named(pytester: pytest.Pytester) -> None:
    result = run_collection(
        pytester,
        """
import pytest

@pytest.mark.unit
def test_tiered():
    pass

def test_untiered():
    pass
""",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: 1 test(s) without exactly one tier marker*",
            "*test_sample.py::test_untiered: tier markers found: none",
        ]
    )
    assert "test_tiered:" not in result.stderr.str()


def test_a_test_with_two_tiers_fails_collection(pytester: pytest.Pytester) -> None:
    result = run_collection(
        pytester,
        """
import pytest

pytestmark = pytest.mark.redis

@pytest.mark.unit
def test_both():
    pass
""",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_sample.py::test_both: tier markers found: redis, unit"])


def test_one_tier_on_the_test_or_its_class_collects(pytester: pytest.Pytester) -> None:
    result = run_collection(
        pytester,
        """
import pytest

@pytest.mark.redis
def test_own_mark():
    pass

class TestGrouped:
    pytestmark = pytest.mark.unit

    def test_from_class(self):
        pass
""",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_own_mark", "*test_from_class"])


def test_every_tier_is_a_registered_marker(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert set(TIERS) <= registered
