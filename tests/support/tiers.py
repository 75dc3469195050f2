"""The collection hook that gives every test exactly one tier marker (`unit`, `redis`, …).

Tiers are how CI and people select tests (`-m unit`); a test with no tier is never selected by
a tier run, and one with two is run twice. The hook stops the session at collection time and
names every offending test, before anything starts.
"""

from __future__ import annotations

import pytest

TIERS: tuple[str, ...] = ("unit", "redis", "e2e", "kube", "faults", "node")


def tiers_of(item: pytest.Item) -> list[str]:
    """The tier markers on a test (its own, its class's and its module's `pytestmark`)."""
    return sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})


def tier_problems(items: list[pytest.Item]) -> list[str]:
    """One line per test that does not carry exactly one tier marker."""
    problems = []
    for item in items:
        tiers = tiers_of(item)
        if len(tiers) != 1:
            found = ", ".join(tiers) if tiers else "none"
            problems.append(f"  {item.nodeid}: tier markers found: {found}")
    return problems


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError(
            f"{len(problems)} test(s) without exactly one tier marker "
            f"(one of {', '.join(TIERS)}; set `pytestmark = pytest.mark.<tier>` in the module):\n"
            + "\n".join(problems)
        )
