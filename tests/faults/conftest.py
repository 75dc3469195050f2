"""Fault tests: real receiver and worker processes, a real Redis, a sink the test owns.

Each test prints one line of counts (run pytest with -s to see them) and asserts that every
request answered 200 was delivered to the sink or is in the dead letters, and nothing else was.
"""

from __future__ import annotations
