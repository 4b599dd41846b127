"""Tailer: rotation (rename and new inode), truncation, restart from checkpoint, kill -9.

Every test checks the exact sequence of lines consumed, so a lost or repeated line fails it.
"""
from __future__ import annotations

import gzip
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from datafiles import read_bytes, resolve, scenario_dir
from fake_hosts import wait_until
from scheduler.collect.state import StateStore
from scheduler.collect.tailer import (FileTailer, OsqueryTailer, ZeekBatchTailer, ZeekTailer, drain,
                                       follow_zeek_dir)

REPO = Path(__file__).resolve().parents[1]

TSV_HEADER = [
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#open\t2026-11-27-19-00-00",
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto",
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum",
]


def conn_line(i: int) -> str:
    return f"{1795805000 + i}.5\tC{i:06d}\t172.17.0.3\t{40000 + i}\t10.0.0.2\t53\tudp"


def append(path: Path, lines: list[str], newline_last: bool = True) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        text = "\n".join(lines)
        fh.write(text + ("\n" if newline_last else ""))


def consume(tailer: FileTailer, sink: list[str]) -> int:
    """Drain with a handler that records every line (checkpoint in the same transaction)."""
    def handler(batch, conn):
        sink.extend(line.text for line in batch.lines)
    return drain(tailer, handler)


def follow(log: Path, store: StateStore, lines: list[str]) -> tuple[FileTailer, list[str]]:
    """Write `lines` to `log` and consume them with a new FileTailer: where the line-mode tests
    start before they rotate, truncate or replace the file under that tailer. Returns the tailer
    and the lines seen (the list the test goes on consuming into)."""
    append(log, lines)
    t = FileTailer(log, store)
    seen: list[str] = []
    consume(t, seen)
    return t, seen


def rewrite(log: Path, lines: list[str]) -> None:
    """Truncate `log` in place (same inode) and write `lines`: a file started again."""
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def copytruncate(log: Path, lines: list[str]) -> None:
    """logrotate's copytruncate: `log` is copied to `<log>.1` (a new inode that holds the unread
    rest), then truncated in place; `lines` are what the writer puts in it next."""
    shutil.copyfile(log, log.with_name(log.name + ".1"))
    rewrite(log, lines)


def rotate(log: Path) -> Path:
    """Rotate `log` as Zeek does: renamed (same inode) to `<stem>.2026-11-27-19-00-00.log`, where
    the tailer looks for it; the writer's next line creates a new file at the path. Returns the
    rotated path."""
    rotated = log.with_name(f"{log.stem}.2026-11-27-19-00-00.log")
    os.rename(log, rotated)
    return rotated


def rotate_compressed(log: Path, truncated: bool = False) -> Path:
    """Rotate `log` as a post-processor leaves it: renamed, gzip-compressed (cut to two thirds
    when `truncated`: a full disk, a crashed compressor), the plain rotated file removed. Returns
    the .gz path."""
    rotated = rotate(log)
    data = gzip.compress(rotated.read_bytes())
    packed = rotated.with_name(rotated.name + ".gz")
    packed.write_bytes(data[: len(data) * 2 // 3] if truncated else data)
    rotated.unlink()
    return packed


#: The header of a rotated-to conn.log whose columns come in another order (uid first)
NEW_ORDER_HEADER = [h for h in TSV_HEADER if not h.startswith(("#fields", "#types"))] + [
    "#fields\tuid\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto",
    "#types\tstring\ttime\taddr\tport\taddr\tport\tenum"]


def rotate_to_new_column_order(log: Path) -> Path:
    """After a conn.log's lines 0 and 1 were read: line 2, a malformed line (the file's line 12)
    and #close end it, it is rotated, and a new file with another column order takes its path;
    its one record (uid Cnew, ts 1795806000.25) only parses with the new header. Returns the
    rotated file."""
    append(log, [conn_line(2), "garbage\tline", "#close\t2026-11-27-20-00-00"])
    rotated = rotate(log)
    append(log, NEW_ORDER_HEADER + ["Cnew\t1795806000.25\t172.17.0.9\t5555\t10.0.0.2\t53\tudp"])
    return rotated


def write_in_random_chunks(tmp_path: Path, rel: str, seed: int,
                           run: Callable[[Path, str, random.Random], None]) -> list[str]:
    """Append the real fixture log `rel` to `<tmp_path>/<stream>.log` in odd-sized byte chunks
    (lines cut in half), rotated in the middle (the new file repeats the TSV header, as Zeek writes
    it). `run(log, stream, rng)` stands for a fresh process reading from the checkpoint: called after
    each file's first write (a tailer that never saw a file before it was rotated away starts at
    the new file), at random after later writes, and once at the end. Returns the reference uids."""
    from scheduler.collect.zeeklog import iter_zeek_log

    src = resolve(GEO / rel)
    ref = [r["uid"] for r in iter_zeek_log(src)]
    lines = read_bytes(src).splitlines(keepends=True)
    header = b"".join(l for l in lines if l.startswith(b"#") and not l.startswith(b"#close"))
    body = [l for l in lines if not l.startswith(b"#")]
    half = len(body) // 2
    stream = Path(rel).name.split(".")[0]
    log = tmp_path / f"{stream}.log"
    rng = random.Random(seed)
    for blob, rotate_after in ((header + b"".join(body[:half]), True),
                               (header + b"".join(body[half:]), False)):
        pos = 0
        while pos < len(blob):
            step = rng.randint(1, 4000)
            with open(log, "ab") as fh:
                fh.write(blob[pos:pos + step])
            first_write = pos == 0
            pos += step
            if first_write or rng.random() < 0.3:
                run(log, stream, rng)
        if rotate_after:
            # no read before the rename: the rest of the old file is read after the rotation
            os.rename(log, tmp_path / f"{stream}.2026-11-27-18-45-00.log")
    run(log, stream, rng)
    return ref


@pytest.fixture()
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def test_partial_line_waits_for_newline(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "a.log"
    append(log, ["one", "two", "thr"], newline_last=False)
    seen: list[str] = []
    consume(FileTailer(log, store), seen)
    assert seen == ["one", "two"]
    with open(log, "a") as fh:
        fh.write("ee\nfour\n")
    consume(FileTailer(log, store), seen)  # a new instance resumes from the checkpoint
    assert seen == ["one", "two", "three", "four"]


def test_rotation_by_rename_reads_rest_of_old_file_first(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "conn.log"
    t, seen = follow(log, store, [f"a{i}" for i in range(5)])
    append(log, ["a5", "a6"])                      # written before the rotation, not yet read
    rotate(log)
    append(log, ["b0", "b1"])                      # the new file at the same path
    consume(t, seen)
    assert seen == [f"a{i}" for i in range(7)] + ["b0", "b1"]
    assert t.rotations == 1
    cp = store.get_checkpoint(str(log))
    assert cp is not None and cp.inode == os.stat(log).st_ino and cp.lineno == 2


def test_rotation_old_file_without_final_newline(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "dns.log"
    t, seen = follow(log, store, ["x0"])
    append(log, ["x1", "x2"], newline_last=False)
    rotate(log)
    append(log, ["y0"])
    consume(t, seen)
    assert seen == ["x0", "x1", "x2", "y0"]


def test_restart_after_rotation_before_commit(tmp_path: Path) -> None:
    """Crash between reading the rotated file and committing: the rotated file is found again."""
    log = tmp_path / "http.log"
    db = tmp_path / "s.db"
    store = StateStore(db)
    append(log, ["a0", "a1"])
    seen: list[str] = []
    consume(FileTailer(log, store), seen)
    append(log, ["a2"])
    os.rename(log, tmp_path / "http.2026-11-27-20-00-00.log")
    append(log, ["b0"])

    class Boom(Exception):
        pass

    def failing(batch, conn):
        conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
        raise Boom()

    t = FileTailer(log, store)
    with pytest.raises(Boom):
        drain(t, failing)
    assert store.conn.execute("SELECT name FROM sqlite_master WHERE name='t'").fetchone() is None
    store.close()
    store = StateStore(db)
    consume(FileTailer(log, store), seen)
    assert seen == ["a0", "a1", "a2", "b0"]
    store.close()


def test_copytruncate_starts_again_at_zero(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "ssl.log"
    t, seen = follow(log, store, ["old0", "old1", "old2"])
    rewrite(log, ["new0"])
    consume(t, seen)
    assert seen == ["old0", "old1", "old2", "new0"]
    assert t.truncations == 1


def test_replaced_in_place_with_longer_content_is_detected(tmp_path: Path, store: StateStore) -> None:
    """Same inode, not shorter, different first bytes: the fingerprint catches it."""
    log = tmp_path / "conn.log"
    t, seen = follow(log, store, ["first-file-0", "first-file-1"])
    with open(log, "r+") as fh:
        fh.seek(0)
        fh.write("other-file-0\nother-file-1\nother-file-2\n")
    consume(t, seen)
    assert seen == ["first-file-0", "first-file-1", "other-file-0", "other-file-1", "other-file-2"]


def test_zeek_tsv_header_survives_restart(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    db = tmp_path / "s.db"
    append(log, TSV_HEADER + [conn_line(i) for i in range(3)])
    store = StateStore(db)
    got: list[tuple[int, dict]] = []
    t = ZeekTailer(log, store, stream="conn")
    drain(t, lambda b, c: got.extend(b.items))
    store.close()
    append(log, [conn_line(i) for i in range(3, 6)])
    store = StateStore(db)
    t2 = ZeekTailer(log, store, stream="conn")   # a fresh process: only the checkpoint knows #fields
    drain(t2, lambda b, c: got.extend(b.items))
    assert [rec["uid"] for _, rec in got] == [f"C{i:06d}" for i in range(6)]
    assert [ln for ln, _ in got] == list(range(9, 15))
    assert got[4][1]["id.orig_p"] == 40004 and got[4][1]["ts"] == pytest.approx(1795805004.5)
    assert t2.stats.bad_lines == 0
    store.close()


def test_zeek_rotation_new_header_and_malformed_line(tmp_path: Path, store: StateStore,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "conn.log"
    append(log, TSV_HEADER + [conn_line(0), conn_line(1)])
    t = ZeekTailer(log, store, stream="conn")
    got: list[tuple[int, dict]] = []
    drain(t, lambda b, c: got.extend(b.items))
    rotated = rotate_to_new_column_order(log)   # the parser must use the new file's header
    with caplog.at_level(logging.WARNING):
        drain(t, lambda b, c: got.extend(b.items))
    assert [r["uid"] for _, r in got] == ["C000000", "C000001", "C000002", "Cnew"]
    assert got[-1][1]["ts"] == pytest.approx(1795806000.25)
    assert t.stats.bad_lines == 1
    assert any(f"{rotated}:12" in m for m in caplog.messages), caplog.messages


def test_osquery_tailer_counts_malformed(tmp_path: Path, store: StateStore,
                                         caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "osqueryd.results.log"
    good = ('{"name":"pack_stowaway_stowaway_container_events","hostIdentifier":"h","unixTime":5,'
            '"action":"added","columns":{"action":"start","container_id":"abc"}}')
    append(log, [good, "{not json", good])
    t = OsqueryTailer(log, store)
    rows = []
    with caplog.at_level(logging.WARNING):
        drain(t, lambda b, c: rows.extend(b.items))
    assert len(rows) == 2 and t.stats.malformed == 1
    assert any(f"{log}:2" in m for m in caplog.messages)


def test_start_at_end_skips_existing_lines(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "conn.log"
    append(log, TSV_HEADER + [conn_line(0)])
    t = ZeekTailer(log, store, stream="conn", start_at_end=True)
    got: list = []
    drain(t, lambda b, c: got.extend(b.items))
    assert got == []
    append(log, [conn_line(1)])
    drain(t, lambda b, c: got.extend(b.items))
    assert [r["uid"] for _, r in got] == ["C000001"]


CHILD = textwrap.dedent(r"""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from scheduler.collect.state import StateStore, register_schema
    from scheduler.collect.tailer import FileTailer, drain
    register_schema("CREATE TABLE IF NOT EXISTS seen (line TEXT NOT NULL);")
    store = StateStore(sys.argv[2])
    t = FileTailer(sys.argv[1], store, max_lines=7)
    def handler(batch, conn):
        for line in batch.lines:
            conn.execute("INSERT INTO seen(line) VALUES (?)", (line.text,))
        time.sleep(0.01)   # slow consumer: the kill lands mid-run
    deadline = time.time() + 60
    while time.time() < deadline:
        drain(t, handler)
        if store.get_kv("stop") == "1":
            break
        time.sleep(0.01)
""")


def test_kill_minus_9_mid_run_no_loss_no_duplicate(tmp_path: Path) -> None:
    """A consumer killed with SIGKILL while lines are appended and the log rotates, then restarted,
    has consumed every line exactly once."""
    log = tmp_path / "conn.log"
    db = tmp_path / "state.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log.write_text("")
    written: list[str] = []

    def write(n: int, tag: str) -> None:
        lines = [f"{tag}-{i}" for i in range(n)]
        append(log, lines)
        written.extend(lines)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(log), str(db), str(REPO)])

    def consumed() -> int:
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        except sqlite3.OperationalError:   # table not created yet (or locked for a moment)
            return 0

    child = start()
    write(300, "a")
    # The rotation below is only a rotation for a child that already follows the file: wait for
    # its first checkpointed batch (under load the interpreter takes most of a second to start).
    wait_until(lambda: consumed() > 0, timeout=60, interval=0.01,
               what="the child's first committed batch")
    write(200, "b")
    rotate(log)
    write(300, "c")
    wait_until(lambda: consumed() >= 50, timeout=60, interval=0.01,
               what="50 lines consumed (started and busy, far from done)")
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    mid = sqlite3.connect(db).execute("SELECT COUNT(*) FROM seen").fetchone()[0]
    write(200, "d")
    child = start()
    wait_until(lambda: consumed() >= len(written), timeout=60, what="every line consumed")
    time.sleep(0.3)    # would a duplicate still arrive? (an absence cannot be polled for)
    StateStore(db).set_kv("stop", "1")
    child.wait(30)
    got = [r[0] for r in sqlite3.connect(db).execute("SELECT line FROM seen ORDER BY rowid")]
    assert 0 < mid < len(written), "the kill should land mid-run"
    assert len(got) == len(set(got)), "duplicates after restart"
    assert got == written


GEO = scenario_dir("geo_lookup") / "zeek"


@pytest.mark.parametrize("rel", ["conn.log", "dns.log", "json/http.log", "json/ssl.log"])
def test_real_zeek_log_written_in_random_chunks_with_rotation(tmp_path: Path, rel: str) -> None:
    """A real fixture log appended in odd-sized byte chunks (lines cut in half), rotated in the
    middle (the new file repeats the TSV header, as Zeek writes it), restarted from the checkpoint
    twice: exactly the reference records, in order."""
    db = tmp_path / "s.db"
    got: list[str] = []

    def run(log: Path, stream: str, rng: random.Random) -> None:
        store = StateStore(db)   # a fresh process each time: checkpoint + header from SQLite
        t = ZeekTailer(log, store, stream=stream)
        drain(t, lambda b, c: got.extend(r["uid"] for _, r in b.items))
        assert t.stats.bad_lines == 0
        store.close()

    ref = write_in_random_chunks(tmp_path, rel, 7, run)
    assert got == ref and len(ref) > 0


def test_rotated_file_already_gzipped_is_read_from_the_offset(tmp_path: Path, store: StateStore) -> None:
    """A rotation post-processor compressed the rotated file before we drained it."""
    log = tmp_path / "conn.log"
    first = [f"line-{i:04d}-" + "x" * 40 for i in range(60)]   # > 1 KB: a full fingerprint
    t, seen = follow(log, store, first)
    append(log, ["late-0", "late-1"])
    rotate_compressed(log)
    append(log, ["new-0"])
    consume(t, seen)
    assert seen == first + ["late-0", "late-1", "new-0"]
    assert t.lost_files == 0


def test_copytruncate_reads_the_rest_from_the_copy(tmp_path: Path, store: StateStore) -> None:
    """logrotate copytruncate: conn.log copied to conn.log.1 (new inode), then truncated."""
    log = tmp_path / "conn.log"
    first = [f"c-{i:04d}-" + "y" * 40 for i in range(40)]
    t, seen = follow(log, store, first)
    append(log, ["unread-0", "unread-1"])
    copytruncate(log, ["after-0"])
    consume(t, seen)
    assert seen == first + ["unread-0", "unread-1", "after-0"]


# ---- hostile lines and damaged files: the batch survives, the checkpoint moves past what was read --

OSQ_GOOD = ('{"name":"pack_stowaway_stowaway_container_events","hostIdentifier":"h","unixTime":%d,'
            '"action":"added","columns":{"action":"start","container_id":"c%d"}}')


@pytest.mark.parametrize("bad", [
    "[" * 100_000,                                                       # RecursionError
    '{"name":"container_events","unixTime":' + "9" * 5000 + ',"columns":{},"action":"added"}',
    '{"name":"container_events","unixTime":1e999,"columns":{},"action":"added"}',
    '{"name":"container_events","unixTime":1,"snapshot":[["not","an","object"]]}',
], ids=["deep", "digits", "inf", "list-row"])
def test_osquery_tailer_hostile_line_costs_one_line_not_the_batch(
        tmp_path: Path, store: StateStore, bad: str, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "osqueryd.results.log"
    append(log, [OSQ_GOOD % (1, 1), bad, OSQ_GOOD % (3, 3)])
    t = OsqueryTailer(log, store)
    rows = []
    with caplog.at_level(logging.WARNING):
        drain(t, lambda b, c: rows.extend(b.items))     # no exception out of poll()
    assert [r.columns["container_id"] for r in rows] == ["c1", "c3"]
    assert t.stats.malformed == 1
    assert any(f"{log}:2:" in m for m in caplog.messages), caplog.messages
    # the checkpoint is past the three lines: a restarted tailer reads only what comes next
    append(log, [OSQ_GOOD % (4, 4)])
    t2, later = OsqueryTailer(log, store), []
    drain(t2, lambda b, c: later.extend(b.items))
    assert [r.columns["container_id"] for r in later] == ["c4"]


def test_zeek_tailer_hostile_json_line_costs_one_line(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "dns.log"
    good = '{"ts":%d.5,"uid":"J%d","id.orig_h":"172.17.0.3","id.orig_p":1,"query":"q"}'
    append(log, [good % (1, 1), '{"ts":1.0,"a":' + "[" * 100_000, '{"ts":NaN,"uid":"X"}',
                 '{"ts":2.0,"uid":"X","id.orig_h":{"x":1}}', good % (5, 5)])
    t = ZeekTailer(log, store, stream="dns")
    got = []
    drain(t, lambda b, c: got.extend(b.items))
    assert [(n, r["uid"]) for n, r in got] == [(1, "J1"), (5, "J5")]
    assert t.stats.bad_lines == 3


def test_parse_failure_does_not_move_the_position(tmp_path: Path, store: StateStore) -> None:
    """Were a parser to raise anyway, the lines are read again, not silently skipped."""
    log = tmp_path / "osqueryd.results.log"
    append(log, [OSQ_GOOD % (1, 1), OSQ_GOOD % (2, 2)])
    t = OsqueryTailer(log, store)
    t._parse_one = lambda line, parse: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        t.poll()
    del t._parse_one
    assert [r.columns["container_id"] for r in t.poll().items] == ["c1", "c2"]


def test_truncated_rotated_gzip_is_read_as_far_as_it_goes(tmp_path: Path, store: StateStore,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The rotated file was compressed and the .gz is cut short: its readable lines are read, the
    damage is named, and the tailer moves on to the live file."""
    log = tmp_path / "conn.log"
    first = [f"line-{i:05d}-" + "x" * 40 for i in range(30)]
    t, seen = follow(log, store, first)
    rest = [f"rest-{i:05d}-" + "z" * 40 for i in range(20000)]
    append(log, rest)
    packed = rotate_compressed(log, truncated=True)
    append(log, ["new-0", "new-1"])
    with caplog.at_level(logging.WARNING):
        consume(t, seen)                                # no EOFError
    got_rest = seen[len(first):-2]
    assert seen[:len(first)] == first and seen[-2:] == ["new-0", "new-1"]
    assert 0 < len(got_rest) < len(rest) and got_rest == rest[:len(got_rest)]
    assert t.io_errors == 1
    assert any(packed.name in m and "EOFError" in m for m in caplog.messages), caplog.messages


def test_daemon_batch_with_a_hostile_line_is_processed_and_counted_in_metrics(tmp_path: Path) -> None:
    """In the daemon, one hostile line used to drop its whole batch (the position moved before
    the lines were parsed); now the rest is fed to the engine and the line is a metric."""
    import urllib.request

    from scheduler.config import Config
    from scheduler.daemon import Daemon

    log = tmp_path / "osqueryd.results.log"
    inv = ('{"name":"pack_stowaway_stowaway_container_inventory","hostIdentifier":"h1",'
           '"unixTime":1795805040,"action":"added","columns":{"id":"e011c403","name":"web-2",'
           '"image":"localhost/webapp:1.4","state":"running","ip_addresses":"172.17.0.3",'
           '"runtime":"podman","created":"1795805038"}}')
    append(log, ["[" * 100_000, inv, '{"name":"container_events","unixTime":NaN,"columns":{}}'])
    cfg = Config(state_db=str(tmp_path / "state.db"))
    cfg.sources.osquery_results_log = str(log)
    cfg.sources.zeek_log_dir = str(tmp_path / "zeek")
    cfg.sources.address_map = str(tmp_path / "map.tsv")
    cfg.sinks.jsonl = str(tmp_path / "alerts.jsonl")
    cfg.model.dir = str(tmp_path / "models")
    cfg.metrics.enabled, cfg.metrics.port = True, 0
    d = Daemon(cfg)
    try:
        d.collect_once()
        assert "172.17.0.3" in (tmp_path / "map.tsv").read_text()     # the inventory row arrived
        assert d.tailers[0].stats.malformed == 2
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=5).read().decode()
        assert 'stowaway_bad_lines_total{source="osquery:results"} 2.0' in body
    finally:
        d.close()


# ---- batch mode (ZeekBatchTailer): the same guarantees, a ZeekBatch of columns per poll ---------

def batch_uids(t: ZeekBatchTailer, got: list[str], polls: list[int] | None = None) -> int:
    """Drain in batch mode; every ZeekBatch's uid column and its records must agree."""
    def handler(batch, conn) -> None:
        if polls is not None:
            polls.append(len(batch))
        for zb in batch.items:
            uids = list(zb.columns["uid"])
            assert [zb.record(i)["uid"] for i in range(len(zb))] == uids
            got.extend(uids)
    return drain(t, handler)


def follow_batches(log: Path, store: StateStore, n: int,
                   **kwargs: Any) -> tuple[ZeekBatchTailer, list[str]]:
    """Write a conn.log of TSV_HEADER and `n` lines and consume it with a new ZeekBatchTailer:
    where the batch tests start before they rotate or truncate the file under that tailer.
    Returns the tailer and the uids seen (the list the test goes on consuming into)."""
    append(log, TSV_HEADER + [conn_line(i) for i in range(n)])
    t = ZeekBatchTailer(log, store, stream="conn", **kwargs)
    got: list[str] = []
    batch_uids(t, got)
    return t, got


def test_batch_tailer_partial_line_waits_and_checkpoint_is_a_line_boundary(
        tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "conn.log"
    text = "\n".join(TSV_HEADER + [conn_line(i) for i in range(40)]) + "\n"
    cut = text.index(conn_line(30)) + 7          # line 30 cut in the middle
    log.write_text(text[:cut])
    got: list[str] = []
    polls: list[int] = []
    t = ZeekBatchTailer(log, store, stream="conn", batch_bytes=300)
    assert batch_uids(t, got, polls) == len(TSV_HEADER) + 30
    assert got == [f"C{i:06d}" for i in range(30)]
    assert len(polls) > 3                         # several batches: about 300 bytes each
    cp = store.get_checkpoint("zeek:conn")
    assert cp.offset == text.index(conn_line(30)) and cp.lineno == len(TSV_HEADER) + 30
    with open(log, "a") as fh:
        fh.write(text[cut:])
    t2 = ZeekBatchTailer(log, store, stream="conn", batch_bytes=300)   # resumes from SQLite
    batch_uids(t2, got)
    assert got == [f"C{i:06d}" for i in range(40)]
    assert t2.stats.bad_lines == 0


def test_batch_tailer_restart_primes_header_and_rewinds_on_failure(tmp_path: Path) -> None:
    log = tmp_path / "conn.log"
    db = tmp_path / "s.db"
    append(log, TSV_HEADER + [conn_line(i) for i in range(3)])
    store = StateStore(db)
    got: list[str] = []
    batch_uids(ZeekBatchTailer(log, store, stream="conn"), got)
    store.close()
    append(log, [conn_line(i) for i in range(3, 6)])

    class Boom(Exception):
        pass

    def failing(batch, conn):
        raise Boom()

    store = StateStore(db)
    t = ZeekBatchTailer(log, store, stream="conn")   # a fresh process: the checkpoint has #fields
    with pytest.raises(Boom):
        drain(t, failing)                              # rolled back and rewound: read again
    lines: list[int] = []
    drain(t, lambda b, c: lines.extend(ln for zb in b.items for ln in zb.lineno.tolist()))
    assert lines == list(range(12, 15))
    store.close()
    store = StateStore(db)
    t3 = ZeekBatchTailer(log, store, stream="conn")
    append(log, [conn_line(6)])
    batch_uids(t3, got)
    assert got == [f"C{i:06d}" for i in (0, 1, 2, 6)]
    (cols,) = [zb.columns for zb in ZeekBatchTailer(log, StateStore(":memory:"),
                                                   stream="conn").batches()]
    assert cols["id.orig_p"].tolist() == [40000 + i for i in range(7)]
    store.close()


def test_batch_tailer_rotation_new_header_and_malformed_line(
        tmp_path: Path, store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "conn.log"
    t, got = follow_batches(log, store, 2)
    rotated = rotate_to_new_column_order(log)
    batches: list = []
    with caplog.at_level(logging.WARNING):
        drain(t, lambda b, c: batches.extend(b.items))
    got += [u for zb in batches for u in zb.columns["uid"]]
    assert got == ["C000000", "C000001", "C000002", "Cnew"]
    assert batches[-1].columns["ts"].tolist() == [1795806000.25]
    assert batches[-1].path == str(log) and batches[0].path == str(rotated)
    assert t.stats.bad_lines == 1 and t.rotations == 1
    assert f"{rotated}:12" in " ".join(r.getMessage() for r in caplog.records)


def test_batch_tailer_truncation_and_copytruncate(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "conn.log"
    t, got = follow_batches(log, store, 30)
    append(log, [conn_line(30), conn_line(31)])
    copytruncate(log, TSV_HEADER + [conn_line(100)])   # the unread rest is in the copy
    batch_uids(t, got)
    assert got == [f"C{i:06d}" for i in range(32)] + ["C000100"]
    assert t.truncations == 1
    rewrite(log, TSV_HEADER + [conn_line(200)])       # truncated in place, no copy this time
    batch_uids(t, got)
    assert got[-1] == "C000200" and t.truncations == 2 and t.stats.bad_lines == 0


def test_batch_tailer_rotated_file_already_gzipped(tmp_path: Path, store: StateStore) -> None:
    log = tmp_path / "conn.log"
    t, got = follow_batches(log, store, 20, batch_bytes=512)
    append(log, [conn_line(i) for i in range(20, 60)])   # unread when the file is rotated
    rotate_compressed(log)
    append(log, TSV_HEADER + [conn_line(500)])
    batch_uids(t, got)
    assert got == [f"C{i:06d}" for i in range(60)] + ["C000500"]
    assert t.lost_files == 0 and t.stats.bad_lines == 0


@pytest.mark.parametrize("rel", ["conn.log", "dns.log", "json/http.log"])
def test_batch_tailer_real_log_in_random_chunks_with_rotation(tmp_path: Path, rel: str) -> None:
    """As the line-mode test above: a real log appended in odd-sized chunks, rotated mid-way,
    read by fresh processes from the checkpoint in small batches: exactly the reference rows."""
    db = tmp_path / "s.db"
    got: list[str] = []

    def run(log: Path, stream: str, rng: random.Random) -> None:
        store = StateStore(db)
        t = ZeekBatchTailer(log, store, stream=stream, batch_bytes=rng.choice([200, 1500, 1 << 20]))
        batch_uids(t, got)
        assert t.stats.bad_lines == 0
        store.close()

    ref = write_in_random_chunks(tmp_path, rel, 11, run)
    assert got == ref and len(ref) > 0


def test_follow_zeek_dir_in_batch_mode(tmp_path: Path, store: StateStore) -> None:
    from scheduler.pipeline import ingest_fields
    append(tmp_path / "conn.log", TSV_HEADER + [conn_line(i) for i in range(4)])
    tailers = follow_zeek_dir(tmp_path, store, streams=("conn", "dns"), fields=ingest_fields,
                              batches=True, batch_bytes=4096)
    assert [type(t) for t in tailers] == [ZeekBatchTailer, ZeekBatchTailer]
    assert [t.batch_bytes for t in tailers] == [4096, 4096]
    got: list[str] = []
    assert batch_uids(tailers[0], got) == len(TSV_HEADER) + 4
    assert got == [f"C{i:06d}" for i in range(4)]
    assert batch_uids(tailers[1], []) == 0          # dns.log does not exist yet: nothing, quietly


@pytest.mark.parametrize("batch_bytes", [4096, 1 << 16])
def test_batch_tailer_rotated_gz_truncated_reads_what_is_readable(
        tmp_path: Path, store: StateStore, batch_bytes: int) -> None:
    """The rotated file was compressed, but the .gz is cut short (disk full, a crashed
    post-processor): its readable complete lines are consumed, the damage is counted once, and the
    tailer goes on with the live file."""
    log = tmp_path / "conn.log"
    t, got = follow_batches(log, store, 10, batch_bytes=batch_bytes)
    append(log, [conn_line(i) for i in range(10, 3000)])
    rotate_compressed(log, truncated=True)
    append(log, TSV_HEADER + [conn_line(5000)])
    batch_uids(t, got)
    assert t.io_errors == 1 and t.stats.bad_lines == 0
    assert got[-1] == "C005000"
    old = got[:-1]
    assert old == [f"C{i:06d}" for i in range(len(old))] and 100 < len(old) < 3000
