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


def wait_for(cond, timeout: float = 20.0) -> bool:
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
        out, _ = proc.communicate(timeout=20)
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


def test_late_records_and_windows_open_at_restart_are_not_scored() -> None:
    """A window is scored once: records arriving after it closed are counted as late, and a
    window the daemon held when it stopped is skipped after restart (it would be incomplete)."""
    from model.records import ProcessRecord
    from scheduler.pipeline import Pipeline

    def proc(ts: float, pid: int) -> ProcessRecord:
        return ProcessRecord(ts=ts, container_id="c1", image="img:1", pid=pid, name="sleep",
                             cmdline=f"sleep {pid}", host="h")

    cfg = Config()
    p = Pipeline(cfg, host="h")
    p.collect_windows = True
    p._origins["c1"] = 0.0
    for i in range(5):
        p.feed_process(proc(10.0 + i, i))        # window 0
    p.feed_process(proc(70.0, 100))               # window 1 opens; window 0 closes
    p.flush()
    p.feed_process(proc(20.0, 200))               # late for window 0
    assert p.stats.late_records == 1
    state = json.loads(json.dumps(p.dump_state()))
    q = Pipeline(cfg, host="h")                   # "restart" as the daemon does it
    q.collect_windows = True
    q.load_state(state)
    q._skip, q._rebuild = set(q._rebuild), set()
    q.feed_process(proc(75.0, 101))               # window 1: held when stopped -> skipped
    q.feed_process(proc(130.0, 102))              # window 2: scored normally
    q.flush(force=True)
    built = [(cid, float(ws)) for fw in q.collected for cid, ws in zip(fw.container_id, fw.window_start)]
    assert built == [("c1", 120.0)]
    assert sum(len(fw) for fw in p.collected) == 1    # window 0 once, with its 5 processes
    assert p.collected[0].row_dict(0)["processes_started"] == 5


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
        d.score_once(now=time.time() + 5)
        assert read_alerts(tmp_path) == []          # held, not "container unknown"
        with open(tmp_path / "osqueryd.results.log", "a") as fh:
            fh.write("\n".join(_osquery_lines()) + "\n")
        d.collect_once()
        d.score_once(now=time.time() + 5)
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
        d.score_once(now=time.time() + 5)
        alerts = read_alerts(tmp_path)
        assert len(alerts) == 1 and alerts[0]["container"]["name"] == "container unknown"
    finally:
        d.close()
