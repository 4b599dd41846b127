#!/usr/bin/env python3
"""Build the small pcaps the btest suite runs Zeek on (``python testing/Traces/make_traces.py``).

Everything is crafted offline with scapy and written with ``wrpcap``: no packet is ever sent and no
server is contacted. Timestamps, ports, sequence numbers and the TLS client random are fixed, so
the output is byte-for-byte reproducible and the Baseline files can be reasoned out by hand.

Each trace is documented next to its builder; the btest files in ``testing/tests`` say what Zeek
must make of it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, Ether, IPv6, Raw, wrpcap  # type: ignore

OUT = Path(__file__).resolve().parent
T0 = 1795805000.0            # 2026-11-27, the fixtures' clock
RESOLVER = "10.0.0.2"
MAC_C, MAC_S = "02:42:ac:11:00:03", "02:42:ac:11:00:01"


class Clock:
    """Monotonic packet timestamps: 1 ms between packets unless told otherwise."""

    def __init__(self, start: float) -> None:
        self.t = start

    def tick(self, step: float = 0.001) -> float:
        self.t += step
        return round(self.t, 6)

    def jump_to(self, t: float) -> None:
        self.t = t


def _frame(src: str, dst: str, l4, payload: bytes | None = None):
    net = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, ttl=64)
    pkt = Ether(src=MAC_C, dst=MAC_S) / net / l4
    if payload:
        pkt = pkt / Raw(load=payload)
    return pkt


def tcp_session(clock: Clock, client: str, cport: int, server: str, sport: int,
                request: bytes, response: bytes = b"") -> list:
    """A complete TCP conversation: handshake, one request, optional response, FIN both ways."""
    c_isn, s_isn = 1000 + cport, 5000 + sport
    pkts = []

    def add(src, dst, sp, dp, flags, seq, ack, data=b""):
        p = _frame(src, dst, TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack,
                                 window=64240), data or None)
        p.time = clock.tick()
        pkts.append(p)

    add(client, server, cport, sport, "S", c_isn, 0)
    add(server, client, sport, cport, "SA", s_isn, c_isn + 1)
    add(client, server, cport, sport, "A", c_isn + 1, s_isn + 1)
    cseq, sseq = c_isn + 1, s_isn + 1
    add(client, server, cport, sport, "PA", cseq, sseq, request)
    cseq += len(request)
    if response:
        add(server, client, sport, cport, "PA", sseq, cseq, response)
        sseq += len(response)
    add(client, server, cport, sport, "A", cseq, sseq)
    add(client, server, cport, sport, "FA", cseq, sseq)
    cseq += 1
    add(server, client, sport, cport, "FA", sseq, cseq)
    sseq += 1
    add(client, server, cport, sport, "A", cseq, sseq)
    return pkts


def http_get(host: str, uri: str = "/", agent: str = "Wget") -> bytes:
    return (f"GET {uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
            f"Connection: close\r\n\r\n").encode()


def http_ok(body: bytes = b"203.0.113.45\n") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def dns_exchange(clock: Clock, client: str, cport: int, qname: str, qtype: str = "A",
                 answers: list[tuple[str, str, int]] | None = None, txid: int = 0x1000,
                 rcode: int = 0) -> list:
    """One UDP query and its response; ``answers`` are (type, rdata, ttl)."""
    q = _frame(client, RESOLVER, UDP(sport=cport, dport=53),
               bytes(DNS(id=txid, rd=1, qd=[DNSQR(qname=qname, qtype=qtype)])))
    q.time = clock.tick()
    rrs = [DNSRR(rrname=qname, type=rtype, ttl=ttl, rdata=rdata)
           for rtype, rdata, ttl in answers or []]
    resp = DNS(id=txid, qr=1, aa=1, rd=1, ra=1, rcode=rcode,
               qd=[DNSQR(qname=qname, qtype=qtype)], an=rrs)
    r = _frame(RESOLVER, client, UDP(sport=53, dport=cport), bytes(resp))
    r.time = clock.tick()
    return [q, r]


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def tls_client_hello(sni: str | None) -> bytes:
    """A TLS 1.2 ClientHello record, with or without the server_name extension."""
    exts = b""
    if sni:
        name = sni.encode()
        entry = b"\x00" + len(name).to_bytes(2, "big") + name          # host_name
        exts += _ext(0x0000, len(entry).to_bytes(2, "big") + entry)
    exts += _ext(0x000a, b"\x00\x02\x00\x1d")                           # groups: x25519
    exts += _ext(0x000b, b"\x01\x00")                                   # ec point formats
    exts += _ext(0x000d, b"\x00\x04\x04\x03\x08\x04")                   # signature algorithms
    ciphers = b"\xc0\x2b\xc0\x2f\x00\x9c"
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00"
            + len(ciphers).to_bytes(2, "big") + ciphers + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


# --- the traces -------------------------------------------------------------------------------

def trace_http() -> list:
    """Container 172.17.0.3 makes five HTTP requests:
    1. Host ``ipinfo.io:80`` -> listed (port stripped);
    2. Host ``api.example.com`` -> not listed;
    3. Host ``notipinfo.io`` -> not listed (label boundary);
    4. Host ``www.IPINFO.io`` -> listed via ``ipinfo.io`` (label walk, case folded);
    5. ``169.254.169.254/latest/meta-data/placement/region`` -> cloud metadata location."""
    clk, c = Clock(T0), "172.17.0.3"
    pkts = []
    pkts += tcp_session(clk, c, 40001, "34.117.59.81", 80, http_get("ipinfo.io:80"), http_ok())
    pkts += tcp_session(clk, c, 40002, "93.184.215.14", 80,
                        http_get("api.example.com", "/v1/items"), http_ok(b"[]"))
    pkts += tcp_session(clk, c, 40003, "34.117.59.81", 80, http_get("notipinfo.io", "/json"),
                        http_ok())
    pkts += tcp_session(clk, c, 40004, "34.160.111.145", 80, http_get("www.IPINFO.io"), http_ok())
    pkts += tcp_session(clk, c, 40005, "169.254.169.254", 80,
                        http_get("169.254.169.254", "/latest/meta-data/placement/region"),
                        http_ok(b"eu-central-1"))
    return pkts


def trace_dns() -> list:
    """Container 172.17.0.17 resolves:
    1. ``myip.opendns.com`` (DNS echo trick) -> listed;
    2. ``www.ipinfo.io`` A and AAAA on one socket -> listed once (label walk);
    3. ``db.svc.internal`` -> not listed;
    4. ``ipinfo.io.evil.test`` -> not listed (suffix, not prefix, matching)."""
    clk, c = Clock(T0 + 100), "172.17.0.17"
    pkts = []
    pkts += dns_exchange(clk, c, 50001, "myip.opendns.com", answers=[("A", "203.0.113.45", 0)],
                         txid=0x1001)
    pkts += dns_exchange(clk, c, 50002, "www.ipinfo.io", answers=[("A", "34.117.59.81", 300)],
                         txid=0x1002)
    pkts += dns_exchange(clk, c, 50002, "www.ipinfo.io", qtype="AAAA", txid=0x1003)
    pkts += dns_exchange(clk, c, 50003, "db.svc.internal", answers=[("A", "172.17.0.231", 300)],
                         txid=0x1004)
    pkts += dns_exchange(clk, c, 50004, "ipinfo.io.evil.test", txid=0x1005, rcode=3)
    return pkts


def trace_tls() -> list:
    """Container 172.17.0.17 opens TLS with SNI ``api.ipify.org`` (listed) and with SNI
    ``api.example.com`` (not listed). Only the client hello is sent; the server just ACKs."""
    clk, c = Clock(T0 + 200), "172.17.0.17"
    pkts = []
    pkts += tcp_session(clk, c, 51001, "104.26.12.205", 443, tls_client_hello("api.ipify.org"))
    pkts += tcp_session(clk, c, 51002, "93.184.215.14", 443, tls_client_hello("api.example.com"))
    return pkts


def trace_resolved() -> list:
    """HTTPS without a usable SNI, caught through the DNS answer:
    1. T+0   container 172.17.0.17 resolves ipinfo.io -> 34.117.59.81, TTL 300;
    2. T+1   it connects to 34.117.59.81:443 with a client hello without SNI -> resolved_ip;
    3. T+2   again, SNI ``cdn.example.net`` (fronting, not listed) -> resolved_ip;
    4. T+3   non-container 192.168.1.10 connects there without SNI -> ignored;
    5. T+400 the container connects again, past TTL + 60 s grace -> ignored."""
    base = T0 + 300
    clk, c = Clock(base), "172.17.0.17"
    pkts = dns_exchange(clk, c, 52001, "ipinfo.io", answers=[("A", "34.117.59.81", 300)],
                        txid=0x2001)
    clk.jump_to(base + 1)
    pkts += tcp_session(clk, c, 52002, "34.117.59.81", 443, tls_client_hello(None))
    clk.jump_to(base + 2)
    pkts += tcp_session(clk, c, 52003, "34.117.59.81", 443, tls_client_hello("cdn.example.net"))
    clk.jump_to(base + 3)
    pkts += tcp_session(clk, "192.168.1.10", 52005, "34.117.59.81", 443, tls_client_hello(None))
    clk.jump_to(base + 400)
    pkts += tcp_session(clk, c, 52004, "34.117.59.81", 443, tls_client_hello(None))
    return pkts


def trace_non_container() -> list:
    """The same kinds of lookups from 192.168.1.10, outside every container subnet."""
    clk, h = Clock(T0 + 800), "192.168.1.10"
    pkts = dns_exchange(clk, h, 53001, "ipinfo.io", answers=[("A", "34.117.59.81", 300)],
                        txid=0x3001)
    pkts += tcp_session(clk, h, 53002, "34.117.59.81", 80, http_get("ipinfo.io"), http_ok())
    pkts += tcp_session(clk, h, 53003, "104.26.12.205", 443, tls_client_hello("api.ipify.org"))
    return pkts


def trace_first_packet() -> list:
    """The trace's very first packet is the lookup: 10.200.5.7 (a pod CIDR that only the site
    subnet file names; the address map knows the container) asks for ipinfo.io. Nothing comes
    before it, so any table still loading would make Zeek miss it."""
    clk = Clock(T0 + 900)
    return dns_exchange(clk, "10.200.5.7", 54001, "ipinfo.io",
                        answers=[("A", "34.117.59.81", 300)], txid=0x4001)


def trace_metadata_v6() -> list:
    """Container fd00:dead:beef::5 (an IPv6 pod network only the site subnet file names) asks
    AWS's IPv6 metadata endpoint for its placement: Host ``[fd00:ec2::254]``. Zeek's HTTP script
    cuts HTTP::Info$host at the first colon ("[fd00"), so the package must read the raw header."""
    clk, c = Clock(T0 + 1000), "fd00:dead:beef::5"
    return tcp_session(clk, c, 55001, "fd00:ec2::254", 80,
                       http_get("[fd00:ec2::254]", "/latest/meta-data/placement/availability-zone"),
                       http_ok(b"eu-central-1a"))


TRACES = {
    "http.pcap": trace_http,
    "dns.pcap": trace_dns,
    "tls.pcap": trace_tls,
    "resolved.pcap": trace_resolved,
    "non_container.pcap": trace_non_container,
    "first_packet.pcap": trace_first_packet,
    "metadata_v6.pcap": trace_metadata_v6,
}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, build in TRACES.items():
        pkts = build()
        wrpcap(str(out / name), pkts)
        print(f"{name}: {len(pkts)} packets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
