"""Backfill (issue 13 item 6): `stowaway replay` over a day of rotated, gzipped logs per host.

The day directory is built from two bundled recordings (geo_lookup, churn), each laid out as a
host would leave it after a day: Zeek's rotated `<stream>.<stamp>.log.gz` files (each with its own
header, as Zeek writes them) and osqueryd's `osqueryd.results.log.2.gz`, `.1` and current file.
What a backfill of that directory finds must be what a replay of the recordings finds; on a Dask
LocalCluster it must be the same again; a run killed mid-way and resumed must be the same too.
"""
from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import pytest

from scheduler.backfill import (LayoutError, discover, host_partition, run_backfill,
                                summary_line)
from scheduler.cli import main
from scheduler.collect.recording import Recording, osquery_result_files
from scheduler.config import Config
from scheduler.replay import replay

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scheduler" / "demo_data"
HOSTS = {"host-a": "geo_lookup", "host-b": "churn"}


def lab() -> Config:
    """The bundled recordings' environment; a host directory has no meta.json to say it."""
    cfg = Config()
    cfg.environment = "lab"
    return cfg


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(t))


def _split(lines: list[str], n: int) -> list[list[str]]:
    size = -(-len(lines) // n)
    return [lines[i:i + size] for i in range(0, len(lines), size)]


def write_rotated_host(rec_dir: Path, host_dir: Path, pieces: int = 3) -> None:
    """One recording as a day's rotated logs: Zeek's files hourly-stamped and gzipped (each
    piece with the header Zeek writes at every open), osquery's as logrotate leaves them."""
    rec = Recording(rec_dir)
    t0 = rec.meta.time_range[0] - rec.meta.time_range[0] % 3600
    zdir, odir = host_dir / "zeek", host_dir / "osquery"
    zdir.mkdir(parents=True)
    odir.mkdir(parents=True)
    for stream, files in rec.zeek_files().items():
        text = gzip.open(files[-1], "rt").read().splitlines()
        head = [ln for ln in text if ln.startswith("#") and not ln.startswith("#close")]
        body = [ln for ln in text if not ln.startswith("#")]
        for i, part in enumerate(_split(body, pieces)):
            name = f"{stream}.{_stamp(t0 + 3600 * i)}.log.gz"
            with gzip.open(zdir / name, "wt") as fh:
                fh.write("\n".join(head + part + ["#close\t" + _stamp(t0 + 3600 * (i + 1))]) + "\n")
    lines = gzip.open(rec.osquery_log(), "rt").read().splitlines(keepends=True)
    old, mid, cur = _split(lines, 3)
    with gzip.open(odir / "osqueryd.results.log.2.gz", "wt") as fh:
        fh.writelines(old)
    (odir / "osqueryd.results.log.1").write_text("".join(mid))
    (odir / "osqueryd.results.log").write_text("".join(cur))


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("day") / "2026-11-27"
    for host, scenario in HOSTS.items():
        write_rotated_host(DEMO / scenario, d / host)
    return d


@pytest.fixture(scope="module")
def reference() -> dict[str, list[dict]]:
    """What a plain replay of each bundled recording alerts (ids included)."""
    return {h: [a.to_dict() for a in replay(DEMO / s, lab()).alerts] for h, s in HOSTS.items()}


def _key(alerts) -> list[str]:
    dicts = [a if isinstance(a, dict) else a.to_dict() for a in alerts]
    return sorted(json.dumps(d, sort_keys=True) for d in dicts)


# ------------------------------------------------------------------------------ layout

def test_day_directory_gives_one_partition_per_host_in_read_order(day):
    parts = discover(day)
    assert [p.label for p in parts] == ["host-a", "host-b"]
    a = parts[0]
    assert a.host == "lab-host-1"       # osquery's hostIdentifier, not the directory name
    names = [Path(f).name for f, _ in a.files]
    assert names[:3] == ["osqueryd.results.log.2.gz", "osqueryd.results.log.1",
                         "osqueryd.results.log"]
    conn = [n for n in names if n.startswith("conn.")]
    assert len(conn) == 3 and conn == sorted(conn)
    assert a.bytes == sum(Path(f).stat().st_size for f, _ in a.files) > 0
    # a host directory and a recording are partitions of their own
    assert [p.label for p in discover(day / "host-b")] == ["host-b"]
    assert [p.name for p in discover(DEMO / "geo_lookup")] == ["geo_lookup"]


def test_osquery_rotation_is_numeric_oldest_first_and_plain_beats_gz(tmp_path):
    for name in ("osqueryd.results.log", "osqueryd.results.log.1", "osqueryd.results.log.2.gz",
                 "osqueryd.results.log.9.gz", "osqueryd.results.log.10.gz",
                 "osqueryd.results.log.1.gz", "osqueryd.snapshots.log", "other.log"):
        (tmp_path / name).write_text("")
    assert [p.name for p in osquery_result_files(tmp_path)] == [
        "osqueryd.results.log.10.gz", "osqueryd.results.log.9.gz", "osqueryd.results.log.2.gz",
        "osqueryd.results.log.1", "osqueryd.results.log"]


def test_zeekctl_archive_names_are_read_in_time_order(tmp_path):
    z = tmp_path / "h" / "zeek"
    z.mkdir(parents=True)
    for hour in (10, 9, 23, 0):
        (z / f"dns.{hour:02d}:00:00-{(hour + 1) % 24:02d}:00:00.log.gz").write_bytes(b"")
    (z / "dns.log").write_text("")
    (z / "weird.00:00:00-01:00:00.log.gz").write_bytes(b"")     # not a stream the engine reads
    names = [Path(f).name for f, _ in host_partition(tmp_path / "h").files]
    assert names == ["dns.00:00:00-01:00:00.log.gz", "dns.09:00:00-10:00:00.log.gz",
                     "dns.10:00:00-11:00:00.log.gz", "dns.23:00:00-00:00:00.log.gz", "dns.log"]


@pytest.mark.parametrize("make,expect", [
    ("empty", "no host directories"),
    ("hosts_without_logs", "no Zeek logs"),
    ("zst", "zstd"),
])
def test_layout_errors_are_one_line_exit_2(tmp_path, capsys, make, expect):
    d = tmp_path / "day"
    d.mkdir()
    if make == "hosts_without_logs":
        (d / "h1" / "zeek").mkdir(parents=True)
        (d / "h1" / "osquery").mkdir()
    elif make == "zst":
        (d / "h1" / "osquery").mkdir(parents=True)
        (d / "h1" / "osquery" / "osqueryd.results.log").write_text("")
        (d / "h1" / "osquery" / "osqueryd.results.log.2.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(LayoutError, match=expect):
        discover(d)
    out = tmp_path / "alerts.jsonl"
    rc = main(["replay", str(d), "--out", str(out), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and expect in err[0] and str(d) in err[0], err
    assert not out.exists() and not Path(f"{out}.state.db").exists()


# ------------------------------------------------------------------------------ results

def test_backfill_of_rotated_logs_equals_replay_of_the_recordings(day, reference, tmp_path):
    res = run_backfill(discover(day), lab(), state_db=tmp_path / "s.db")
    by_host = {p.label: p for p in res.partitions}
    for host in HOSTS:
        assert by_host[host].alerts, host
        assert _key(by_host[host].alerts) == _key(reference[host]), host
    assert _key(res.alerts) == _key(reference["host-a"] + reference["host-b"])
    # every line of every rotated file was read: 3 pieces of osquery, Zeek headers per piece
    assert res.lines > sum(1 for f, _ in discover(day)[0].files)
    assert res.bad_lines == 0


def test_cli_prints_progress_and_a_summary_with_lines_per_second(day, reference, tmp_path,
                                                                  capsys):
    out = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "lab.toml"
    cfg.write_text('environment = "lab"\n')
    assert main(["replay", str(day), "--config", str(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "backfill 2 partition(s)" in err            # the tqdm bar over the input's bytes
    m = re.search(r"backfill: 2 partition\(s\), ([\d,]+) lines read .* ([\d,]+) records, "
                  r"(\d+) bad lines, (\d+) alerts in ([\d.]+) s: ([\d,]+) lines/s", err)
    assert m, err
    lines, alerts, rate = int(m[1].replace(",", "")), int(m[4]), int(m[6].replace(",", ""))
    assert lines > 1000 and rate > 0
    written = [json.loads(ln) for ln in out.open()]
    assert alerts == len(written) == len(reference["host-a"]) + len(reference["host-b"])
    assert _key(written) == _key(reference["host-a"] + reference["host-b"])


def test_resume_after_a_kill_mid_way_gives_the_same_alerts(day, reference, tmp_path):
    from scheduler.alerting.sinks import JsonlSink, SinkSet

    parts = discover(day)
    db, out = tmp_path / "s.db", tmp_path / "alerts.jsonl"
    seen: list[int] = []

    def killed(n_chunk: int) -> None:
        seen.append(n_chunk)
        if len(seen) == 5:          # inside host-a (2,122 records: 8 chunks of 300)
            raise KeyboardInterrupt

    sinks = SinkSet([JsonlSink(out)])
    with pytest.raises(KeyboardInterrupt):
        run_backfill(parts, lab(), sinks=sinks, state_db=db, chunk=300, after_chunk=killed)
    sinks.close()
    first = [json.loads(ln) for ln in out.open()]
    assert 0 < len(first) < len(reference["host-a"]) + len(reference["host-b"])

    sinks = SinkSet([JsonlSink(out)])
    res = run_backfill(parts, lab(), sinks=sinks, state_db=db, chunk=300)
    sinks.close()
    assert res.partitions[0].resumed_from == 1500 and res.partitions[1].resumed_from == 0
    written = [json.loads(ln) for ln in out.open()]
    assert len({a["id"] for a in written}) == len(written)          # none twice
    assert _key(written) == _key(reference["host-a"] + reference["host-b"])
    assert _key(res.alerts) == _key(written)
    # run once more: both hosts were finished, neither is read again; the same result
    sinks = SinkSet([JsonlSink(out)])
    again = run_backfill(parts, lab(), sinks=sinks, state_db=db, chunk=300)
    sinks.close()
    assert [p.skipped for p in again.partitions] == [True, True] and again.lines == 0
    assert [a.to_dict() for a in again.alerts] == [a.to_dict() for a in res.alerts]
    assert out.read_text().count("\n") == len(written)


def test_dask_local_cluster_equals_the_single_process_run(day, tmp_path):
    from dask.distributed import Client, LocalCluster

    from scheduler.alerting.sinks import JsonlSink, SinkSet

    parts = discover(day)
    single = run_backfill(parts, lab(), state_db=tmp_path / "one.db")
    out = tmp_path / "dask.jsonl"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        sinks = SinkSet([JsonlSink(out)])
        # a first run that only got through host-a, then the whole day: host-a is not run again
        run_backfill(parts[:1], lab(), sinks=sinks, state_db=tmp_path / "d.db",
                     client=client)
        res = run_backfill(parts, lab(), sinks=sinks, state_db=tmp_path / "d.db",
                           client=client)
        sinks.close()
    assert [p.skipped for p in res.partitions] == [True, False]
    assert [a.to_dict() for a in res.alerts] == [a.to_dict() for a in single.alerts]
    written = [json.loads(ln) for ln in out.open()]
    assert _key(written) == _key(single.alerts) and len(written) == len(single.alerts)
    assert [(p.items, p.lines) for p in res.partitions] == \
        [(p.items, p.lines) for p in single.partitions]
    # the summary counts what this run read: host-b only
    assert res.lines == single.partitions[1].lines and res.records == single.partitions[1].items
    assert "(1 done in an earlier run)" in summary_line(res)


def test_cli_dask_local_workers_write_the_single_process_alerts(day, tmp_path, capsys):
    """--dask-local N: the train command's cluster helper, real worker processes (everything a
    worker gets and gives back crosses a pickle), the same JSONL as one process."""
    cfg = tmp_path / "lab.toml"
    cfg.write_text('environment = "lab"\n')
    one, two = tmp_path / "one.jsonl", tmp_path / "dask.jsonl"
    assert main(["replay", str(day), "-c", str(cfg), "--out", str(one), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["replay", str(day), "-c", str(cfg), "--out", str(two), "--no-progress",
                 "--dask-local", "2"]) == 0
    err = capsys.readouterr().err
    assert "host-a: host lab-host-1" in err and "host-b: host lab-host-1" in err
    assert re.search(r"backfill: 2 partition\(s\), .* lines/s", err), err
    assert _key(json.loads(ln) for ln in one.open()) == _key(json.loads(ln) for ln in two.open())


def test_read_watcher_counts_the_bytes_of_files_open_in_this_process(day):
    """The bar's byte progress while a host loads: files before the one open count whole, the
    open one up to its position; closed again, the answer never goes back."""
    from scheduler.backfill import ReadWatcher

    part = discover(day)[0]
    w = ReadWatcher(part.files)
    assert w.read_bytes() == 0
    sizes = [size for _, size in part.files]
    with open(part.files[2][0], "rb", buffering=0) as fh:     # the position is what was read
        fh.read(100)
        assert w.read_bytes() == sizes[0] + sizes[1] + 100
    assert w.read_bytes() == sizes[0] + sizes[1] + 100
    with open(part.files[4][0], "rb") as fh:
        fh.seek(0, 2)
        assert w.read_bytes() == sum(sizes[:5])


def test_two_inputs_of_one_name_are_refused_before_anything_is_written(tmp_path, capsys):
    """Two recordings named alike would share one replay checkpoint: the second would resume
    inside the first's data."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(DEMO / "churn", a)
    shutil.copytree(DEMO / "churn", b)
    out = tmp_path / "alerts.jsonl"
    rc = main(["replay", str(a), str(b), "--out", str(out), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "'churn'" in err[0] and str(b) in err[0], err
    assert not out.exists()


def test_kill_9_inside_a_host_then_run_again_gives_the_same_alerts(day, reference, tmp_path):
    """A real kill -9 of `stowaway replay DAY` (a subprocess) while it is inside a host, after the
    first hosts are done; run again, it skips the done hosts, resumes the one it was in, and the
    JSONL holds every alert once. benign_long (41k records, 21 chunks) is the host killed in."""
    import os
    import shutil
    import signal
    import sqlite3
    import subprocess
    import sys

    from soak_harness import wait_until

    big = tmp_path / "day"
    shutil.copytree(day, big, symlinks=True)
    write_rotated_host(DEMO / "benign_long", big / "host-c")
    cfg = tmp_path / "lab.toml"
    cfg.write_text('environment = "lab"\n')
    out = tmp_path / "alerts.jsonl"
    db = Path(f"{out}.state.db")
    argv = [sys.executable, "-m", "scheduler.cli", "replay", str(big), "-c", str(cfg),
            "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def host_c_position() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                row = conn.execute("SELECT data FROM pipeline_state WHERE name LIKE "
                                   "'replay:host-c#%'").fetchone()
        except sqlite3.Error:
            return 0
        return json.loads(row[0])["position"] if row else 0

    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed_at = wait_until(host_c_position, 300, "host-c's first checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 0 < killed_at < 41_018
    r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "host-a: host lab-host-1" in r.stderr and "(done in an earlier run)" in r.stderr
    assert re.search(r"host-c: .*\(resumed at record \d+\)", r.stderr), r.stderr
    written = [json.loads(ln) for ln in out.open()]
    assert len({a["id"] for a in written}) == len(written)
    assert _key(written) == \
        _key(reference["host-a"] + reference["host-b"] +
             [a.to_dict() for a in replay(DEMO / "benign_long", lab()).alerts])
