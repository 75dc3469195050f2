"""The one Redis client factory: the URL's scheme chooses standalone, Cluster or Sentinel.

| scheme | client |
| --- | --- |
| `redis://`, `rediss://`, `unix://` | one server (`Redis.from_url`, its query options included) |
| `redis+cluster://[user:pass@]host:port[,host:port…]`, `rediss+cluster://…` | `RedisCluster` from those seeds |
| `redis+sentinel://[user:pass@]host:port[,host:port…]/<service>[/<db>]`, `rediss+sentinel://…` | the primary the sentinels name |

`rediss` means TLS to every node (and to the sentinels); the credentials authenticate to every
node and sentinel. Cluster and Sentinel URLs take the query options `ssl_ca_certs`,
`ssl_cert_reqs` (`none`, `optional`, `required`), `ssl_certfile` and `ssl_keyfile`. Every mode
gets the same timeouts and the same bounded, sleep-free reconnect policy: past its timeouts a
caller sees an error, never a hang.
"""  # noqa: E501 - the table

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote

import redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

RedisClient: TypeAlias = Redis | RedisCluster
"""What every component holds: one server or a Sentinel-named primary (`Redis`), or a cluster."""
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline

Mode = Literal["standalone", "cluster", "sentinel"]

# The CRD's `spec.redis.url` pattern: exactly the schemes above, with a service for Sentinel.
_HOSTS = r"(?:[^@/?#]*@)?[^@/?#,]+(?:,[^@/?#,]+)*"
REDIS_URL_PATTERN: Final = (
    r"^(?:(?:rediss?|unix)://.+"
    rf"|rediss?\+cluster://{_HOSTS}/?(?:\?.*)?"
    rf"|rediss?\+sentinel://{_HOSTS}/[^/?#]+(?:/[0-9]+)?/?(?:\?.*)?)$"
)
_URL = re.compile(REDIS_URL_PATTERN)

CLUSTER_DEFAULT_PORT: Final = 6379
SENTINEL_DEFAULT_PORT: Final = 26379
_TLS_OPTIONS: Final = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS: Final = ("none", "optional", "required")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL."""

    mode: Mode
    url: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    """Cluster seeds or sentinels (empty for standalone: redis-py parses those URLs)."""
    service: str = ""
    db: int = 0
    tls_options: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", url)


def parse_redis_url(url: str) -> RedisTarget:
    """Parses and checks a Redis URL; ValueError (naming what is wrong, never the password)."""
    if not _URL.match(url):
        raise ValueError(
            f"unsupported Redis URL {redact_url(url)!r}: use redis://, rediss://, unix://, "
            "redis+cluster://host:port[,host:port...], "
            "redis+sentinel://host:port[,host:port...]/<service>[/<db>] (or rediss+...)"
        )
    scheme, rest = url.split("://", 1)
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url, tls=scheme == "rediss")
    base, mode = scheme.split("+")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo)
    default_port = CLUSTER_DEFAULT_PORT if mode == "cluster" else SENTINEL_DEFAULT_PORT
    nodes = tuple(_host_port(entry, default_port, url) for entry in hostlist.split(","))
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_TLS_OPTIONS))
    if unknown:
        raise ValueError(f"unsupported option(s) {', '.join(unknown)} in {redact_url(url)!r}")
    if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    service, db = "", 0
    if mode == "sentinel":
        parts = [unquote(p) for p in path.strip("/").split("/")]
        service = parts[0]
        db = int(parts[1]) if len(parts) > 1 else 0
    return RedisTarget(
        "cluster" if mode == "cluster" else "sentinel",
        url,
        tls=base == "rediss",
        username=username,
        password=password,
        nodes=nodes,
        service=service,
        db=db,
        tls_options=options,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:  # `redis+cluster://secret@host` is a password, as redis-py reads `redis://`
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _host_port(entry: str, default_port: int, url: str) -> tuple[str, int]:
    if entry.startswith("["):  # [IPv6]:port
        host, _, port = entry[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if not host or (port and not port.isdigit()) or not 0 < int(port or default_port) < 65536:
        raise ValueError(f"bad host:port {entry!r} in {redact_url(url)!r}")
    return host, int(port or default_port)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The same in every mode. `socket` bounds each command (None: no bound, for blocking
    reads that set their own); `connect` bounds connecting, AUTH and TLS included."""

    socket: float | None = 5.0
    connect: float = 2.0
    health_check_interval: int = 10


CLI_TIMEOUTS: Final = Timeouts(socket=5.0, connect=2.0)
"""Commands run by hand (`retrieve logs`, `replay`, the kubectl plugin)."""


def _retry() -> Retry:
    # One immediate reconnect after a restart or a failover, no sleeping backoff (the caller's
    # own deadline, not the client, decides how long a request may wait).
    return Retry(NoBackoff(), 1)


def connect_redis(url: str, timeouts: Timeouts | None = None) -> RedisClient:
    """The client for `url` (no I/O here: connections open on first use)."""
    target = parse_redis_url(url)
    t = timeouts or Timeouts()
    common: dict[str, Any] = {
        "socket_timeout": t.socket,
        "socket_connect_timeout": t.connect,
        "health_check_interval": t.health_check_interval,
    }
    if target.mode == "standalone":
        return Redis.from_url(url, retry=_retry(), **common)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    tls: dict[str, Any] = {"ssl": True, **target.tls_options} if target.tls else {}
    if target.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            # A few quick tries across a topology change (MOVED, a failed-over primary).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            require_full_coverage=False,
            **auth,
            **tls,
            **common,
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        target.nodes,
        sentinel_kwargs={**auth, **tls, **common},
        **common,
    )
    primary: SentinelPrimary = sentinel.master_for(
        target.service,
        redis_class=SentinelPrimary,
        db=target.db,
        retry=_retry(),
        **auth,
        **tls,
    )
    return primary


class SentinelPrimary(Redis):
    """The Sentinel-named primary; closing it also closes the connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(manager, "sentinels", ()):
            await client.aclose()


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


REDIS_FAILURES: Final = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when Redis (or the way to it) failed, not our code."""

_CLIENT_CODE: Final = tuple(
    os.path.dirname(str(package.__file__)) + os.sep for package in (redis, asyncio)
)


def is_redis_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised by a Redis call, says the call failed (the caller's answer:
    "unavailable, retry"), rather than a bug of ours.

    Besides `REDIS_FAILURES` that is an AttributeError or TypeError raised inside redis-py's or
    asyncio's own code: redis-py lets those out when a connection is torn down under a write
    (a cluster client disconnecting a node's connections during a resharding while another
    task is sending on one: `'NoneType' object has no attribute 'writelines'`; a peer reset
    under a write, redis/redis-py#4287), instead of its `ConnectionError`.
    """
    if isinstance(exc, REDIS_FAILURES):
        return True
    if not isinstance(exc, AttributeError | TypeError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_CLIENT_CODE)
