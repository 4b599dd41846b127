"""A stand-in "internet" for `stowaway emulate`: a DNS resolver plus HTTP and HTTPS services that
answer for the IP-geolocation names, so the emulation exercises the whole detection path with no
packet leaving the machine.

Why a separate module and process: the emulator starts this inside a network namespace it created
and attached to the emulation's internal bridge (`ip netns exec NS python -m scheduler.emulate.standin`),
so the servers can only ever be reached from that bridge and have no route anywhere else. The
certificate is made per run with the `openssl` CLI (no `cryptography` dependency), and the server
accepts busybox wget's TLS 1.2 stack, which sends no `signature_algorithms` extension and so needs
OpenSSL security level 0 for the SHA-1 default.

Every request is written as one JSON line to the event log (DNS query, HTTP request, TLS SNI), so
the emulator can tell "the container asked" from "the detector saw it".
"""
from __future__ import annotations

import argparse
import http.server
import json
import logging
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

#: What the stand-in services report as "your public IP" (TEST-NET-3, a documentation address).
FAKE_PUBLIC_IP = "203.0.113.45"

#: name -> (last octet of its address on the emulation subnet, kind). The resolver is .250.
SERVICE_HOSTS: dict[str, tuple[int, str]] = {
    "ipinfo.io": (201, "ip_geolocation"),
    "ifconfig.me": (202, "ip_echo"),
    "api.ipify.org": (203, "ip_echo"),
    "icanhazip.com": (204, "ip_echo"),
    "checkip.amazonaws.com": (205, "ip_echo"),
    "ip-api.com": (206, "ip_geolocation"),
    "api.example.com": (210, "benign"),
}
RESOLVER_OCTET = 250
#: Names whose A record *is* the answer (DNS echo services) -> the fake public IP.
DNS_ECHO_NAMES = ("myip.opendns.com", "o-o.myaddr.l.google.com")
#: Public resolvers an adversary names on the nslookup command line; they resolve to our resolver.
RESOLVER_ALIASES = ("resolver1.opendns.com", "resolver2.opendns.com", "ns1.google.com")


def build_spec(subnet_prefix: str, event_log: str, cert: str = "", key: str = "") -> dict[str, Any]:
    """The stand-in's configuration for one /24 (e.g. "10.213.7"): who answers at which address.

    Pure function so tests and the emulator agree on the addresses without starting anything.
    """
    resolver = f"{subnet_prefix}.{RESOLVER_OCTET}"
    records: dict[str, str] = {n: f"{subnet_prefix}.{o}" for n, (o, _k) in SERVICE_HOSTS.items()}
    for n in DNS_ECHO_NAMES:
        records[n] = FAKE_PUBLIC_IP
    for n in RESOLVER_ALIASES:
        records[n] = resolver
    return {
        "resolver": resolver,
        "records": records,
        "addresses": sorted({resolver, *(f"{subnet_prefix}.{o}" for o, _k in SERVICE_HOSTS.values())},
                            key=lambda a: int(a.rsplit(".", 1)[1])),
        "event_log": event_log,
        "cert": cert,
        "key": key,
        "public_ip": FAKE_PUBLIC_IP,
    }


# ---------------------------------------------------------------------------------------------
# Certificates (openssl CLI)


def make_certificates(workdir: Path, names: list[str], label: str = "stowaway") -> tuple[Path, Path, Path]:
    """Create a throw-away CA and one ECDSA P-256 leaf for `names`; return (ca, cert, key).

    Why the CLI: the `cryptography` wheel is not a dependency of this project, `openssl` is on every
    host that has podman. The CA is never installed anywhere; busybox wget does not verify.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = workdir / "ca.key", workdir / "ca.crt"
    key, csr, crt = workdir / "leaf.key", workdir / "leaf.csr", workdir / "leaf.crt"
    ext = workdir / "leaf.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = _openssl
    run(["req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "2",
         "-subj", f"/CN={label} emulate stand-in CA/O=stowaway emulate"])
    run(["req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}"])
    run(["x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-set_serial", str(int(time.time() * 1000)), "-days", "2", "-sha256",
         "-extfile", str(ext), "-out", str(crt)])
    return ca_crt, crt, key


def _openssl(args: list[str]) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()[:400]}")


# ---------------------------------------------------------------------------------------------
# DNS


QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS"}


def parse_question(packet: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, qname, qtype, qclass, offset after the question) of a DNS query; ValueError if bad."""
    if len(packet) < 12:
        raise ValueError("short DNS packet")
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount < 1:
        raise ValueError("no question")
    labels: list[str] = []
    off = 12
    while True:
        if off >= len(packet):
            raise ValueError("truncated name")
        ln = packet[off]
        off += 1
        if ln == 0:
            break
        if ln & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(packet[off:off + ln].decode("ascii", "replace"))
        off += ln
    if off + 4 > len(packet):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!HH", packet[off:off + 4])
    return qid, flags, ".".join(labels).lower(), qtype, qclass, off + 4


def dns_answer(packet: bytes, records: dict[str, str], ttl: int = 300) -> tuple[bytes, dict[str, Any]]:
    """The response to one query, plus a log entry. Known names get their A record, AAAA and other
    types for known names get NODATA, unknown names NXDOMAIN: nothing is ever forwarded."""
    qid, flags, qname, qtype, qclass, end = parse_question(packet)
    question = packet[12:end]
    rd = flags & 0x0100
    answers = b""
    ancount = 0
    if qname in records:
        rcode = 0
        if qtype == 1 and qclass == 1:
            addr = socket.inet_aton(records[qname])
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + addr
            ancount = 1
    else:
        rcode = 3
    rflags = 0x8000 | 0x0400 | rd | 0x0080 | rcode  # QR, AA, RD copied, RA, rcode
    header = struct.pack("!HHHHHH", qid, rflags, 1, ancount, 0, 0)
    entry = {"kind": "dns", "query": qname, "qtype": QTYPES.get(qtype, str(qtype)),
             "rcode": "NOERROR" if rcode == 0 else "NXDOMAIN",
             "answer": records.get(qname, "") if ancount else ""}
    return header + question + answers, entry


# ---------------------------------------------------------------------------------------------
# HTTP bodies


def http_body(host: str, path: str, public_ip: str = FAKE_PUBLIC_IP) -> tuple[int, str, str]:
    """(status, content type, body) the stand-in returns for a Host and path; made-up content."""
    host = (host or "").split(":")[0].lower().rstrip(".")
    if host in ("ipinfo.io", "ip-api.com") or host.endswith(".ipinfo.io"):
        return 200, "application/json", json.dumps({
            "ip": public_ip, "city": "Springfield", "region": "Testland", "country": "ZZ",
            "loc": "0.0000,0.0000", "org": "AS64500 Documentation Networks",
            "timezone": "Etc/UTC", "note": "stowaway emulate stand-in, not the real service"}) + "\n"
    if host in ("ifconfig.me", "icanhazip.com", "checkip.amazonaws.com"):
        return 200, "text/plain", public_ip + "\n"
    if host == "api.ipify.org":
        if "format=json" in path:
            return 200, "application/json", json.dumps({"ip": public_ip}) + "\n"
        return 200, "text/plain", public_ip
    if host == "api.example.com":
        return 200, "application/json", json.dumps({"status": "ok", "path": path}) + "\n"
    return 404, "text/plain", "unknown host\n"


# ---------------------------------------------------------------------------------------------
# Servers


class EventLog:
    """Append-only JSON-lines log shared by the server threads."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        entry = {"ts": round(time.time(), 6), **entry}
        with self._lock:
            self._fh.write(json.dumps(entry, sort_keys=True) + "\n")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stowaway-standin"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        host = self.headers.get("Host", "")
        status, ctype, body = http_body(host, self.path, self.server.public_ip)  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.server.events.write({  # type: ignore[attr-defined]
            "kind": "https" if self.server.tls else "http",  # type: ignore[attr-defined]
            "client": self.client_address[0], "host": host, "path": self.path, "status": status,
            "user_agent": self.headers.get("User-Agent", ""),
            "sni": getattr(self.connection, "stowaway_sni", "") or ""})
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the event log has it
        log.debug("http: " + format, *args)


class StandinHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """HTTP(S) server that never looks up its own name (HTTPServer.server_bind calls getfqdn, which
    would send a DNS query from wherever it runs) and does the TLS handshake in the worker thread,
    so one stalled client cannot block the accept loop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], events: EventLog, public_ip: str,
                 tls: ssl.SSLContext | None = None) -> None:
        self.events = events
        self.public_ip = public_ip
        self.tls = tls
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(10)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.events.write({"kind": "tls_error", "client": client_address[0], "error": str(exc)[:200]})
                return
            request.stowaway_sni = getattr(request, "_stowaway_sni", "")
        super().finish_request(request, client_address)


def tls_context(cert: str, key: str, events: EventLog) -> ssl.SSLContext:
    """Server context that records SNI and accepts busybox's TLS (SECLEVEL 0, see module doc)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)

    def on_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sock._stowaway_sni = name or ""  # type: ignore[union-attr]
        events.write({"kind": "tls", "sni": name or "", "client": _peer(sock)})

    ctx.sni_callback = on_sni  # type: ignore[assignment]
    return ctx


def _peer(sock: Any) -> str:
    try:
        return str(sock.getpeername()[0])
    except (OSError, AttributeError):
        return ""


class DNSServer(threading.Thread):
    """UDP resolver for the stand-in names."""

    def __init__(self, address: str, records: dict[str, str], events: EventLog, port: int = 53) -> None:
        super().__init__(name="standin-dns", daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.records = records
        self.events = events

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply, entry = dns_answer(data, self.records)
            except ValueError as exc:
                self.events.write({"kind": "dns_error", "client": peer[0], "error": str(exc)})
                continue
            self.sock.sendto(reply, peer)
            self.events.write({**entry, "client": peer[0]})


def serve(spec: dict[str, Any], ready: Callable[[], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Start DNS, HTTP (:80) and HTTPS (:443, when a cert is given) and block until `stop`."""
    events = EventLog(spec["event_log"])
    stop = stop or threading.Event()
    dns = DNSServer(spec["resolver"], spec["records"], events, int(spec.get("dns_port", 53)))
    dns.start()
    bind = spec.get("bind", "0.0.0.0")
    servers = [StandinHTTPServer((bind, int(spec.get("http_port", 80))), events, spec["public_ip"])]
    if spec.get("cert"):
        ctx = tls_context(spec["cert"], spec["key"], events)
        servers.append(StandinHTTPServer((bind, int(spec.get("https_port", 443))), events,
                                         spec["public_ip"], tls=ctx))
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
               for s in servers]
    for t in threads:
        t.start()
    events.write({"kind": "ready", "resolver": spec["resolver"], "tls": bool(spec.get("cert"))})
    if ready:
        ready()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        dns.sock.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point run inside the emulation's network namespace."""
    p = argparse.ArgumentParser(description="stowaway emulate stand-in internet (run in a netns)")
    p.add_argument("--spec", required=True, help="JSON spec written by the emulator")
    args = p.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    stop = threading.Event()

    def on_signal(_sig: int, _frm: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.basicConfig(level=logging.WARNING)
    serve(spec, ready=lambda: print("ready", flush=True), stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
