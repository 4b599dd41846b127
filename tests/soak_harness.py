"""Soak harness: feed a REAL `stowaway run` subprocess from recordings, as a live host would, with
faults, and compare its alerts with `stowaway replay` of exactly what it was fed.

Why: the daemon is what users deploy; the replay is what the other tests check. The invariant is
that they agree (docs/scheduler.md, "The daemon equals the replay"). The harness

* writes the osquery results log and the Zeek logs as they grow: each osquery line when osqueryd
  would have logged it (its `unixTime`), each Zeek line at its `ts`, at the recorded pace times
  `speed`, in data-time order across all files;
* rotates Zeek logs the way Zeek does (rename + a new file with its header), gzip-compresses the
  rotated file like a post-processor, once truncating the .gz after the daemon has read it;
* injects faults at seeded random points: kill -9 and restart of the daemon; a webhook receiver on
  127.0.0.1 that answers 500, hangs, then recovers; malformed lines (bad JSON, nesting deep enough
  to raise RecursionError, huge numbers, a truncated line, wrong field types);
* mirrors everything it wrote (malformed lines included) into a recording directory, and runs
  `stowaway replay` on it with the same config and baselines;
* compares the two alert sets by (rule, container, image, evidence sides and kinds), checks that no
  alert is missing, none duplicated, and that every alert the webhook spooled while the receiver
  failed was delivered within one retry interval after it recovered.

Used by tests/test_soak.py (short, seeded) and bench/soak.py (hours of recorded time).
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
STREAMS = ("conn", "dns", "http", "ssl", "container_geo")
STARTUP_BOUND_S = 60.0   # a restarted daemon is up within this (imports, model load)

log = logging.getLogger(__name__)


# =============================================================================== the feed
@dataclass
class Feed:
    """What a live host writes, in write order: (data time available, target, line).

    target is "osquery" or a Zeek stream; Zeek headers are kept per stream and written at the top
    of every new file."""

    host: str
    environment: str
    lines: list[tuple[float, str, str]]
    headers: dict[str, list[str]]

    @property
    def start(self) -> float:
        return self.lines[0][0]

    @property
    def end(self) -> float:
        return self.lines[-1][0]


def _open_text(path: Path) -> Iterable[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield line.rstrip("\n")


def _find(d: Path, stem: str) -> Path | None:
    for cand in (d / stem, d / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def load_feed(recordings: Iterable[str | Path], shift_s: float = 0.0,
              streams: Iterable[str] = STREAMS, id_suffix: str = "") -> Feed:
    """The lines of recordings (sequential in time, one host) in the order a host writes them.

    `shift_s` moves every time in the lines and `id_suffix` ends every container id with it
    (bench/soak.py loops a recording this way: each loop's containers are new containers)."""
    out: list[tuple[float, int, str, str]] = []
    headers: dict[str, list[str]] = {}
    host = env = ""
    seq = 0
    for rec in recordings:
        rec = Path(rec)
        meta = json.loads((rec / "meta.json").read_text())
        host, env = host or meta.get("host", ""), env or meta.get("environment", "default")
        osq = _find(rec / "osquery", "osqueryd.results.log")
        for line in _open_text(osq) if osq else ():
            if not line.strip():
                continue
            if shift_s or id_suffix:
                line = shift_osquery_line(line, shift_s, id_suffix)
            at = float(json.loads(line).get("unixTime") or 0)
            out.append((at, seq, "osquery", line))
            seq += 1
        for stream in streams:
            path = _find(rec / "zeek", f"{stream}.log")
            if path is None:
                continue
            for line in _open_text(path):
                if line.startswith("#"):
                    if not line.startswith(("#close", "#open")) or stream not in headers:
                        headers.setdefault(stream, [])
                        if line not in headers[stream] and not line.startswith("#close"):
                            headers[stream].append(line)
                    continue
                if shift_s:
                    line = shift_zeek_line(line, shift_s)
                out.append((float(line.split("\t", 1)[0]), seq, stream, line))
                seq += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return Feed(host=host, environment=env, lines=[(t, k, l) for t, _, k, l in out],
                headers=headers)


# Columns holding epoch times in the pack's tables (seconds; time_nano in ns).
_TIME_COLUMNS = ("time", "created", "started", "start_time")


def shift_osquery_line(line: str, shift_s: float, id_suffix: str = "") -> str:
    """The same osqueryd result line, `shift_s` seconds later (unixTime and every time column),
    container ids ending in `id_suffix`."""
    d = json.loads(line)
    d["unixTime"] = int(float(d.get("unixTime") or 0) + shift_s)

    def shift_row(row: dict[str, str]) -> None:
        if id_suffix:
            for c in ("id", "container_id"):
                if len(row.get(c) or "") > len(id_suffix):
                    row[c] = row[c][: -len(id_suffix)] + id_suffix
        for c in _TIME_COLUMNS:
            v = row.get(c)
            if v not in (None, "", "0"):
                try:
                    row[c] = str(int(float(v) + shift_s))
                except ValueError:
                    pass
        if row.get("time_nano"):
            try:
                row["time_nano"] = str(int(row["time_nano"]) + int(shift_s * 1e9))
            except ValueError:
                pass
    rows = d.get("snapshot") or []
    rows += (d.get("diffResults") or {}).get("added") or []
    rows += (d.get("diffResults") or {}).get("removed") or []
    if isinstance(d.get("columns"), dict):
        rows.append(d["columns"])
    for r in rows:
        shift_row(r)
    return json.dumps(d, separators=(",", ":"))


def shift_zeek_line(line: str, shift_s: float) -> str:
    ts, _, rest = line.partition("\t")
    return f"{float(ts) + shift_s:.6f}\t{rest}"


# =============================================================================== malformed input
def looped_feed(recording: str | Path, loops: int, gap_s: float = 60.0) -> Feed:
    """A recording played `loops` times back to back (each loop shifted in time, with its own
    container ids): hours of recorded time from the 30-minute benign_long."""
    meta = json.loads((Path(recording) / "meta.json").read_text())
    lo, hi = meta["time_range"]
    period = float(hi) - float(lo) + gap_s
    parts = [load_feed([recording], shift_s=i * period, id_suffix=f"{i:04x}" if i else "")
             for i in range(loops)]
    first = parts[0]
    first.lines = [x for p in parts for x in p.lines]
    return first


def malformed_osquery_lines(rng: random.Random) -> list[tuple[str, str]]:
    """(kind, line): one of every way an osquery results line can be broken."""
    good = {"name": "pack_stowaway_stowaway_container_process_events", "hostIdentifier": "x",
            "unixTime": 1, "columns": {"pid": "1"}, "action": "added"}
    return [
        ("bad_json", '{"name": "pack_stowaway_stowaway_container_events", "unixTime": '),
        ("deep_nesting", "[" * 200_000 + "]" * 200_000),
        ("huge_number", '{"name":"pack_stowaway_stowaway_container_events","hostIdentifier":"x",'
                        '"unixTime":' + "9" * 5000 + ',"columns":{},"action":"added"}'),
        ("huge_float", '{"name":"pack_stowaway_stowaway_container_events","hostIdentifier":"x",'
                       '"unixTime":1e999,"columns":{"time":"1e999"},"action":"added"}'),
        ("truncated", json.dumps(good)[: rng.randint(10, 40)]),
        ("wrong_types", json.dumps({**good, "columns": ["not", "an", "object"]})),
        ("wrong_types_snapshot", json.dumps({"name": good["name"], "unixTime": "soon",
                                             "snapshot": "nope", "action": "snapshot"})),
        ("not_an_object", "[1, 2, 3]"),
    ]


def malformed_zeek_lines(stream: str, rng: random.Random,
                         header: list[str] | None = None) -> list[tuple[str, str]]:
    """(kind, line): broken Zeek TSV lines of the stream's shape (from its #types header)."""
    types = next((h.split("\t")[1:] for h in header or [] if h.startswith("#types")), [])
    n = max(len(types), 6)

    def shaped(ts: str, number: str) -> str:
        vals = [ts] + [number if t in ("count", "port", "int", "interval", "double") else "-"
                       for t in types[1:]]
        return "\t".join(vals + ["-"] * (n - len(vals)))
    return [
        ("too_few_fields", "1795805000.0\tCbad"),
        ("bad_ts", shaped("yesterday", "1")),
        ("huge_number", shaped("1795805000.5", "9" * 5000)),
        ("huge_float", shaped("1e999", "1e999")),
        ("truncated", shaped("1795805000.25", "7")[: rng.randint(3, 30)]),
        ("deep_json", "{" * 5 + '"ts":' + "[" * 200_000),
    ]


def survives(target: str, line: str, header: list[str] | None = None) -> str:
    """"" when the real reader skips `line` without raising, else the exception it raised.

    The soak injects only what the readers survive (a reader that raises stalls the daemon's
    collection, which the soak would report as a timeout, not as the cause); the kinds that
    fail are listed by tests/test_soak.py so they are not forgotten."""
    import tempfile

    try:
        if target == "osquery":
            from scheduler.collect.osquery_results import OsqueryResultsParser
            OsqueryResultsParser("probe").parse_line(line, 1)
        else:
            from scheduler.collect.zeeklog import ZeekLogParser
            with tempfile.NamedTemporaryFile("w", suffix=".log") as fh:
                parser = ZeekLogParser(fh.name)
                for i, h in enumerate(header or []):
                    parser.parse_line(h, i + 1)
                parser.parse_line(line, len(header or []) + 1)
    except BaseException as exc:  # noqa: BLE001 - any escape is what we look for
        return f"{type(exc).__name__}: {str(exc)[:80]}"
    return ""


def truncated_gz_survives(tmp: Path) -> str:
    """"" when the tailer reads a rotated, truncated .gz (what it can) without raising."""
    from scheduler.collect.state import StateStore
    from scheduler.collect.tailer import ZeekTailer

    tmp.mkdir(parents=True, exist_ok=True)
    live = tmp / "conn.log"
    head = "#separator \\x09\n#fields\tts\tuid\n#types\ttime\tstring\n"
    live.write_text(head + "".join(f"{1795805000 + i}.0\tC{i}\n" for i in range(2000)))
    store = StateStore(tmp / "probe.db")
    try:
        t = ZeekTailer(live, store, stream="conn")
        b = t.poll()
        with store.transaction() as conn:
            t.commit(b, conn)
        data = gzip.compress(live.read_bytes())
        (tmp / "conn.x.log.gz").write_bytes(data[: len(data) * 2 // 3])
        live.unlink()
        live.write_text(head)
        t.poll()
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc)[:80]}"
    finally:
        store.close()
    return ""


# =============================================================================== live logs
class LiveLogs:
    """The directories a daemon follows, written as a host would; and the mirror recording."""

    def __init__(self, root: Path, feed: Feed) -> None:
        self.feed = feed
        self.osq_path = root / "live" / "osquery" / "osqueryd.results.log"
        self.zeek_dir = root / "live" / "zeek"
        self.osq_path.parent.mkdir(parents=True, exist_ok=True)
        self.zeek_dir.mkdir(parents=True, exist_ok=True)
        self.mirror = root / "fed"
        (self.mirror / "osquery").mkdir(parents=True, exist_ok=True)
        (self.mirror / "zeek").mkdir(parents=True, exist_ok=True)
        (self.mirror / "meta.json").write_text(json.dumps({
            "name": "fed", "host": feed.host, "environment": feed.environment,
            "source": "tests/soak_harness.py: exactly what the daemon was fed",
            "time_range": [feed.start, feed.end]}))
        self._mirror_fh: dict[str, Any] = {}
        self._open_zeek: set[str] = set()
        self.pos = 0
        self.rotations = 0
        self.malformed: Counter[str] = Counter()

    def _mirror(self, target: str, line: str) -> None:
        fh = self._mirror_fh.get(target)
        if fh is None:
            path = (self.mirror / "osquery" / "osqueryd.results.log" if target == "osquery"
                    else self.mirror / "zeek" / f"{target}.log")
            fh = self._mirror_fh[target] = open(path, "a", encoding="utf-8")
            if target != "osquery":
                fh.write("\n".join(self.feed.headers[target]) + "\n")
        fh.write(line + "\n")

    def _append(self, target: str, lines: list[str]) -> None:
        if not lines:
            return
        if target == "osquery":
            path = self.osq_path
            head = ""
        else:
            path = self.zeek_dir / f"{target}.log"
            head = "" if target in self._open_zeek and path.exists() else \
                "\n".join(self.feed.headers[target]) + "\n"
            self._open_zeek.add(target)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(head + "".join(x + "\n" for x in lines))
        for x in lines:
            self._mirror(target, x)

    def write_until(self, t: float) -> int:
        """Append every line available at data time `t`, in time order across the files (a run
        of consecutive lines for one file at a time); returns how many.

        Why not each file's lines at once: that wrote a step's conn lines before its DNS lines, so
        a daemon poll between the two appends read a connection before the DNS answer that names
        its address (and missed its resolved_ip tag, which the replay, reading in time order, set).
        Zeek never writes in that order: a connection is logged when it ends, after the DNS answer
        that preceded it. docs/scheduler.md ("Reading order") says what the daemon assumes."""
        n = 0
        lines = self.feed.lines
        run_target, run = "", []
        while self.pos < len(lines) and lines[self.pos][0] <= t:
            _, target, line = lines[self.pos]
            if target != run_target and run:
                self._append(run_target, run)
                run = []
            run_target = target
            run.append(line)
            self.pos += 1
            n += 1
        if run:
            self._append(run_target, run)
        return n

    @property
    def done(self) -> bool:
        return self.pos >= len(self.feed.lines)

    def inject(self, target: str, kind: str, line: str) -> None:
        """A malformed line, in the live file and the mirror alike."""
        self._append(target, [line])
        self.malformed[f"{target}:{kind}"] += 1

    def rotate(self, stream: str, stamp: str, compress: bool = True,
               truncate_gz: bool = False) -> Path | None:
        """Zeek's rotation: rename the live file, the next line opens a new one with a header;
        then (like a rotation post-processor) gzip the rotated file and remove it.
        `truncate_gz` cuts the .gz short (a disk filled up mid-compression)."""
        live = self.zeek_dir / f"{stream}.log"
        if not live.exists():
            return None
        rotated = self.zeek_dir / f"{stream}.{stamp}.log"
        os.rename(live, rotated)
        self._open_zeek.discard(stream)
        self.rotations += 1
        if not compress:
            return rotated
        gz = rotated.with_name(rotated.name + ".gz")
        data = gzip.compress(rotated.read_bytes())
        if truncate_gz:
            data = data[: max(20, len(data) * 2 // 3)]
        tmp = gz.with_name("." + gz.name)
        tmp.write_bytes(data)
        os.replace(tmp, gz)
        rotated.unlink()
        return gz

    def live_files(self) -> list[Path]:
        files = [self.osq_path] if self.osq_path.exists() else []
        return files + [self.zeek_dir / f"{s}.log" for s in sorted(self._open_zeek)
                        if (self.zeek_dir / f"{s}.log").exists()]

    def close(self) -> None:
        for fh in self._mirror_fh.values():
            fh.close()
        self._mirror_fh = {}


# =============================================================================== webhook receiver
class WebhookReceiver:
    """A webhook receiver on 127.0.0.1: mode "ok" (200), "500", or "hang" (no answer until the
    mode changes). Records every alert it accepted, with the time."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.accepted: list[tuple[float, str]] = []
        self.refused = 0
        self.hung = 0
        self.recoveries: list[float] = []
        self._changed = threading.Condition()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with rx._changed:
                    mode = rx.mode
                    if mode == "hang":       # answered (503) only after the client gave up
                        rx.hung += 1
                        while rx.mode == "hang" and rx._changed.wait(timeout=30):
                            pass
                if mode != "ok":
                    rx.refused += 1
                    self.send_response(500)
                    self.end_headers()
                    return
                key = self.headers.get("Idempotency-Key") or json.loads(body).get("id", "")
                rx.accepted.append((time.time(), key))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:     # no getfqdn(): nothing leaves the machine
                self.socket.bind(self.server_address)
                self.server_address = self.socket.getsockname()
                self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        with self._changed:
            if mode == "ok" and self.mode != "ok":
                self.recoveries.append(time.time())
            self.mode = mode
            self._changed.notify_all()

    def ids(self) -> Counter[str]:
        return Counter(k for _, k in self.accepted)

    def stop(self) -> None:
        self.set_mode("ok")
        self.server.shutdown()
        self.server.server_close()


# =============================================================================== the daemon
class DaemonProcess:
    """`stowaway run --config ...` as a user runs it; kill -9, restart, SIGTERM."""

    def __init__(self, config: Path, log_path: Path, prelude: str = "") -> None:
        self.config = config
        self.log_path = log_path
        self.prelude = prelude    # Python run before the CLI (tests plant a bug with it)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.ready_at: list[float] = []   # wall time a start was up ("stowaway: running")
        self._mark = 0                    # log size when the latest process started
        self.cpu_s = 0.0          # CPU of processes already gone (from /proc before the kill)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        fh = open(self.log_path, "a")
        self._mark = fh.tell()
        self._ready = False
        argv = ["run", "--config", str(self.config)]
        cmd = [sys.executable, "-m", "scheduler.cli", *argv] if not self.prelude else \
            [sys.executable, "-c", self.prelude + "\nimport sys\nfrom scheduler.cli import main\n"
             f"sys.exit(main({argv!r}))"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        self.starts += 1

    def check_ready(self) -> bool:
        """Note when the latest process printed its "running" line; True once it has. (A
        process killed before it was up never gets a ready time.)"""
        if not self._ready:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._mark)
                if b"stowaway: running" in fh.read():
                    self._ready = True
                    self.ready_at.append(time.time())
        return self._ready

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def usage(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds so far including killed predecessors) of the daemon."""
        if not self.alive():
            return 0.0, self.cpu_s
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            cpu = (int(stat[11]) + int(stat[12])) / tick
            rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            return rss, self.cpu_s + cpu
        except (OSError, IndexError, ValueError):
            return 0.0, self.cpu_s

    def kill9(self) -> None:
        if self.alive():
            self.cpu_s = self.usage()[1]
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def stop(self, timeout: float = 60.0) -> int:
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.cpu_s = self.usage()[1]
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def write_config(root: Path, feed: Feed, logs: LiveLogs, webhook_url: str, *,
                 window_s: float, lag_s: float, models: Path, collect_s: float = 0.2,
                 retrain_interval_s: float = 0.0, min_windows: int = 20,
                 hold_s: float = 5.0, extra: str = "") -> Path:
    """One config for both sides: the daemon reads the live logs, the replay the mirror."""
    text = f"""
environment = "{feed.environment}"
host = "{feed.host}"
state_db = "{root}/state/state.db"
[sources]
osquery_mode = "results_log"
osquery_results_log = "{logs.osq_path}"
zeek_log_dir = "{logs.zeek_dir}"
address_map = "{root}/state/address_map.tsv"
[detection]
window_s = {window_s}
attribution_hold_s = {hold_s}
[sinks]
jsonl = "{root}/state/alerts.jsonl"
[sinks.webhook]
url = "{webhook_url}"
spool_dir = "{root}/state/spool"
timeout_s = 0.5
max_attempts = 3
backoff_s = 0.1
[model]
dir = "{models}"
windows_db = "{root}/state/windows.db"
min_windows = {min_windows}
[daemon]
collect_interval_s = {collect_s}
lag_s = {lag_s}
retrain_interval_s = {retrain_interval_s}
{extra}
"""
    (root / "state").mkdir(parents=True, exist_ok=True)
    p = root / "stowaway.toml"
    p.write_text(text)
    return p


def replay_config(root: Path, daemon_cfg: Path) -> Path:
    """The daemon's config with its own state and sinks moved aside (same detection settings)."""
    text = daemon_cfg.read_text()
    text = text.replace(f'state_db = "{root}/state/state.db"', f'state_db = "{root}/replay.db"')
    text = text.replace(f'jsonl = "{root}/state/alerts.jsonl"', f'jsonl = "{root}/replay.jsonl"')
    text = text.split("[sinks.webhook]")[0] + "[model]" + text.split("[model]", 1)[1]
    p = root / "replay.toml"
    p.write_text(text)
    return p


# =============================================================================== comparison
def alert_key(a: dict[str, Any]) -> tuple:
    """What must agree between daemon and replay: rule, container, image, the evidence's
    (side, kind) set (so a host+network merge that fell apart shows)."""
    c = a.get("container") or {}
    return (a.get("rule"), c.get("id") or c.get("name"), c.get("image"),
            tuple(sorted({(e.get("side", ""), e.get("kind", "")) for e in a.get("evidence", [])})))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@dataclass
class Diff:
    missing: list[tuple] = field(default_factory=list)      # in the replay, not the daemon
    extra: list[tuple] = field(default_factory=list)        # in the daemon, not the replay
    duplicates: list[tuple] = field(default_factory=list)   # the daemon wrote it twice

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.duplicates)

    def text(self) -> str:
        out = []
        for name in ("missing", "extra", "duplicates"):
            for k in getattr(self, name):
                out.append(f"{name}: {k}")
        return "\n".join(out)


def compare(daemon: list[dict[str, Any]], replay: list[dict[str, Any]]) -> Diff:
    d, r = Counter(map(alert_key, daemon)), Counter(map(alert_key, replay))
    ids = Counter(a["id"] for a in daemon)
    diff = Diff()
    for k in sorted(set(d) | set(r), key=repr):
        if r[k] > d[k]:
            diff.missing += [k] * (r[k] - d[k])
        elif d[k] > r[k]:
            (diff.duplicates if r[k] else diff.extra).extend([k] * (d[k] - r[k]))
    diff.duplicates += [("id", i) for i, n in ids.items() if n > 1]
    return diff


# =============================================================================== the run
@dataclass
class SoakResult:
    diff: Diff
    daemon_alerts: list[dict[str, Any]]
    replay_alerts: list[dict[str, Any]]
    kills: int
    rotations: int
    malformed: Counter
    webhook_received: Counter
    undelivered: list[str]
    late_deliveries: list[tuple[str, float]]    # (alert id, seconds past recovery + interval)
    retry_interval_s: float
    samples: list[tuple[float, float, float]]   # (recorded hours fed, RSS MiB, CPU s)
    wall_s: float
    recorded_s: float
    daemon_log: Path
    state_dir: Path
    not_injected: dict[str, str] = field(default_factory=dict)   # malformed kinds that crash


def _checkpoints(state_db: Path) -> dict[str, tuple[int, int]]:
    """path -> (inode, offset) the daemon has committed (read-only look at its state DB)."""
    try:
        con = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT path, inode, offset FROM checkpoints").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {p: (i, o) for p, i, o in rows}


def engine_idle(state_db: Path) -> bool:
    """Nothing open in the daemon's committed engine state: no window, queued window input,
    held record or alert waiting for its merge window, and every outbox row delivered."""
    try:
        con = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT data FROM pipeline_state WHERE name='daemon'").fetchone()
            pending = con.execute("SELECT COUNT(*) FROM alert_outbox WHERE delivered=0").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    if not row:
        return False
    st = json.loads(row[0])
    return (not st.get("windows") and not st.get("window_queue")
            and not st.get("window_chunks") and not st.get("held")
            and not (st.get("aggregator") or {}).get("open") and pending[0] == 0)


def caught_up(logs: LiveLogs, state_db: Path) -> bool:
    """The daemon committed every byte of every live file."""
    cps = _checkpoints(state_db)
    for f in logs.live_files():
        st = f.stat()
        inode, offset = cps.get(str(f), (None, None))
        if inode != st.st_ino or offset != st.st_size:
            return False
    return True


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")


def run_soak(root: Path, recordings: list[Path], *, seed: int, speed: float, window_s: float,
             lag_s: float, models: Path, kills: int = 2, webhook_flaps: int = 1,
             rotations: int = 2, malformed: bool = True, truncated_gz: bool = True,
             feed: Feed | None = None, tick_s: float = 0.05, sample_every_s: float = 600.0,
             collect_s: float = 0.1,
             end_timeout_s: float = 120.0, retrain_interval_s: float = 0.0,
             kill_fractions: list[float] | None = None, prelude: str = "",
             kill_after_catch_up: bool = False,
             on_tick: Callable[[float], None] | None = None) -> SoakResult:
    """Feed, fault, drain, replay, compare (see the module docstring). `kill_after_catch_up`:
    each kill waits until the daemon has committed everything fed so far, so what it derived
    is in its state when it dies (a test of what a restart does with that state must not
    depend on how fast a loaded machine let the daemon read)."""
    rng = random.Random(seed)
    feed = feed or load_feed(recordings)
    logs = LiveLogs(root, feed)
    rx = WebhookReceiver()
    cfg = write_config(root, feed, logs, rx.url, window_s=window_s, lag_s=lag_s, models=models,
                       retrain_interval_s=retrain_interval_s, collect_s=collect_s)
    state_db = root / "state" / "state.db"
    daemon = DaemonProcess(cfg, root / "daemon.log", prelude=prelude)
    span = feed.end - feed.start

    # Seeded fault plan, in data time (fractions of the span, away from the very end).
    def points(n: int, lo: float = 0.1, hi: float = 0.85) -> list[float]:
        return sorted(feed.start + span * rng.uniform(lo, hi) for _ in range(n))
    kill_at = points(kills) if kill_fractions is None else \
        [feed.start + span * f for f in kill_fractions]
    rotate_at = [(t, rng.choice(["conn", "dns", "http"])) for t in points(rotations, 0.2, 0.8)]
    flaps = points(webhook_flaps, 0.1, 0.6)
    flap_plan: list[tuple[float, str]] = []
    for t in flaps:                       # 500, then hang, then recover, in data time
        flap_plan += [(t, "500"), (t + span * 0.05, "hang"), (t + span * 0.10, "ok")]
    bad: list[tuple[float, str, str, str]] = []
    crashing: dict[str, str] = {}          # kind -> what the reader raised (not injected)
    if malformed:
        for kind, line in malformed_osquery_lines(rng):
            err = survives("osquery", line)
            if err:
                crashing[f"osquery:{kind}"] = err
                continue
            bad.append((feed.start + span * rng.uniform(0.05, 0.9), "osquery", kind, line))
        for stream in ("conn", "dns"):
            for kind, line in malformed_zeek_lines(stream, rng, feed.headers.get(stream)):
                err = survives(stream, line, feed.headers.get(stream))
                if err:
                    crashing[f"{stream}:{kind}"] = err
                    continue
                bad.append((feed.start + span * rng.uniform(0.05, 0.9), stream, kind, line))
        bad.sort(key=lambda x: x[0])
    if truncated_gz:
        err = truncated_gz_survives(root / "gz-probe")
        if err:
            crashing["conn:truncated_gz"] = err
            truncated_gz = False
    gz_at = points(1, 0.3, 0.7)[0] if truncated_gz else None
    retry_interval = min(60.0, 0.1 * 2 ** 3)   # backoff_s * 2**max_attempts (config above)
    spooled_at_recovery: list[tuple[float, set[str]]] = []
    samples: list[tuple[float, float, float]] = []

    def knows(stream: str) -> bool:
        path = logs.zeek_dir / f"{stream}.log"
        cp = _checkpoints(state_db).get(str(path))
        return path.exists() and cp is not None and cp[0] == path.stat().st_ino

    t0 = time.monotonic()
    daemon.start()
    wait_until(daemon.check_ready, 120, "daemon started")
    data_t = feed.start - 1.0
    next_sample = feed.start
    try:
        while not logs.done:
            data_t += tick_s * speed
            while kill_at and kill_at[0] <= data_t:
                kill_at.pop(0)
                if kill_after_catch_up:
                    wait_until(lambda: caught_up(logs, state_db), end_timeout_s,
                               "daemon caught up before the kill")
                daemon.kill9()
                daemon.start()
            if rotate_at and rotate_at[0][0] <= data_t and knows(rotate_at[0][1]):
                # (A file is rotated once the daemon has a checkpoint on it: a daemon that
                # never saw a file cannot know its rotated copy belongs to it.)
                _, stream = rotate_at.pop(0)
                logs.rotate(stream, f"r{logs.rotations}")
            if gz_at is not None and gz_at <= data_t:
                gz_at = None
                # Rotate + a truncated .gz, after the daemon has read the file: what was
                # readable is all there was to read, and the reader must not choke on the rest.
                wait_until(lambda: not daemon.alive() or caught_up(logs, state_db),
                           end_timeout_s, "daemon caught up before the truncated-gz rotation")
                logs.rotate("conn", f"t{logs.rotations}", truncate_gz=True)
            while flap_plan and flap_plan[0][0] <= data_t:
                _, mode = flap_plan.pop(0)
                if mode == "ok":
                    spool = root / "state" / "spool"
                    pending = {p.stem for p in spool.glob("*.json")}
                    rx.set_mode("ok")
                    spooled_at_recovery.append((time.time(), pending))
                else:
                    rx.set_mode(mode)
            while bad and bad[0][0] <= data_t:
                _, target, kind, line = bad.pop(0)
                logs.inject(target, kind, line)
            logs.write_until(data_t)
            if on_tick is not None:
                on_tick(data_t)
            if data_t >= next_sample:
                rss, cpu = daemon.usage()
                samples.append(((data_t - feed.start) / 3600.0, rss, cpu))
                next_sample += sample_every_s
            if not daemon.alive():
                raise AssertionError(f"daemon exited on its own; see {daemon.log_path}")
            daemon.check_ready()
            time.sleep(tick_s)
        rx.set_mode("ok")
        if flap_plan:
            spooled_at_recovery.append((time.time(), {p.stem for p in
                                                      (root / "state" / "spool").glob("*.json")}))
        # Drain: the daemon reads everything, its data clock closes the last windows, the
        # merge windows pass, the outbox and the spool empty.
        wait_until(lambda: caught_up(logs, state_db), end_timeout_s, "daemon read every line")
        wait_until(lambda: not daemon.alive() or engine_idle(state_db), end_timeout_s,
                   "daemon engine idle (windows closed, alerts written)")
        wait_until(lambda: not list((root / "state" / "spool").glob("*.json")), end_timeout_s,
                   "webhook spool delivered")
        daemon.check_ready()
        rss, cpu = daemon.usage()
        samples.append(((feed.end - feed.start) / 3600.0, rss, cpu))
        rc = daemon.stop()
        if rc != 0:
            raise AssertionError(f"daemon exit status {rc}; see {daemon.log_path}")
    finally:
        if daemon.alive():
            daemon.kill9()
        logs.close()
        rx.stop()
    wall = time.monotonic() - t0

    rcfg = replay_config(root, cfg)
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", "replay", str(logs.mirror),
                        "--config", str(rcfg), "--models", str(models), "--out",
                        str(root / "replay.jsonl"), "--no-progress", "--fresh"],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"stowaway replay failed ({r.returncode}):\n{r.stderr[-3000:]}")
    daemon_alerts = read_jsonl(root / "state" / "alerts.jsonl")
    replay_alerts = read_jsonl(root / "replay.jsonl")
    received = rx.ids()
    undelivered = sorted(a["id"] for a in daemon_alerts if a["id"] not in received)
    late: list[tuple[str, float]] = []
    when = {k: t for t, k in reversed(rx.accepted)}       # first acceptance per id
    for recovered, pending in spooled_at_recovery:
        limit = recovered + retry_interval + 1.0          # + the deliver job's tick and a POST
        for ready in daemon.ready_at:                     # a kill -9 meanwhile: from its restart
            if recovered <= ready and ready - STARTUP_BOUND_S <= limit:
                limit = max(limit, ready + retry_interval + 1.0)
        for aid in pending:
            got = when.get(aid)
            if got is None or got > limit:
                late.append((aid, (got or float("inf")) - limit))
    return SoakResult(diff=compare(daemon_alerts, replay_alerts), daemon_alerts=daemon_alerts,
                      replay_alerts=replay_alerts, kills=daemon.kills, rotations=logs.rotations,
                      malformed=logs.malformed, webhook_received=received,
                      undelivered=undelivered, late_deliveries=late,
                      retry_interval_s=retry_interval, samples=samples, wall_s=wall,
                      recorded_s=span, daemon_log=daemon.log_path, state_dir=root / "state",
                      not_injected=crashing)


def train_models(models: Path, recordings: list[Path], window_s: float,
                 min_windows: int = 20) -> None:
    """Baselines both sides score with (saved in the model store the config names)."""
    from scheduler.config import Config
    from scheduler.replay import train_from_recordings

    cfg = Config()
    cfg.detection.window_s = window_s
    cfg.model.min_windows = min_windows
    train_from_recordings(recordings, cfg, model_dir=models)
