"""Process settings of a receiver, from the environment, overridable by the command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from retrieve_core.constants import (
    DEFAULT_MAX_BODY_BYTES,
    ENV_ALLOWED_LIST,
    ENV_DNS_SERVERS,
    ENV_REDIS_URL,
)

from .dns import parse_dns_servers
from .whitelist import split_entries

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    redis_url: str = DEFAULT_REDIS_URL
    dns_servers: tuple[tuple[str, int], ...] = ()
    """(host, port) pairs; empty means the system resolver (/etc/resolv.conf)."""
    extra_allowed: tuple[str, ...] = ()
    """Whitelist entries added to every served application's list (RETRIEVE_ALLOWED_LIST)."""
    dev_mode: bool = False
    """Several applications in one process: `webhook-<app>.<anything>` Host names select one."""
    default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    dns_timeout: float = 2.0
    redis_timeout: float = 2.0
    """Socket timeout of Redis commands: past it the answer is 503, never a hung request."""
    log_write_timeout: float = 0.5
    """Best-effort log records of rejected requests wait at most this long."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ReceiverSettings:
        """Settings from `RETRIEVE_REDIS_URL`, `RETRIEVE_DNS_SERVERS`, `RETRIEVE_ALLOWED_LIST`.

        Keyword overrides (from CLI flags) win; a None override is ignored.
        """
        source = os.environ if env is None else env
        settings = cls(
            redis_url=source.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL,
            dns_servers=parse_dns_servers(source.get(ENV_DNS_SERVERS)),
            extra_allowed=split_entries(source.get(ENV_ALLOWED_LIST)),
        )
        return settings.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> ReceiverSettings:
        values = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(values.get("dns_servers"), str):
            values["dns_servers"] = parse_dns_servers(values["dns_servers"])
        if isinstance(values.get("extra_allowed"), str):
            values["extra_allowed"] = split_entries(values["extra_allowed"])
        return replace(self, **values)
