"""Who may send: whitelist entries compiled into a matcher, and the sender's address.

Pure code, no I/O. Domain entries are only collected here; `dns.py` checks them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from retrieve_core.models import is_domain

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# X-Forwarded-For is attacker-controlled beyond the trusted hops: bound the work it can cause.
MAX_FORWARDED_HOPS = 32
_MAPPED_PREFIX = ipaddress.IPv6Network("::ffff:0:0/96")


def normalize(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:1.2.3.4) is the IPv4 address; an IPv6 zone id is dropped."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(int(address))
    return address


@lru_cache(maxsize=8192)
def parse_ip(text: str) -> IPAddress | None:
    """An address as it appears in a peer name or a forwarding header, or None if it is not one.

    Accepts `1.2.3.4`, `1.2.3.4:port`, `::1`, `[::1]` and `[::1]:port`.
    """
    value = text.strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.split(":", 1)[0]
    try:
        return normalize(ipaddress.ip_address(value))
    except ValueError:
        return None


def _parse_network(entry: str) -> IPNetwork | None:
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_PREFIX):
        # ::ffff:1.2.3.0/120 means 1.2.3.0/24: senders are normalised to IPv4.
        base = network.network_address.ipv4_mapped
        assert base is not None
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class NetworkSet:
    """Addresses and CIDRs, matched with integer masks (no object allocation per lookup)."""

    addresses: frozenset[IPAddress] = frozenset()
    v4: tuple[tuple[int, int], ...] = ()  # (network, mask)
    v6: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_networks(cls, networks: Iterable[IPNetwork]) -> NetworkSet:
        addresses: set[IPAddress] = set()
        v4: set[tuple[int, int]] = set()
        v6: set[tuple[int, int]] = set()
        for network in networks:
            if network.num_addresses == 1:
                addresses.add(network.network_address)
            elif isinstance(network, ipaddress.IPv4Network):
                v4.add((int(network.network_address), int(network.netmask)))
            else:
                v6.add((int(network.network_address), int(network.netmask)))
        return cls(frozenset(addresses), tuple(sorted(v4)), tuple(sorted(v6)))

    def __contains__(self, address: object) -> bool:
        if address in self.addresses:
            return True
        if isinstance(address, ipaddress.IPv4Address):
            value, ranges = int(address), self.v4
        elif isinstance(address, ipaddress.IPv6Address):
            value, ranges = int(address), self.v6
        else:
            return False
        return any(value & mask == network for network, mask in ranges)

    def __bool__(self) -> bool:
        return bool(self.addresses or self.v4 or self.v6)


@dataclass(frozen=True, slots=True)
class Whitelist:
    """A compiled allowed list: IP/CIDR entries matched locally, domain entries via DNS."""

    networks: NetworkSet
    domains: tuple[str, ...]

    def admits_ip(self, address: IPAddress) -> bool:
        return address in self.networks

    @property
    def empty(self) -> bool:
        return not self.networks and not self.domains


def compile_whitelist(entries: Iterable[str]) -> Whitelist:
    """Compile entries (IPv4, IPv6, CIDR, domain; `*.example.com` means example.com).

    Entries that are none of these are skipped with a warning: the API server and dev mode
    validate specs, so only a bad `RETRIEVE_ALLOWED_LIST` can get here.
    """
    networks: list[IPNetwork] = []
    domains: list[str] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        network = _parse_network(entry)
        if network is not None:
            networks.append(network)
            continue
        domain = entry.removeprefix("*.").rstrip(".")
        if is_domain(domain):
            if domain not in domains:
                domains.append(domain)
        else:
            log.warning("ignoring whitelist entry %r: not an IP address, a CIDR or a domain", raw)
    return Whitelist(NetworkSet.from_networks(networks), tuple(domains))


def compile_networks(entries: Iterable[str]) -> NetworkSet:
    """Trusted proxies: addresses and CIDRs only."""
    networks = []
    for raw in entries:
        network = _parse_network(raw)
        if network is None:
            log.warning("ignoring trusted proxy %r: not an IP address or a CIDR", raw)
        else:
            networks.append(network)
    return NetworkSet.from_networks(networks)


def split_entries(value: str | None) -> tuple[str, ...]:
    """`RETRIEVE_ALLOWED_LIST=shopify.com,203.0.113.0, 2001:db8::/32` as entries."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def sender_ip(
    peer: str | None, forwarded_for: str | None, trusted_proxies: NetworkSet
) -> IPAddress | None:
    """The sender: the TCP peer, unless the peer is a trusted proxy (DESIGN.md).

    Behind trusted proxies it is the right-most X-Forwarded-For address that is not itself a
    trusted proxy; if every entry is trusted, the left-most one. An entry that is not an address
    stops the walk: nothing left of it can be believed, so the answer is the peer itself (a
    proxy, normally not whitelisted). An untrusted peer's X-Forwarded-For is ignored.
    """
    peer_ip = parse_ip(peer) if peer else None
    if peer_ip is None or not forwarded_for or peer_ip not in trusted_proxies:
        return peer_ip
    hops = forwarded_for.split(",")
    if len(hops) > MAX_FORWARDED_HOPS:
        hops = hops[-MAX_FORWARDED_HOPS:]
    last: IPAddress | None = None
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            return peer_ip
        if address not in trusted_proxies:
            return address
        last = address
    return last if last is not None else peer_ip
