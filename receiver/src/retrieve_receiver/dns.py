"""Forward-confirmed reverse DNS for domain whitelist entries.

A domain entry `shopify.com` admits a sender whose PTR name is `shopify.com` or ends in
`.shopify.com` and whose name resolves (A for IPv4, AAAA for IPv6) back to the sender. PTR and
forward answers are cached for their TTL; negative answers and failures briefly. Concurrent
lookups of the same name share one query. Any DNS failure means "not admitted".
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from .whitelist import IPAddress, parse_ip

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
NEGATIVE_TTL = 60.0  # NXDOMAIN / no answer
FAILURE_TTL = 5.0  # timeouts, SERVFAIL: retry soon, but do not hammer a sick server
MIN_TTL = 1.0
MAX_TTL = 3600.0
MAX_PTR_NAMES = 8
MAX_CACHE_ENTRIES = 10_000


def parse_dns_servers(value: str | None) -> tuple[tuple[str, int], ...]:
    """`RETRIEVE_DNS_SERVERS=10.0.0.10:53,[::1]:5353,127.0.0.1` as (host, port) pairs."""
    servers: list[tuple[str, int]] = []
    for raw in (value or "").split(","):
        item = raw.strip()
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):
            end = item.index("]")
            host, rest = item[1:end], item[end + 1 :]
            if rest.startswith(":"):
                port = int(rest[1:])
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = int(port_text)
        if parse_ip(host) is None or not 0 < port < 65536:
            raise ValueError(f"invalid DNS server {raw!r}: expected host:port with an IP host")
        servers.append((host, port))
    return tuple(servers)


def make_resolver(
    servers: Sequence[tuple[str, int]], timeout: float = DEFAULT_TIMEOUT
) -> dns.asyncresolver.Resolver:
    """A resolver for the given servers, or the system's (/etc/resolv.conf) when none."""
    if servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            log.warning("no system DNS configuration (%s): domain entries admit nobody", exc)
            resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None  # we cache ourselves, with negative caching and in-flight sharing
    return resolver


def name_matches(name: str, domain: str) -> bool:
    name = name.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


class _Cache:
    """A small TTL cache; bounded, oldest entries dropped first."""

    def __init__(self, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self._values: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._inflight: dict[str, asyncio.Future[tuple[str, ...]]] = {}
        self._max = max_entries

    async def get(
        self, key: str, fetch: Callable[[], Awaitable[tuple[tuple[str, ...], float]]]
    ) -> tuple[str, ...]:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[str, ...]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            values, ttl = await fetch()
            self._store(key, values, ttl)
            future.set_result(values)
            return values
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be gone
            raise
        finally:
            del self._inflight[key]

    def _store(self, key: str, values: tuple[str, ...], ttl: float) -> None:
        if len(self._values) >= self._max:
            now = time.monotonic()
            for stale in [k for k, (expiry, _) in self._values.items() if expiry <= now]:
                del self._values[stale]
            while len(self._values) >= self._max:
                del self._values[next(iter(self._values))]
        self._values[key] = (time.monotonic() + ttl, values)

    def clear(self) -> None:
        self._values.clear()


class FcrdnsVerifier:
    """Checks a sender against domain entries with forward-confirmed reverse DNS."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver
        self._ptr = _Cache()
        self._forward = _Cache()

    async def admits(self, address: IPAddress, domains: Sequence[str]) -> bool:
        if not domains:
            return False
        for name in await self._ptr.get(str(address), functools.partial(self._lookup_ptr, address)):
            if not any(name_matches(name, domain) for domain in domains):
                continue
            rdtype = "A" if isinstance(address, ipaddress.IPv4Address) else "AAAA"
            addresses = await self._forward.get(
                f"{rdtype} {name}", functools.partial(self._lookup_forward, name, rdtype)
            )
            if str(address) in addresses:
                return True
        return False

    async def _lookup_ptr(self, address: IPAddress) -> tuple[tuple[str, ...], float]:
        qname = dns.reversename.from_address(str(address))
        result = await self._query(qname.to_text(), "PTR")
        if result is None:
            return (), FAILURE_TTL
        records, ttl = result
        names = tuple(str(r.target).lower().rstrip(".") for r in records[:MAX_PTR_NAMES])
        return names, ttl

    async def _lookup_forward(self, name: str, rdtype: str) -> tuple[tuple[str, ...], float]:
        result = await self._query(name + ".", rdtype)
        if result is None:
            return (), FAILURE_TTL
        records, ttl = result
        found = (parse_ip(str(r.address)) for r in records)
        return tuple(str(a) for a in found if a is not None), ttl

    async def _query(self, qname: str, rdtype: str) -> tuple[list[Any], float] | None:
        """The records and their TTL (none for a negative answer), or None when DNS failed."""
        try:
            answer = await self.resolver.resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], NEGATIVE_TTL
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("DNS %s lookup of %s failed: %s", rdtype, qname, exc)
            return None
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
        return list(answer), min(max(ttl, MIN_TTL), MAX_TTL)

    def clear(self) -> None:
        self._ptr.clear()
        self._forward.clear()
