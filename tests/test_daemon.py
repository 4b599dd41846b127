"""The daemon: starts, processes appended lines (also across a Zeek log rotation), SIGTERM exits
cleanly; in-process: osquery + Zeek merged into one alert, restart without duplicates, metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scheduler.config import Config
from scheduler.daemon import Daemon
from scheduler.collect.osquery_results import batched_line, differential_line

REPO = Path(__file__).resolve().parents[1]

DNS_HEADER = "\n".join([
    "#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
    "#path\tdns", "#open\t2026-11-27-19-44-04",
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\trtt\tquery\tqclass"
    "\tqclass_name\tqtype\tqtype_name\trcode\trcode_name\tAA\tTC\tRD\tRA\tZ\tanswers\tTTLs\trejected",
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tinterval\tstring\tcount\tstring\tcount"
    "\tstring\tcount\tstring\tbool\tbool\tbool\tbool\tcount\tvector[string]\tvector[interval]\tbool",
]) + "\n"


def dns_line(ts: float, src: str, query: str, uid: str = "Cx1") -> str:
    return (f"{ts:.6f}\t{uid}\t{src}\t40000\t10.0.0.2\t53\tudp\t1\t0.0001\t{query}\t1\tC_INTERNET"
            f"\t1\tA\t0\tNOERROR\tT\tF\tT\tT\t0\t34.117.59.81\t300.000000\tF\n")


def write_config(tmp: Path, **detection) -> Path:
    det = {"merge_s": 1.0, "attribution_hold_s": 0.5, **detection}
    (tmp / "zeek").mkdir(exist_ok=True)
    text = f"""
host = "h1"
state_db = "{tmp}/state.db"
[sources]
osquery_mode = "results_log"
osquery_results_log = "{tmp}/osqueryd.results.log"
zeek_log_dir = "{tmp}/zeek"
address_map = "{tmp}/container_addrs.tsv"
[sinks]
jsonl = "{tmp}/alerts.jsonl"
[model]
dir = "{tmp}/models"
[daemon]
collect_interval_s = 0.3
[detection]
""" + "\n".join(f"{k} = {v}" for k, v in det.items()) + "\n"
    p = tmp / "stowaway.toml"
    p.write_text(text)
    return p


def read_alerts(tmp: Path) -> list[dict]:
    p = tmp / "alerts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def wait_for(cond, timeout: float = 90.0) -> bool:
    # Generous: these tests check what the daemon does, not how fast; a loaded CI machine (busy
    # loops on both cores) once took over 20 s to start it or to stop it on SIGTERM.
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_daemon_processes_appended_lines_and_stops_on_sigterm(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    dns = tmp_path / "zeek" / "dns.log"
    dns.write_text(DNS_HEADER + dns_line(1795805000.0, "172.17.0.3", "db.svc.internal", "Cb0"))
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "run", "--config", str(cfg)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert wait_for(lambda: (tmp_path / "state.db").exists())
        time.sleep(1.0)
        assert read_alerts(tmp_path) == []                   # benign name: nothing
        with open(dns, "a") as fh:                           # an appended geo lookup
            fh.write(dns_line(1795805066.5, "172.17.0.3", "ipinfo.io", "Cg1"))
        assert wait_for(lambda: len(read_alerts(tmp_path)) == 1)
        a = read_alerts(tmp_path)[0]
        assert a["rule"] == "location_discovery" and a["container"]["address"] == "172.17.0.3"
        assert a["container"]["name"] == "container unknown"   # no inventory for it
        # Zeek rotates: dns.log -> dns.<stamp>.log, a new dns.log starts with its own header.
        with open(dns, "a") as fh:
            fh.write(dns_line(1795805500.0, "172.17.0.9", "ifconfig.me", "Cg2"))
        dns.rename(tmp_path / "zeek" / "dns.2026-11-27-19-00-00.log")
        dns.write_text(DNS_HEADER + dns_line(1795805900.0, "172.17.0.10", "icanhazip.com", "Cg3"))
        assert wait_for(lambda: len(read_alerts(tmp_path)) == 3)
        assert {x["container"]["address"] for x in read_alerts(tmp_path)} == \
            {"172.17.0.3", "172.17.0.9", "172.17.0.10"}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A restart reads nothing twice: no new alert, no duplicate.
    proc2 = subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--config", str(cfg),
                            "--once"], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc2.returncode == 0, proc2.stderr
    ids = [x["id"] for x in read_alerts(tmp_path)]
    assert len(ids) == 3 == len(set(ids))


def _osquery_lines() -> list[str]:
    """The recorded A1 (web-2 wget ipinfo.io) as the pack's results: inventory + process event."""
    inv = {"id": "e011c40324138c0a6362bfc49c9e393dce6c69729934d213562998d29223894f",
           "name": "web-2", "image": "localhost/webapp:1.4", "image_id": "", "state": "running",
           "created": "1795805038", "started": "1795805038", "ip_addresses": "172.17.0.3",
           "networks": "stownet", "privileged": "0", "network_mode": "bridge", "pid_mode": "",
           "ipc_mode": "", "runtime_socket_mounted": "0", "host_root_mounted": "0", "labels": "{}",
           "pod_name": "", "pod_namespace": "", "pid": "4242", "runtime": "podman", "source": "api"}
    ev = {"time": "1795805066", "time_nano": "1795805066447000000", "pid": "5000", "ppid": "4242",
          "uid": "0", "name": "wget", "cmdline": "wget -qO- http://ipinfo.io/", "path": "/bin/wget",
          "container_id": inv["id"], "container_name": "web-2", "image": "localhost/webapp:1.4",
          "runtime": "podman", "location_discovery": "1", "indicator": "http ipinfo.io", "tool": "wget"}
    return [differential_line("container_inventory", "h1", 1795805040, "added", inv),
            batched_line("container_process_events", "h1", 1795805070, [ev])]


def test_in_process_merge_restart_and_metrics(tmp_path: Path) -> None:
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path))
    cfg.metrics.enabled, cfg.metrics.port = True, 0          # any free loopback port
    (tmp_path / "osqueryd.results.log").write_text("\n".join(_osquery_lines()) + "\n")
    (tmp_path / "zeek" / "dns.log").write_text(
        DNS_HEADER + dns_line(1795805066.512, "172.17.0.3", "ipinfo.io", "C1plje"))
    d = Daemon(cfg)
    try:
        d.collect_once()
        # Quiet sources: the data clock runs on from the last record; 75 s later the merge
        # window and the 60 s feature window (+ lag) have passed.
        d.score_once(now=time.time() + 75)
        alerts = read_alerts(tmp_path)
        assert len(alerts) == 1
        a = alerts[0]
        assert a["container"]["name"] == "web-2" and a["container"]["image"] == "localhost/webapp:1.4"
        assert set(a["event"]["evidence_sides"]) == {"host", "network"}
        # The address map for the Zeek package was written.
        amap = (tmp_path / "container_addrs.tsv").read_text()
        assert "172.17.0.3" in amap and "web-2" in amap
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics", timeout=5).read()
        assert b'stowaway_alerts_total{rule="location_discovery"} 1.0' in body
        # No baselines yet, but the scored-to-be windows are stored for the first training.
        import sqlite3
        con = sqlite3.connect(tmp_path / "models" / "windows.db")
        n, = con.execute("SELECT count(*) FROM windows WHERE container_id LIKE 'e011c403%'").fetchone()
        con.close()
        assert n >= 1
    finally:
        d.close()
    d2 = Daemon(cfg)                                          # restart on the same state
    try:
        d2.collect_once()
        d2.score_once(now=time.time() + 5)
    finally:
        d2.close()
    assert len(read_alerts(tmp_path)) == 1


def test_invalid_config_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[detection]\nchurn_n = "ten"\n')
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--config", str(p)],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode != 0
    assert "churn_n" in (r.stderr + r.stdout)


def test_example_config_is_the_defaults() -> None:
    """stowaway.example.toml documents every default; they must not drift apart."""
    from scheduler.config import Config, load_config

    assert load_config(REPO / "stowaway.example.toml").to_dict() == Config().to_dict()


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    from scheduler.config import ConfigError, load_config

    p = tmp_path / "typo.toml"
    p.write_text("[detection]\nchurn_N = 5\n")
    with pytest.raises(ConfigError, match="churn_N"):
        load_config(p)


def _proc_event(ts: float, pid: int) -> str:
    """A container_process_events line of web-2 (the container of _osquery_lines)."""
    ev = {"time": str(int(ts)), "time_nano": str(int(ts * 1e9)), "pid": str(pid), "ppid": "4242",
          "uid": "0", "name": "sleep", "cmdline": f"sleep {pid}", "path": "/bin/sleep",
          "container_id": "e011c40324138c0a6362bfc49c9e393dce6c69729934d213562998d29223894f",
          "container_name": "web-2", "image": "localhost/webapp:1.4", "runtime": "podman",
          "location_discovery": "0", "indicator": "", "tool": ""}
    return batched_line("container_process_events", "h1", int(ts) + 2, [ev])


def _stored_windows(tmp: Path) -> dict[float, float]:
    """window_start -> processes_started of web-2's windows in the daemon's window store."""
    import sqlite3
    con = sqlite3.connect(tmp / "models" / "windows.db")
    try:
        rows = con.execute("SELECT window_start, features FROM windows "
                           "WHERE container_id LIKE 'e011c403%'").fetchall()
    finally:
        con.close()
    return {ws: json.loads(f)["processes_started"] for ws, f in rows}


def test_window_open_at_restart_is_completed_not_skipped(tmp_path: Path) -> None:
    """A window open when the daemon is killed comes back with its records (EngineState) and
    is completed by the records after the restart: stored and scored once, whole."""
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path))
    created = 1795805038.0                  # web-2's windows: [created + 60k, created + 60(k+1))
    inventory = _osquery_lines()[0]
    (tmp_path / "osqueryd.results.log").write_text(
        inventory + "\n" + "".join(_proc_event(created + 2 + i, 100 + i) + "\n" for i in range(5)))
    (tmp_path / "zeek" / "dns.log").write_text(DNS_HEADER)
    d1 = Daemon(cfg)
    d1.collect_once()                       # window 0 open with 5 processes; then "kill -9"
    d1.store.close()
    d2 = Daemon(cfg)
    try:
        with open(tmp_path / "osqueryd.results.log", "a") as fh:
            fh.write(_proc_event(created + 30, 200) + "\n" + _proc_event(created + 70, 201) + "\n")
        d2.collect_once()
        d2.score_once(now=time.time() + 200)    # quiet sources: both windows close
        late = d2.pipeline.stats.late_records
    finally:
        d2.close()
    assert _stored_windows(tmp_path) == {created: 6.0, created + 60: 1.0}
    assert late == 0


def test_late_records_are_counted_not_scored() -> None:
    from model.records import ProcessRecord
    from scheduler.pipeline import Pipeline

    def proc(ts: float, pid: int) -> ProcessRecord:
        return ProcessRecord(ts=ts, container_id="c1", image="img:1", pid=pid, name="sleep",
                             cmdline=f"sleep {pid}", host="h")

    p = Pipeline(Config(), host="h")
    p.collect_windows = True
    p._origins["c1"] = 0.0
    for i in range(5):
        p.feed_process(proc(10.0 + i, i))        # window 0
    p.feed_process(proc(70.0, 100))               # window 1 opens; window 0 closes
    p.flush()
    p.feed_process(proc(20.0, 200))               # late for window 0
    assert p.stats.late_records == 1
    p.flush(force=True)
    assert [fw.row_dict(0)["processes_started"] for fw in p.collected] == [5, 1]


def test_restart_keeps_zeek_records_tied_to_their_containers(tmp_path: Path) -> None:
    """After a restart the join reads the restored inventory: a lookup logged by Zeek after the
    restart still goes to its container and merges with the host side (issue 9: 40 of 81
    alerts said "container unknown" across restarts)."""
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path))
    inventory, process = _osquery_lines()
    (tmp_path / "osqueryd.results.log").write_text(inventory + "\n")
    (tmp_path / "zeek" / "dns.log").write_text(DNS_HEADER)
    d1 = Daemon(cfg)
    d1.collect_once()                       # web-2 known, state committed; then "kill -9"
    d1.store.close()
    d2 = Daemon(cfg)
    try:
        with open(tmp_path / "zeek" / "dns.log", "a") as fh:
            fh.write(dns_line(1795805066.512, "172.17.0.3", "ipinfo.io", "C1plje"))
        with open(tmp_path / "osqueryd.results.log", "a") as fh:
            fh.write(process + "\n")
        d2.collect_once()
        time.sleep(0.6)                     # past attribution_hold_s: nothing may be held
        d2.collect_once()
        d2.score_once(now=time.time() + 75)
        alerts = read_alerts(tmp_path)
        assert len(alerts) == 1
        assert alerts[0]["container"]["name"] == "web-2"
        assert set(alerts[0]["event"]["evidence_sides"]) == {"host", "network"}
    finally:
        d2.close()


class _Hook:
    """A webhook receiver on 127.0.0.1 that can hang (tests/soak_harness.py)."""

    def __new__(cls):
        from soak_harness import WebhookReceiver
        return WebhookReceiver()


def test_hung_webhook_never_stalls_collection_and_spool_is_flushed_at_start(
        tmp_path: Path) -> None:
    import threading

    from fake_hosts import wait_until
    from scheduler.config import load_config

    rx = _Hook()
    try:
        cfg = load_config(write_config(tmp_path))
        cfg.sinks.webhook.url = rx.url
        cfg.sinks.webhook.spool_dir = str(tmp_path / "spool")
        cfg.sinks.webhook.timeout_s = 0.5
        cfg.sinks.webhook.backoff_s = 0.1
        cfg.sinks.webhook.max_attempts = 3
        rx.set_mode("hang")
        (tmp_path / "osqueryd.results.log").write_text("\n".join(_osquery_lines()) + "\n")
        (tmp_path / "zeek" / "dns.log").write_text(
            DNS_HEADER + dns_line(1795805066.512, "172.17.0.3", "ipinfo.io", "C1plje"))
        d = Daemon(cfg)
        stop = threading.Event()

        def deliver_job() -> None:          # what APScheduler's deliver job does
            while not stop.is_set():
                getattr(d, "deliver_once", lambda: None)()
                time.sleep(0.1)
        worker = threading.Thread(target=deliver_job, daemon=True)
        worker.start()
        try:
            d.collect_once()
            d.score_once(now=time.time() + 75)
            assert len(read_alerts(tmp_path)) == 1           # JSONL written at once
            aid = read_alerts(tmp_path)[0]["id"]
            wait_until(lambda: rx.hung > 0, 10, what="a POST hanging at the receiver")
            for i in range(5):                             # collection goes on meanwhile
                t0 = time.monotonic()
                with open(tmp_path / "zeek" / "dns.log", "a") as fh:
                    fh.write(dns_line(1795805070.0 + i, "172.17.0.3", "db.svc.internal", f"Q{i}"))
                d.collect_once()
                assert time.monotonic() - t0 < 0.4
                assert d.lock.acquire(timeout=0.2)
                d.lock.release()
            assert rx.ids() == {}
            stop.set()
            worker.join(timeout=10)
        finally:
            stop.set()
            d.sinks.close()
            d.store.close()
        # The receiver recovers while the daemon is down: the next start flushes the spool.
        rx.set_mode("ok")
        d2 = Daemon(cfg)
        try:
            t0 = time.monotonic()
            getattr(d2, "deliver_once", lambda: None)()   # the job's first run, at start
            assert rx.ids() == {aid: 1}
            assert time.monotonic() - t0 < 2.0
        finally:
            d2.close()
    finally:
        rx.stop()


def _count_windows(tmp: Path) -> int:
    import sqlite3
    con = sqlite3.connect(tmp / "models" / "windows.db")
    try:
        return con.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
    finally:
        con.close()


def _scored_by(tmp: Path) -> list[tuple[float, str, str]]:
    import sqlite3
    con = sqlite3.connect(tmp / "models" / "windows.db")
    try:
        return con.execute("SELECT window_start, container_id, scored_by FROM windows "
                           "ORDER BY window_start, container_id").fetchall()
    finally:
        con.close()


def test_scheduled_retrain_scores_next_windows_and_prune_drops_old_ones(tmp_path: Path) -> None:
    """Windows are stored from the scheduler's worker threads (the store's one owning thread),
    the retrain job (compressed clock: daemon.retrain_interval_s) trains new versions from
    them, and later windows are scored by the newest; pruning removes windows past retention."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from fake_hosts import wait_until
    from model.store import ModelStore
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path))
    cfg.detection.window_s = 10.0
    cfg.daemon.lag_s = 2.0
    cfg.daemon.retrain_interval_s = 0.5
    cfg.model.min_windows = 5
    (tmp_path / "osqueryd.results.log").write_text(_osquery_lines()[0] + "\n")
    (tmp_path / "zeek" / "dns.log").write_text(DNS_HEADER)
    t0 = 1795805040.0
    d = Daemon(cfg)
    sched = BackgroundScheduler(timezone="UTC")
    sched.add_job(d.collect_job, "interval", seconds=0.1)
    sched.add_job(d.retrain_once, "interval", seconds=cfg.daemon.retrain_interval_s)
    sched.start()
    ms = ModelStore(cfg.model.dir)
    try:
        for chunk in range(12):              # 2 minutes of data per chunk, 12 windows each
            with open(tmp_path / "zeek" / "dns.log", "a") as fh:
                fh.write("".join(dns_line(t0 + chunk * 120 + i, "172.17.0.3",
                                          f"n{i % (3 + chunk)}.svc.internal", f"C{chunk}x{i}")
                                 for i in range(120)))
            n = _count_windows(tmp_path)
            before = ms.current_version(cfg.environment) if chunk else None
            wait_until(lambda: _count_windows(tmp_path) > n, 20, what="windows of the new chunk")
            if chunk >= 3:
                wait_until(lambda: ms.current_version(cfg.environment) != before, 20,
                           what="a retrain on the new windows")
        versions = ms.versions(cfg.environment)
        assert len(versions) >= 3
        rows = _scored_by(tmp_path)
        order = [v for _, _, v in rows if v]
        assert len(set(order)) >= 3          # windows scored by several retrained versions,
        assert order == sorted(order)        # each scoring the windows after it
    finally:
        sched.shutdown(wait=True)
    try:
        total = _count_windows(tmp_path)
        mid = rows[len(rows) // 2][0]
        d.prune_once(now=mid + cfg.retention.days * 86400)
        left = _count_windows(tmp_path)
        assert 0 < left < total
        d.prune_once(now=time.time() + cfg.retention.days * 86400)
        assert _count_windows(tmp_path) == 0
    finally:
        d.close()


def test_backlog_is_read_in_data_time_not_clock_time(tmp_path: Path) -> None:
    """At start-up on old logs, the score job must not close windows the backlog still feeds."""
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path))
    (tmp_path / "osqueryd.results.log").write_text(_osquery_lines()[0] + "\n")   # web-2 inventory
    t0 = 1795805040.0
    lines = [dns_line(t0 + 3 * i, "172.17.0.3", "db.svc.internal", f"C{i}") for i in range(200)]
    (tmp_path / "zeek" / "dns.log").write_text(DNS_HEADER + "".join(lines))   # 10 min of data
    d = Daemon(cfg)
    try:
        d.pipeline.collect_windows = True
        for t in d.tailers:
            t.max_lines = 40                         # force several batches
        d.collect_once()
        assert d.catching_up
        d.score_once()                               # the clock is far ahead of the data
        while d.catching_up:
            d.collect_once()
            d.score_once()
        d.score_once(now=time.time() + 100)          # quiet sources: the last window closes
        assert d.pipeline.stats.late_records == 0
        built = sum(len(fw) for fw in d.pipeline.collected)
        assert built == 10                           # 600 s of data = ten 60 s windows, each once
        # The stored windows are the daily retrain's input: it trains and swaps baselines in.
        assert d.pipeline.baselines is None
        assert d.retrain_once()
        assert d.pipeline.baselines is not None
    finally:
        d.close()


def test_zeek_before_osquery_is_held_then_attributed(tmp_path: Path) -> None:
    """Zeek logs a new container's lookup before osquery reports the container: the record waits
    (attribution_hold_s) and alerts on the right container, not as "container unknown"."""
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path, attribution_hold_s=30.0))
    (tmp_path / "osqueryd.results.log").write_text("")
    (tmp_path / "zeek" / "dns.log").write_text(
        DNS_HEADER + dns_line(1795805066.512, "172.17.0.3", "ipinfo.io", "C1plje"))
    d = Daemon(cfg)
    try:
        d.collect_once()
        d.score_once(now=time.time() + 5 + cfg.daemon.lag_s)   # merge_s + lag_s on
        assert read_alerts(tmp_path) == []          # held, not "container unknown"
        with open(tmp_path / "osqueryd.results.log", "a") as fh:
            fh.write("\n".join(_osquery_lines()) + "\n")
        d.collect_once()
        d.score_once(now=time.time() + 5 + cfg.daemon.lag_s)   # merge_s + lag_s on
        alerts = read_alerts(tmp_path)
        assert len(alerts) == 1
        assert alerts[0]["container"]["name"] == "web-2"
        assert set(alerts[0]["event"]["evidence_sides"]) == {"host", "network"}
    finally:
        d.close()


def test_held_record_is_released_as_unknown_after_the_hold(tmp_path: Path) -> None:
    from scheduler.config import load_config

    cfg = load_config(write_config(tmp_path, attribution_hold_s=0.3))
    (tmp_path / "osqueryd.results.log").write_text("")
    (tmp_path / "zeek" / "dns.log").write_text(
        DNS_HEADER + dns_line(1795805066.5, "172.17.0.77", "icanhazip.com", "Cu"))
    d = Daemon(cfg)
    try:
        d.collect_once()
        assert read_alerts(tmp_path) == []
        time.sleep(0.4)
        d.collect_once()
        d.score_once(now=time.time() + 5 + cfg.daemon.lag_s)   # merge_s + lag_s on
        alerts = read_alerts(tmp_path)
        assert len(alerts) == 1 and alerts[0]["container"]["name"] == "container unknown"
    finally:
        d.close()
