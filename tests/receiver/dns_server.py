"""A real DNS server on loopback (dnslib), answering from a table, counting the queries."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from typing import Any

from dnslib import AAAA, PTR, QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TableResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[tuple[str, str], list[str]], ttl: int) -> None:
        self.records = records
        self.ttl = ttl
        self.queries: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(qtype, qname)] += 1
        values = self.records.get((qtype, qname))
        if values is None:
            if not any(name == qname for _, name in self.records):
                reply.header.rcode = 3  # NXDOMAIN
            return reply
        for value in values:
            rdata = {"PTR": lambda v: PTR(v + "."), "A": A, "AAAA": AAAA}[qtype](value)
            reply.add_answer(RR(qname + ".", QTYPE.reverse[qtype], rdata=rdata, ttl=self.ttl))
        return reply


class LoopbackDNS:
    def __init__(self, records: dict[tuple[str, str], list[str]], ttl: int = 300) -> None:
        self.resolver = TableResolver(records, ttl)
        self.port = free_udp_port()
        self.server = DNSServer(self.resolver, port=self.port, address="127.0.0.1")

    @property
    def queries(self) -> Counter[tuple[str, str]]:
        return self.resolver.queries

    def __enter__(self) -> LoopbackDNS:
        self.server.start_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()
        self.server.server.server_close()
