"""Whitelist matching and sender identification (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieve_receiver.whitelist import (
    compile_networks,
    compile_whitelist,
    parse_ip,
    sender_ip,
    split_entries,
)

pytestmark = pytest.mark.unit

PROXIES = compile_networks(["10.0.0.0/8", "fd00::/8"])


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_entries_compile_into_addresses_networks_and_domains() -> None:
    wl = compile_whitelist(
        ["shopify.com", "203.0.113.0", "198.51.100.0/24", "2001:db8::/32", "*.example.org", "::1"]
    )
    assert wl.domains == ("shopify.com", "example.org")
    assert wl.admits_ip(ip("203.0.113.0"))
    assert not wl.admits_ip(ip("203.0.113.1"))  # a bare address is that address only
    assert wl.admits_ip(ip("198.51.100.255"))
    assert not wl.admits_ip(ip("198.51.101.0"))
    assert wl.admits_ip(ip("2001:db8:ffff::1"))
    assert not wl.admits_ip(ip("2001:db9::1"))
    assert wl.admits_ip(ip("::1"))


def test_empty_list_admits_nobody() -> None:
    wl = compile_whitelist([])
    assert wl.empty
    assert not wl.admits_ip(ip("127.0.0.1"))
    assert not wl.admits_ip(ip("::1"))


def test_garbage_entries_are_skipped_not_fatal() -> None:
    wl = compile_whitelist(["not an entry!", "10.0.0.1"])
    assert wl.domains == ()
    assert wl.admits_ip(ip("10.0.0.1"))


def test_ipv4_mapped_ipv6_is_normalised_on_both_sides() -> None:
    assert parse_ip("::ffff:203.0.113.5") == ip("203.0.113.5")
    wl = compile_whitelist(["::ffff:198.51.100.0/120"])
    assert wl.admits_ip(ip("198.51.100.77"))
    assert sender_ip("::ffff:203.0.113.5", None, PROXIES) == ip("203.0.113.5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:443", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("unknown", None),
        ("", None),
        ("1.2.3", None),
        ("[::1", None),
    ],
)
def test_addresses_in_headers_parse(text: str, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (str(parsed) if parsed else None) == expected


def test_untrusted_peer_is_the_sender_whatever_it_forwards() -> None:
    assert sender_ip("203.0.113.9", "198.51.100.1", PROXIES) == ip("203.0.113.9")


def test_trusted_peer_sender_is_right_most_untrusted_forwarded_address() -> None:
    assert sender_ip("10.0.0.2", "198.51.100.1", PROXIES) == ip("198.51.100.1")
    assert sender_ip("10.0.0.2", "198.51.100.1, 10.1.1.1", PROXIES) == ip("198.51.100.1")


def test_spoofed_left_entries_do_not_win() -> None:
    # The client sent "X-Forwarded-For: 203.0.113.7"; the ingress appended the real address.
    assert sender_ip("10.0.0.2", "203.0.113.7, 198.51.100.66", PROXIES) == ip("198.51.100.66")


def test_all_forwarded_addresses_trusted_means_the_left_most() -> None:
    assert sender_ip("10.0.0.2", "10.9.9.9, 10.1.1.1", PROXIES) == ip("10.9.9.9")


def test_garbage_forwarded_entry_falls_back_to_the_peer() -> None:
    assert sender_ip("10.0.0.2", "203.0.113.7, bogus", PROXIES) == ip("10.0.0.2")
    assert sender_ip("10.0.0.2", "", PROXIES) == ip("10.0.0.2")
    assert sender_ip("10.0.0.2", ",,,", PROXIES) == ip("10.0.0.2")


def test_ipv6_proxies_and_senders() -> None:
    assert sender_ip("fd00::1", "2001:db8::5, fd00::2", PROXIES) == ip("2001:db8::5")
    assert sender_ip("fd00::1", "[2001:db8::5]:1234", PROXIES) == ip("2001:db8::5")


def test_unknown_peer_is_no_sender() -> None:
    assert sender_ip(None, "203.0.113.7", PROXIES) is None


def test_environment_list_splits_on_commas() -> None:
    assert split_entries("shopify.com, 203.0.113.0,,198.51.100.0 ") == (
        "shopify.com",
        "203.0.113.0",
        "198.51.100.0",
    )
    assert split_entries(None) == ()


# ---------------------------------------------------------------- properties

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
networks = st.one_of(
    st.builds(
        lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False), ipv4, st.integers(8, 32)
    ),
    st.builds(
        lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False), ipv6, st.integers(16, 128)
    ),
)


def reference_admits(
    entries: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """The obvious, slow definition: some entry contains the (IPv4-unmapped) address."""
    for entry in entries:
        network: ipaddress.IPv4Network | ipaddress.IPv6Network = entry
        mapped = entry.network_address
        if (
            isinstance(mapped, ipaddress.IPv6Address)
            and mapped.ipv4_mapped is not None
            and entry.prefixlen >= 96
        ):
            network = ipaddress.IPv4Network(f"{mapped.ipv4_mapped}/{entry.prefixlen - 96}")
        same_family = network.version == address.version
        if same_family and int(address) & int(network.netmask) == int(network.network_address):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(networks, max_size=8), st.one_of(ipv4, ipv6))
def test_matcher_admits_exactly_the_listed_networks(
    entries: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    candidate: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    wl = compile_whitelist([str(n) for n in entries])
    normalised = parse_ip(str(candidate))
    assert normalised is not None
    assert wl.admits_ip(normalised) is reference_admits(entries, normalised)


@settings(max_examples=200, deadline=None)
@given(st.lists(networks, min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_mapped_ipv6_entries_match_ipv4_senders(
    entries: list[ipaddress.IPv4Network | ipaddress.IPv6Network], value: int
) -> None:
    v4 = [n for n in entries if isinstance(n, ipaddress.IPv4Network)]
    mapped = [f"::ffff:{n.network_address}/{n.prefixlen + 96}" for n in v4]
    address = ipaddress.IPv4Address(value)
    assert compile_whitelist(mapped).admits_ip(address) is reference_admits(list(v4), address)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=6), st.one_of(ipv4, ipv6))
def test_matcher_never_crashes_and_never_admits_with_no_address_entries(
    entries: list[str], candidate: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    wl = compile_whitelist(
        [e for e in entries if "/" not in e and ":" not in e and not e[:1].isdigit()]
    )
    assert not wl.admits_ip(candidate)


hop = st.one_of(
    ipv4.map(str),
    ipv6.map(str),
    st.sampled_from(["10.0.0.3", "fd00::9", "garbage", " ", "[::1]:80"]),
    st.text(max_size=20),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(ipv4, ipv6).map(str), st.lists(hop, max_size=40))
def test_sender_is_always_the_peer_or_one_of_the_forwarded_addresses(
    peer: str, hops: list[str]
) -> None:
    header = ",".join(hops)
    sender = sender_ip(peer, header, PROXIES)
    candidates = {parse_ip(peer)} | {parse_ip(h) for h in header.split(",")}
    assert sender is not None
    assert sender in candidates
    if parse_ip(peer) not in PROXIES:
        assert sender == parse_ip(peer)


@settings(max_examples=300, deadline=None)
@given(ipv4.map(str), st.lists(st.one_of(ipv4, ipv6).map(str), min_size=1, max_size=10))
def test_a_whitelisted_spoof_left_of_an_untrusted_hop_is_never_the_sender(
    real: str, spoofed: list[str]
) -> None:
    header = ", ".join([*spoofed, real])
    sender = sender_ip("10.0.0.1", header, PROXIES)
    if parse_ip(real) not in PROXIES:
        assert sender == parse_ip(real)
