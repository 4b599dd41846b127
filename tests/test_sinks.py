"""Sinks: JSONL dedupe across restarts; webhook down-then-up delivers every alert exactly once."""
from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from scheduler.alerting.alerts import RULE_LOCATION, Alert, ContainerRef
from scheduler.config import WebhookConfig
from scheduler.alerting.sinks import JsonlSink, SinkSet, StdoutSink, WebhookSink


def make_alerts(n: int, start: int = 0) -> list[Alert]:
    return [Alert(id=f"alert{i:04d}", time=1795805066.0 + i, rule=RULE_LOCATION, severity="high",
                  title=f"t{i}", host="h1",
                  container=ContainerRef(id=f"c{i}", name=f"n{i}", image="img:1", runtime="podman"),
                  evidence=[{"side": "host", "kind": "process", "time": 1.0 + i, "summary": "x"}])
            for i in range(start, start + n)]


# ---- JSONL ---------------------------------------------------------------------------------------

def test_jsonl_dedupes_by_id_across_reopen(tmp_path: Path) -> None:
    p = tmp_path / "alerts.jsonl"
    s = JsonlSink(p)
    assert s.emit(make_alerts(3)) == 3
    assert s.emit(make_alerts(3)) == 0
    s.close()
    s2 = JsonlSink(p)
    assert s2.emit(make_alerts(5)) == 2          # only the two new ids
    s2.close()
    ids = [json.loads(line)["id"] for line in p.read_text().splitlines()]
    assert ids == [f"alert{i:04d}" for i in range(5)]


def test_jsonl_cuts_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "alerts.jsonl"
    good = make_alerts(2)
    p.write_text(good[0].to_json() + "\n" + good[1].to_json()[:40])   # killed mid-write
    s = JsonlSink(p)
    assert s.emit(good) == 1                     # the torn one is written again, whole
    s.close()
    lines = p.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["alert0000", "alert0001"]


def test_stdout_sink(capsys: pytest.CaptureFixture) -> None:
    s = StdoutSink()
    s.emit(make_alerts(2))
    s.emit(make_alerts(2))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and json.loads(out[0])["rule"] == RULE_LOCATION


# ---- webhook -------------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST (and can fail on purpose)."""

    def __init__(self, port: int, fail_first: int = 0) -> None:
        self.port = port
        self.posts: list[tuple[str, dict]] = []
        self.fail_left = fail_first
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_left > 0:
                    outer.fail_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.posts.append((self.headers["Idempotency-Key"], json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", port), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webhook(tmp_path: Path, port: int) -> WebhookSink:
    cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", spool_dir=str(tmp_path / "spool"),
                        timeout_s=2.0, max_attempts=3, backoff_s=0.01)
    return WebhookSink(cfg)


def test_webhook_down_then_up_delivers_each_alert_exactly_once(tmp_path: Path) -> None:
    port = free_port()                           # nothing listens: the receiver is down
    sink = webhook(tmp_path, port)
    sink.emit(make_alerts(5))
    assert len(sink.pending_ids()) == 5          # all spooled, none lost
    assert sink.stats["delivered"] == 0 and sink.stats["failed_attempts"] >= 3
    sink.emit(make_alerts(3, start=5))           # more alerts while still down
    assert len(sink.pending_ids()) == 8

    # The daemon restarts while the receiver is still down: the spool survives.
    sink = webhook(tmp_path, port)
    assert len(sink.pending_ids()) == 8

    rx = Receiver(port)                          # the receiver comes up
    try:
        sink.force_retry()
        sink.flush()
        assert sink.pending_ids() == []
        # Replays after a crash hand the same alerts again: nothing is re-sent.
        sink.emit(make_alerts(8))
        webhook(tmp_path, port).emit(make_alerts(8))
        keys = [k for k, _ in rx.posts]
        assert sorted(keys) == [f"alert{i:04d}" for i in range(8)]
        assert len(keys) == len(set(keys)) == 8
        assert keys == sorted(keys)              # in order
        assert all(body["id"] == k for k, body in rx.posts)
    finally:
        rx.stop()


def test_webhook_retries_transient_errors_with_backoff(tmp_path: Path) -> None:
    port = free_port()
    rx = Receiver(port, fail_first=2)
    try:
        sink = webhook(tmp_path, port)
        sink.emit(make_alerts(2))
        assert [k for k, _ in rx.posts] == ["alert0000", "alert0001"]
        assert sink.stats["failed_attempts"] == 2
    finally:
        rx.stop()


def test_sinkset_keeps_going_when_one_sink_fails(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def emit(self, alerts):
            raise RuntimeError("boom")

        def flush(self):
            pass

        def close(self):
            pass

    j = JsonlSink(tmp_path / "a.jsonl")
    s = SinkSet([Broken(), j])
    assert s.emit(make_alerts(2)) == 2
    s.close()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2


def test_syslog_sink_sends_the_json_line_over_udp() -> None:
    from scheduler.alerting.sinks import SyslogSink

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        s = SyslogSink(f"127.0.0.1:{rx.getsockname()[1]}", facility="local3")
        s.emit(make_alerts(1))
        data, _ = rx.recvfrom(65535)
        s.close()
    finally:
        rx.close()
    text = data.decode()
    # <PRI>: local3 (19) * 8 + err (3) for a high-severity alert
    assert text.startswith("<155>stowaway: ")
    body = json.loads(text[len("<155>stowaway: "):].rstrip("\x00"))
    assert body["id"] == "alert0000" and body["rule"] == RULE_LOCATION


# ---- size-limited sinks: cut with a marker and a pointer, never refused, counted -------------------

def _padded_alert(pad: int = 70_000) -> Alert:
    """The evasion: a command padded past the datagram size (curl -H X:<70 KB> ifconfig.me)."""
    cmd = "curl -H X:" + "A" * pad + " ifconfig.me"
    return Alert(id="padded01", time=1795805066.0, rule=RULE_LOCATION, severity="high",
                 title=f"location discovery: {cmd[:200]}", host="h1",
                 container=ContainerRef(id="c1", name="web-2", image="img:1", runtime="podman"),
                 evidence=[{"side": "host", "kind": "process", "time": 1.0, "summary": cmd,
                            "cmdline": cmd}])


@pytest.fixture()
def udp_receiver():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    yield rx
    rx.close()


@pytest.mark.parametrize("max_bytes", [8192, 2048, 480])
def test_syslog_cuts_an_oversized_alert_with_marker_and_pointer(udp_receiver: socket.socket,
                                                                 max_bytes: int) -> None:
    from scheduler.alerting.sinks import TRUNCATED_MARKER, SyslogSink

    port = udp_receiver.getsockname()[1]
    s = SyslogSink(f"127.0.0.1:{port}", max_bytes=max_bytes,
                   jsonl_path="/var/lib/stowaway/alerts.jsonl")
    small, big = make_alerts(1)[0], _padded_alert()
    assert s.emit([small, big]) == 2
    got = [udp_receiver.recvfrom(65535)[0] for _ in range(2)]
    s.close()
    if len(small.to_json()) < max_bytes - 32:
        assert json.loads(got[0].split(b": ", 1)[1]) == json.loads(small.to_json())   # whole
    assert all(len(d) <= max_bytes for d in got)
    assert len(got[1]) <= max_bytes and len(big.to_json()) > 65507
    body = json.loads(got[1].split(b": ", 1)[1])                        # still one JSON object
    assert body["id"] == "padded01" and body["rule"] == RULE_LOCATION
    assert body["container"]["name"].startswith("web") and body["severity"] == "high"
    assert TRUNCATED_MARKER in body["truncated"] and "padded01" in body["truncated"]
    if max_bytes >= 2048:
        assert body["full_alert"] == {"id": "padded01", "jsonl": "/var/lib/stowaway/alerts.jsonl"}
        assert "/var/lib/stowaway/alerts.jsonl" in body["truncated"]
    assert s.stats == {"sent": 2, "truncated": 1 if max_bytes >= 2048 else 2, "failed": 0}


def test_syslog_failure_is_counted_not_sent(tmp_path: Path) -> None:
    from scheduler.alerting.sinks import SyslogSink

    s = SyslogSink(str(tmp_path / "no-syslogd.sock"))
    assert s.emit(make_alerts(2)) == 0                    # no exception, nothing claimed as sent
    assert s.stats["failed"] == 2 and s.stats["sent"] == 0
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the syslogd comes up
    rx.bind(str(tmp_path / "no-syslogd.sock"))
    rx.settimeout(5)
    try:
        assert s.emit(make_alerts(2)) == 2                 # the same alerts are tried again
        assert {json.loads(rx.recv(65535).split(b": ", 1)[1])["id"] for _ in range(2)} == \
            {"alert0000", "alert0001"}
    finally:
        rx.close()
        s.close()


def test_build_sinks_points_syslog_at_the_jsonl_file(tmp_path: Path, udp_receiver) -> None:
    from scheduler.alerting.sinks import build_sinks
    from scheduler.config import SinksConfig

    cfg = SinksConfig(jsonl=str(tmp_path / "alerts.jsonl"),
                      syslog=f"127.0.0.1:{udp_receiver.getsockname()[1]}", syslog_max_bytes=4096)
    sinks = build_sinks(cfg)
    sinks.emit([_padded_alert()])
    body = json.loads(udp_receiver.recvfrom(65535)[0].split(b": ", 1)[1])
    sinks.close()
    assert body["full_alert"]["jsonl"] == str(tmp_path / "alerts.jsonl")
    full = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["id"] for a in full] == ["padded01"] and "ifconfig.me" in full[0]["evidence"][0]["cmdline"]


# ---- terminal and HTML output: control characters made visible ---------------------------------

HOSTILE_TEXT = "wget ipinfo.io\x1b[2K\r\x1b]0;pwned\x07\x1b]8;;http://x\x1b\\ok\u202egnp.exe\x9b31m"


def _hostile_alert(tmp_path: Path) -> Path:
    a = Alert(id="esc00001", time=1795805066.0, rule=RULE_LOCATION, severity="high",
              title=HOSTILE_TEXT, host="h1",
              container=ContainerRef(id="c1", name="web\x1b[31m-2", image="img\r:1", runtime="podman"),
              evidence=[{"side": "host", "kind": "process", "time": 1.0, "summary": HOSTILE_TEXT}])
    p = tmp_path / "alerts.jsonl"
    s = JsonlSink(p)
    s.emit([a])
    s.close()
    return p


RAW = ["\x1b", "\r", "\x07", "\u202e", "\x9b"]


def test_escape_text() -> None:
    from scheduler.alerting.textsafe import escape_text

    assert escape_text("a\x1b[2Kb\r\n\t\x7f\x9b\u202e\u2066é中") == \
        "a\\x1b[2Kb\\x0d\\x0a\\x09\\x7f\\x9b\\u202e\\u2066é中"
    assert escape_text("plain text") == "plain text" and escape_text(5) == "5"


def test_stowaway_alerts_table_escapes_control_characters(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from scheduler.cli.main import main

    p = _hostile_alert(tmp_path)
    assert main(["alerts", "--file", str(p)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in RAW), repr(out)
    assert "\\x1b[2K" in out and "web\\x1b[31m-2" in out and "\\x0d" in out


def test_replay_and_demo_table_escapes_control_characters(tmp_path: Path) -> None:
    import io

    from scheduler.cli.cmd_pipeline import group_rows, print_table

    a = json.loads(_hostile_alert(tmp_path).read_text())
    a["_scenario"], a["_repeats"] = "x\x1b[8m", 0
    for wide in (False, True):
        buf = io.StringIO()
        print_table(group_rows([a], min_group=10**9), wide=wide, stream=buf)
        out = buf.getvalue()
        assert not any(c in out for c in RAW), repr(out)
        assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out and "x\\x1b[8m" in out


def test_html_report_escapes_control_characters(tmp_path: Path) -> None:
    from scheduler.alerting.report import Section, write_report

    a = json.loads(_hostile_alert(tmp_path).read_text())
    out = tmp_path / "r.html"
    write_report(out, [Section(title="t\x1b[2J", alerts=[a], repeats=[])])
    html = out.read_text()
    assert not any(c in html for c in RAW)
    assert "web\\x1b[31m-2" in html and "\\u202e" in html
