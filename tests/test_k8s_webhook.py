"""The audit webhook receiver on loopback: a batch is stored before its 200, a re-sent batch is
stored once, bad JSON and a wrong token are refused and counted, and a receiver killed with
SIGKILL (a real subprocess) in the middle of a batch loses nothing the API server was told was
stored."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scheduler.collect import k8s_spool
from scheduler.collect.k8s_recording import JANE, Cluster, Container
from scheduler.collect.k8s_webhook import AuditWebhookServer, WebhookSettings
from tests.fake_hosts import wait_until

REPO = Path(__file__).resolve().parents[1]
T = 1795805000.0
TOKEN = "s3cr3t-audit-token"


def batches(n: int, per: int, scenario: str = "w") -> list[dict]:
    """n EventLists of `per` pod creates each, both stages as the API server sends them."""
    cl = Cluster(scenario)
    for i in range(n * per):
        cl.create_pod(JANE, T + i, "shop", f"p{i:04d}", [Container("c", "x:1")])
    evs = [json.loads(x) for x in cl.lines()]      # RequestReceived + ResponseComplete each
    step = 2 * per
    return [{"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
             "items": evs[i:i + step]} for i in range(0, len(evs), step)]


def complete_ids(bs: list[dict]) -> set[str]:
    return {e["auditID"] for b in bs for e in b["items"] if e["stage"] == "ResponseComplete"}


def post(host: str, port: int, body: bytes, token: str | None = TOKEN, path: str = "/k8s-audit",
         context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10) if context \
        else http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, (json.loads(data) if data else {})


def spooled(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT audit_id FROM k8s_audit_spool")]
    finally:
        conn.close()


@pytest.fixture()
def server(tmp_path: Path):
    srv = AuditWebhookServer(WebhookSettings(port=0, token=TOKEN), tmp_path / "spool.db")
    srv.start()
    yield srv, tmp_path / "spool.db"
    srv.shutdown()
    srv.server_close()


def test_batch_stored_then_answered_and_replayed_batch_stored_once(server) -> None:
    srv, db = server
    bs = batches(3, 5)
    for b in bs:
        code, body = post("127.0.0.1", srv.server_port, json.dumps(b).encode())
        assert (code, body["accepted"], body["duplicates"]) == (200, 5, 0)
    assert set(spooled(db)) == complete_ids(bs) and len(spooled(db)) == 15
    code, body = post("127.0.0.1", srv.server_port, json.dumps(bs[1]).encode())
    assert (code, body["accepted"], body["duplicates"]) == (200, 0, 5)
    assert len(spooled(db)) == 15
    assert srv.stats.other_stages == 20 and srv.stats.duplicates == 5 and srv.stats.batches == 4


def test_wrong_or_missing_token_is_401_counted_and_stores_nothing(server) -> None:
    srv, db = server
    body = json.dumps(batches(1, 3)[0]).encode()
    assert post("127.0.0.1", srv.server_port, body, token="wrong")[0] == 401
    assert post("127.0.0.1", srv.server_port, body, token=None)[0] == 401
    assert spooled(db) == [] and srv.stats.unauthorized == 2
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT reason FROM k8s_audit_rejects")] == \
        ["unauthorized: missing or wrong bearer token"] * 2
    conn.close()
    assert post("127.0.0.1", srv.server_port, body)[0] == 200 and len(spooled(db)) == 3


def test_bad_json_is_400_and_counted_bad_items_skipped_good_ones_kept(server) -> None:
    srv, db = server
    code, body = post("127.0.0.1", srv.server_port, b'{"kind": "EventList", "items": [')
    assert code == 400 and "not an audit EventList" in body["error"]
    code, _ = post("127.0.0.1", srv.server_port, b'{"kind": "EventList", "items": 3}')
    assert code == 400 and srv.stats.malformed == 2
    code, _ = post("127.0.0.1", srv.server_port, b"[" * 200_000)          # hostile nesting
    assert code == 400 and srv.stats.malformed == 3
    b = batches(1, 4)[0]
    b["items"].insert(1, {"kind": "Event", "stage": "ResponseComplete"})       # no auditID
    bad_ts = dict(b["items"][-1], auditID="x-1", requestReceivedTimestamp="noon")
    b["items"].append(bad_ts)
    code, body = post("127.0.0.1", srv.server_port, json.dumps(b).encode())
    assert code == 200 and body["accepted"] == 4
    assert srv.stats.malformed == 5 and len(spooled(db)) == 4
    conn = sqlite3.connect(db)
    reasons = [r[0] for r in conn.execute("SELECT reason FROM k8s_audit_rejects")]
    conn.close()
    assert len(reasons) == 4 and "items[1]: no auditID or stage" in reasons[3]
    assert "requestReceivedTimestamp" in reasons[3] and "RecursionError" not in reasons[3]


def test_wrong_path_and_healthz(server) -> None:
    srv, _ = server
    assert post("127.0.0.1", srv.server_port, b"{}", path="/other")[0] == 404
    c = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=5)
    c.request("GET", "/healthz")
    assert c.getresponse().status == 200
    c.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for a test cert")
def test_tls_with_token(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = AuditWebhookServer(WebhookSettings(port=0, token=TOKEN, tls_cert=str(cert),
                                             tls_key=str(key)), tmp_path / "spool.db")
    srv.start()
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        code, body = post("127.0.0.1", srv.server_port, json.dumps(batches(1, 2)[0]).encode(),
                          context=ctx)
        assert code == 200 and body["accepted"] == 2
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            post("127.0.0.1", srv.server_port, b"{}")        # plain HTTP to a TLS port
    finally:
        srv.shutdown()
        srv.server_close()


# ---- kill -9 ---------------------------------------------------------------------------------

def start_receiver(db: Path, token_file: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.collect.k8s_webhook", "--db", str(db),
                             "--port", "0", "--token-file", str(token_file)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def test_kill_9_mid_batch_loses_nothing_and_the_retry_is_stored_once(tmp_path: Path) -> None:
    db, token_file = tmp_path / "state.db", tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    bs = batches(24, 10)
    bodies = [json.dumps(b).encode() for b in bs]
    acked: set[int] = set()
    stop = threading.Event()
    proc, port = start_receiver(db, token_file)
    try:
        # 1. deterministic: headers and half of a batch's body sent, then the receiver dies
        for i in range(4):
            assert post("127.0.0.1", port, bodies[i])[0] == 200
            acked.add(i)
        s = socket.create_connection(("127.0.0.1", port))
        half = bodies[4][: len(bodies[4]) // 2]
        s.sendall(b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  TOKEN.encode() + b"\r\nContent-Length: " + str(len(bodies[4])).encode() +
                  b"\r\n\r\n" + half)
        wait_until(lambda: len(spooled(db)) == 40)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        s.close()
        assert len(spooled(db)) == 40          # the half batch left nothing behind
        # 2. a client that behaves like the API server (retry until a 2xx) keeps sending while
        #    the receiver is killed again at an arbitrary moment
        proc, port = start_receiver(db, token_file)
        state = {"port": port}

        def client() -> None:
            for i in range(4, len(bodies)):
                while not stop.is_set():
                    try:
                        code, _ = post("127.0.0.1", state["port"], bodies[i])
                    except (OSError, http.client.HTTPException):
                        code = 0
                    if code == 200:
                        acked.add(i)
                        break
                    stop.wait(0.05)

        t = threading.Thread(target=client)
        t.start()
        wait_until(lambda: len(acked) >= 12, timeout=30, interval=0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # everything acknowledged before the kill is on disk
        done = {e["auditID"] for i in sorted(acked) for e in bs[i]["items"]
                if e["stage"] == "ResponseComplete"}
        assert done <= set(spooled(db))
        proc, state["port"] = start_receiver(db, token_file)
        t.join(60)
        assert not t.is_alive() and acked == set(range(len(bodies)))
        # 3. the API server re-sends a batch it already had a 200 for
        assert post("127.0.0.1", state["port"], bodies[7])[1]["duplicates"] == 10
    finally:
        stop.set()
        proc.kill()
        proc.wait(10)
    ids = spooled(db)
    assert len(ids) == len(set(ids)) == 240 and set(ids) == complete_ids(bs)
    conn = sqlite3.connect(db)
    assert k8s_spool.counts(conn)["pending"] == 240
    conn.close()
