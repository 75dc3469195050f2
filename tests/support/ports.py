"""Free loopback ports for servers the tests start (the harness's one copy)."""

from __future__ import annotations

from harness.waits import free_port

__all__ = ["free_port"]
