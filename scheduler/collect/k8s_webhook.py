"""The API server's audit webhook backend, received: EventList POSTs -> the SQLite spool.

The API server (`--audit-webhook-config-file`, a kubeconfig naming this endpoint) POSTs batches
of audit events as an `audit.k8s.io/v1` EventList and retries a batch that got no 2xx answer. So:

* a batch is committed to the spool (`k8s_spool`, synchronous=FULL) *before* the 200 is sent; a
  receiver killed at any moment has either stored the batch (and the retry is a duplicate, dropped
  by auditID) or not answered it (and the retry stores it);
* only `ResponseComplete` events of the resources the rules read are kept (the rest is counted);
* a wrong or missing bearer token is a 401 and a body that is not JSON a 400, both counted and
  written to `k8s_audit_rejects`; one malformed event inside a good batch is skipped and counted,
  the others are stored (a 400 would make the API server re-send the good ones forever).

Loopback by default; TLS (and optionally client certificates) and the bearer token are
configuration. `python -m scheduler.collect.k8s_webhook --db spool.db --port 8443 ...` runs the
receiver alone (the tests kill -9 it); the daemon runs the same server in a thread.
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import socketserver
import ssl
import sqlite3
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scheduler.collect import k8s_spool
from scheduler.collect.k8s_audit import (STAGE_COMPLETE, AuditEventError, AuditStats, events_in,
                                         is_relevant, parse_time)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20     # the API server's default batch is 400 events; 64 MiB is generous


@dataclass
class WebhookSettings:
    """Where and how to listen (the `[kubernetes]` webhook keys of stowaway.toml)."""

    address: str = "127.0.0.1"
    port: int = 9443
    path: str = "/k8s-audit"
    token: str = ""               # "" = no bearer token required
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""           # with TLS: require client certificates signed by this CA


SpoolRow = tuple[str, float, dict[str, Any]]


def spool_rows(events: list[Any], stats: AuditStats) -> tuple[list[SpoolRow], list[str]]:
    """The events of a batch worth spooling, as (auditID, ts, event), and the problems found."""
    rows, problems = [], []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("auditID"), str) \
                or not ev.get("auditID") or not isinstance(ev.get("stage"), str):
            stats.malformed += 1
            problems.append(f"items[{i}]: no auditID or stage")
            continue
        stats.events += 1
        if ev["stage"] != STAGE_COMPLETE:
            stats.other_stages += 1
            continue
        if not is_relevant(ev):
            stats.not_relevant += 1
            continue
        try:
            ts = parse_time(ev.get("requestReceivedTimestamp"),
                            f"items[{i}].requestReceivedTimestamp")
        except AuditEventError as exc:
            stats.malformed += 1
            problems.append(str(exc))
            continue
        rows.append((ev["auditID"], ts, ev))
    return rows, problems


class _Handler(BaseHTTPRequestHandler):
    server: "AuditWebhookServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:   # access log at debug level only
        log.debug("%s " + fmt, self.client_address[0], *args)

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/healthz":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        srv = self.server
        if self.path.split("?")[0] != srv.settings.path:
            self._answer(404, {"error": f"POST to {srv.settings.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"error": "Content-Length required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        if len(body) < length:      # the client went away mid-body: nothing to store or answer
            self.close_connection = True
            return
        if not srv.authorized(self.headers.get("Authorization", "")):
            srv.reject("unauthorized: missing or wrong bearer token", body, unauthorized=True)
            self._answer(401, {"error": "unauthorized"})
            return
        try:
            doc = json.loads(body)
            events = events_in(doc)
        except (ValueError, RecursionError) as exc:   # bad JSON or UTF-8, not an EventList
            srv.reject(f"not an EventList: {exc}", body)
            self._answer(400, {"error": f"not an audit EventList: {exc}"})
            return
        added, dup, skipped = srv.spool(events, body)
        self._answer(200, {"accepted": added, "duplicates": dup, "skipped": skipped})


class AuditWebhookServer(ThreadingHTTPServer):
    """Threaded HTTP(S) server writing to a spool database of its own connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: WebhookSettings, db_path: str | Path,
                 stats: AuditStats | None = None) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else AuditStats()
        self.db = k8s_spool.open_spool(db_path)
        self._db_lock = threading.Lock()
        super().__init__((settings.address, settings.port), _Handler)
        if settings.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
            if settings.client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(settings.client_ca)
            self.socket = ctx.wrap_socket(self.socket, server_side=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (a DNS query); bind without it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.server_name}:{self.server_port}{self.settings.path}"

    def authorized(self, header: str) -> bool:
        want = self.settings.token
        if not want:
            return True
        scheme, _, got = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode(),
                                                                  want.encode())

    def reject(self, reason: str, body: bytes, unauthorized: bool = False) -> None:
        if unauthorized:
            self.stats.unauthorized += 1
        else:
            self.stats.malformed += 1
        log.warning("k8s audit webhook: %s (%d bytes refused)", reason, len(body))
        with self._db_lock:
            self._tx(lambda c: k8s_spool.add_reject(c, "webhook", reason, body))

    def spool(self, events: list[Any], body: bytes) -> tuple[int, int, int]:
        """Commit the batch's events; returns (added, duplicates, skipped). Called before 200."""
        with self._db_lock:
            rows, problems = spool_rows(events, self.stats)
            result: list[tuple[int, int]] = []

            def work(c: sqlite3.Connection) -> None:
                result.append(k8s_spool.add_events(c, rows, "webhook"))
                if problems:
                    k8s_spool.add_reject(c, "webhook", "; ".join(problems[:5]), body)
            self._tx(work)
        added, dup = result[0]
        self.stats.batches += 1
        self.stats.duplicates += dup
        if problems:
            log.warning("k8s audit webhook: %d malformed event(s) in a batch skipped: %s",
                        len(problems), "; ".join(problems[:3]))
        return added, dup, len(events) - len(rows)

    def _tx(self, fn: Any) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            fn(self.db)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (the daemon's way)."""
        t = threading.Thread(target=self.serve_forever, name="k8s-audit-webhook", daemon=True)
        t.start()
        log.info("k8s audit webhook listening on %s", self.url)
        return t

    def server_close(self) -> None:
        super().server_close()
        with self._db_lock:
            self.db.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.collect.k8s_webhook",
                                 description="Receive Kubernetes audit webhook batches into a "
                                             "SQLite spool (the daemon's receiver, run alone).")
    ap.add_argument("--db", required=True, help="spool database (the daemon's state_db)")
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9443, help="0 picks a free port")
    ap.add_argument("--path", default="/k8s-audit")
    ap.add_argument("--token-file", default="", help="file holding the bearer token")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--client-ca", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    srv = AuditWebhookServer(WebhookSettings(args.address, args.port, args.path, token,
                                             args.tls_cert, args.tls_key, args.client_ca), args.db)
    print(f"listening on {srv.url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
