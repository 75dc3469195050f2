"""Domain whitelist entries: forward-confirmed reverse DNS against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest

from retrieve_receiver.dns import FcrdnsVerifier, make_resolver, name_matches, parse_dns_servers
from tests.receiver.conftest import ClientFactory, make_app, make_integration, make_provider
from tests.receiver.dns_server import LoopbackDNS, free_udp_port

RECORDS = {
    ("PTR", "2.0.0.127.in-addr.arpa"): ["hook.shopify.com"],
    ("A", "hook.shopify.com"): ["127.0.0.2"],
    # PTR claims shopify, but the name does not resolve back to the sender
    ("PTR", "3.0.0.127.in-addr.arpa"): ["evil.shopify.com"],
    ("A", "evil.shopify.com"): ["127.0.0.9"],
    # names that only look like shopify.com
    ("PTR", "4.0.0.127.in-addr.arpa"): ["shopify.com.attacker.net"],
    ("A", "shopify.com.attacker.net"): ["127.0.0.4"],
    ("PTR", "5.0.0.127.in-addr.arpa"): ["notshopify.com"],
    ("A", "notshopify.com"): ["127.0.0.5"],
    ("PTR", "6.0.0.127.in-addr.arpa"): ["shopify.com"],
    ("A", "shopify.com"): ["127.0.0.6"],
}


@pytest.fixture
def dns_server() -> Iterator[LoopbackDNS]:
    with LoopbackDNS(RECORDS) as server:
        yield server


def verifier_for(server: LoopbackDNS, timeout: float = 2.0) -> FcrdnsVerifier:
    return FcrdnsVerifier(make_resolver([("127.0.0.1", server.port)], timeout))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("address", "admitted"),
    [
        ("127.0.0.2", True),  # hook.shopify.com, confirmed forward
        ("127.0.0.6", True),  # the domain itself
        ("127.0.0.3", False),  # forward-resolves elsewhere
        ("127.0.0.4", False),  # shopify.com.attacker.net
        ("127.0.0.5", False),  # notshopify.com
        ("127.0.0.7", False),  # no PTR at all
    ],
)
async def test_forward_confirmed_reverse_dns(
    dns_server: LoopbackDNS, address: str, admitted: bool
) -> None:
    verifier = verifier_for(dns_server)
    assert await verifier.admits(ipaddress.ip_address(address), ["shopify.com"]) is admitted


@pytest.mark.unit
async def test_answers_are_cached_for_their_ttl(dns_server: LoopbackDNS) -> None:
    verifier = verifier_for(dns_server)
    sender = ipaddress.ip_address("127.0.0.2")
    for _ in range(5):
        assert await verifier.admits(sender, ["shopify.com"])
    assert dns_server.queries[("PTR", "2.0.0.127.in-addr.arpa")] == 1
    assert dns_server.queries[("A", "hook.shopify.com")] == 1
    # negative answers are cached too
    nobody = ipaddress.ip_address("127.0.0.7")
    for _ in range(3):
        assert not await verifier.admits(nobody, ["shopify.com"])
    assert dns_server.queries[("PTR", "7.0.0.127.in-addr.arpa")] == 1


@pytest.mark.unit
async def test_expired_answers_are_asked_again() -> None:
    with LoopbackDNS(RECORDS, ttl=1) as server:
        verifier = verifier_for(server)
        sender = ipaddress.ip_address("127.0.0.2")
        assert await verifier.admits(sender, ["shopify.com"])
        await asyncio.sleep(1.1)
        assert await verifier.admits(sender, ["shopify.com"])
        assert server.queries[("PTR", "2.0.0.127.in-addr.arpa")] == 2


@pytest.mark.unit
async def test_unreachable_dns_server_means_not_admitted() -> None:
    verifier = FcrdnsVerifier(make_resolver([("127.0.0.1", free_udp_port())], timeout=0.5))
    # The resolver's own timeout ends the lookup; wait_for only keeps a hang from hiding.
    admitted = await asyncio.wait_for(
        verifier.admits(ipaddress.ip_address("127.0.0.2"), ["shopify.com"]), 30
    )
    assert admitted is False


@pytest.mark.unit
def test_name_matching_needs_a_label_boundary() -> None:
    assert name_matches("shopify.com.", "shopify.com")
    assert name_matches("a.b.Shopify.com", "shopify.com")
    assert not name_matches("notshopify.com", "shopify.com")
    assert not name_matches("shopify.com.evil.net", "shopify.com")


@pytest.mark.unit
def test_dns_servers_setting_parses_hosts_and_ports() -> None:
    assert parse_dns_servers("10.0.0.10:53, 127.0.0.1:5353,[::1]:5300,9.9.9.9") == (
        ("10.0.0.10", 53),
        ("127.0.0.1", 5353),
        ("::1", 5300),
        ("9.9.9.9", 53),
    )
    assert parse_dns_servers("") == ()
    with pytest.raises(ValueError, match="invalid DNS server"):
        parse_dns_servers("dns.example:53")


@pytest.mark.redis
async def test_domain_entry_admits_a_confirmed_sender_over_http(
    dns_server: LoopbackDNS, receiver_client: ClientFactory
) -> None:
    app = make_app(allowed=["shopify.com"], integrations=[make_integration("ABC123")])
    provider = make_provider(app)
    servers = (("127.0.0.1", dns_server.port),)
    confirmed = await receiver_client(provider, source="127.0.0.2", dns_servers=servers)
    liar = await receiver_client(provider, source="127.0.0.3", dns_servers=servers)

    ok = await confirmed.post("/integration/ABC123", json={"id": 1})
    refused = await liar.post("/integration/ABC123", json={"id": 1})

    assert ok.status == 200
    assert refused.status == 403
    assert await refused.json() == {
        "result": False,
        "error": "This domain/IP (127.0.0.3) isn't authorized on Retrieve",
    }


@pytest.mark.redis
async def test_no_dns_lookup_when_an_ip_entry_matches(
    dns_server: LoopbackDNS, receiver_client: ClientFactory
) -> None:
    app = make_app(allowed=["127.0.0.2", "shopify.com"], integrations=[make_integration("ABC123")])
    client = await receiver_client(
        make_provider(app), source="127.0.0.2", dns_servers=(("127.0.0.1", dns_server.port),)
    )
    assert (await client.post("/integration/ABC123", json={})).status == 200
    assert sum(dns_server.queries.values()) == 0
