"""The tests' redis-server is the product's (dev mode runs the same launcher)."""

from __future__ import annotations

from retrieve_cli.redis_server import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
