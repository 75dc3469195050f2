"""Process settings of a receiver, from the environment, overridable by the command line."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from retrieve_core.constants import (
    DEFAULT_MAX_BODY_BYTES,
    ENV_ADMIN_HOSTS,
    ENV_ADMIN_MAX_CONNECTIONS,
    ENV_ALLOWED_LIST,
    ENV_BODY_TIMEOUT,
    ENV_DNS_SERVERS,
    ENV_HEADER_TIMEOUT,
    ENV_IDLE_TIMEOUT,
    ENV_LEAN_HTTP,
    ENV_LOG_WRITE_TIMEOUT,
    ENV_MAX_CONNECTIONS,
    ENV_REDIS_TIMEOUT,
    ENV_REDIS_URL,
    ENV_REJECTED_PAYLOAD_BYTES,
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
    """Socket timeout of Redis commands (`RETRIEVE_REDIS_TIMEOUT_SECONDS`); an enqueue waits at
    most twice this long, then the answer is 503, never a hung request."""
    log_write_timeout: float = 0.5
    """Best-effort log records of refused requests wait at most this long for Redis, then are
    dropped with a warning (`RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS`)."""
    header_timeout: float = 10.0
    """Seconds a connection has to deliver a complete request head, from its opening and from
    the first byte of each later request; then it is closed (`RETRIEVE_HEADER_TIMEOUT_SECONDS`)."""
    body_timeout: float = 30.0
    """Seconds to receive a whole body once the head is in; then 408 and the connection is
    closed (`RETRIEVE_BODY_TIMEOUT_SECONDS`)."""
    idle_timeout: float = 120.0
    """Seconds an idle keep-alive connection stays open between requests; keep it above the
    Ingress controller's upstream keep-alive, 60 s in ingress-nginx
    (`RETRIEVE_IDLE_TIMEOUT_SECONDS`)."""
    max_connections: int = 2048
    """Open connections on the public port at once; past it a new one gets a 503 and is closed
    (`RETRIEVE_MAX_CONNECTIONS`, 0: no cap)."""
    admin_max_connections: int = 256
    """The same cap on the admin port, counted apart so that a flood of either port never
    locks out the other (`RETRIEVE_ADMIN_MAX_CONNECTIONS`, 0: no cap); the timeouts above apply
    to both ports."""
    rejected_payload_bytes: int = 1024
    """Of a refused request's body, at most this many bytes go into its log record (and never
    more than the application's `webhookLogs.payloadBytes`) (`RETRIEVE_REJECTED_PAYLOAD_BYTES`)."""
    lean_http: bool = True
    """Serve plain webhook requests on the lean HTTP path (`retrieve_receiver.lean`);
    `RETRIEVE_LEAN_HTTP=0` leaves every request to aiohttp."""
    admin_hosts: tuple[str, ...] = ()
    """Host names the admin port answers besides IP addresses and `localhost`
    (`RETRIEVE_ADMIN_HOSTS`); an entry starting with `.` admits every name ending in it."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ReceiverSettings:
        """Settings from `RETRIEVE_REDIS_URL`, `RETRIEVE_DNS_SERVERS`, `RETRIEVE_ALLOWED_LIST`,
        `RETRIEVE_ADMIN_HOSTS` and the connection limits (`RETRIEVE_HEADER_TIMEOUT_SECONDS`,
        `RETRIEVE_BODY_TIMEOUT_SECONDS`, `RETRIEVE_IDLE_TIMEOUT_SECONDS`,
        `RETRIEVE_MAX_CONNECTIONS`, `RETRIEVE_ADMIN_MAX_CONNECTIONS`), the Redis waits
        (`RETRIEVE_REDIS_TIMEOUT_SECONDS`, `RETRIEVE_LOG_WRITE_TIMEOUT_SECONDS`, both above 0) and
        `RETRIEVE_LEAN_HTTP`.

        Keyword overrides (from CLI flags) win; a None override is ignored.
        """
        source = os.environ if env is None else env
        settings = cls(
            redis_url=source.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL,
            dns_servers=parse_dns_servers(source.get(ENV_DNS_SERVERS)),
            extra_allowed=split_entries(source.get(ENV_ALLOWED_LIST)),
            admin_hosts=split_entries(source.get(ENV_ADMIN_HOSTS)),
            lean_http=_flag(source, ENV_LEAN_HTTP, default=True),
        )
        limits: dict[str, Any] = {
            "header_timeout": _number(source, ENV_HEADER_TIMEOUT, float),
            "body_timeout": _number(source, ENV_BODY_TIMEOUT, float),
            "idle_timeout": _number(source, ENV_IDLE_TIMEOUT, float),
            "max_connections": _number(source, ENV_MAX_CONNECTIONS, int),
            "admin_max_connections": _number(source, ENV_ADMIN_MAX_CONNECTIONS, int),
            "rejected_payload_bytes": _number(source, ENV_REJECTED_PAYLOAD_BYTES, int),
            "redis_timeout": _number(source, ENV_REDIS_TIMEOUT, float, positive=True),
            "log_write_timeout": _number(source, ENV_LOG_WRITE_TIMEOUT, float, positive=True),
        }
        settings = settings.with_overrides(**limits)
        return settings.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> ReceiverSettings:
        values = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(values.get("dns_servers"), str):
            values["dns_servers"] = parse_dns_servers(values["dns_servers"])
        if isinstance(values.get("extra_allowed"), str):
            values["extra_allowed"] = split_entries(values["extra_allowed"])
        return replace(self, **values)


def _flag(source: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = source.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a flag: use 1 or 0")


def _number(
    source: Mapping[str, str], name: str, kind: type[float] | type[int], *, positive: bool = False
) -> Any:
    """A non-negative (or, for a wait that 0 would make fail at once, a positive) number from
    the environment, None when unset; a clear error otherwise."""
    raw = source.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} is not a finite number")
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    if positive and value == 0:
        raise ValueError(f"{name}={raw!r} must be above 0")
    return value
