"""`stowaway emulate --uplink`: the T1614 detection checked from a sensor on the host's uplink,
where the host's NAT hides every container behind the host's address.

What runs, as a user deploys it (scheduler.emulate.uplink_lab builds the topology; nothing leaves
the machine):
1. the uplink lab: a podman network masqueraded out of a veth into a network namespace that
   plays the uplink and the stand-in services;
2. `zeek -i <uplink veth>` with the Stowaway package: the sensor on the tap;
3. the osquery extension's code in this process (runtime event listeners and the conntrack
   capture, as under osqueryd), reading container_nat_flows;
4. a long-lived container runs `wget -qO- http://ipinfo.io/` and `nslookup ipinfo.io`, and a
   one-shot `--rm` container runs `wget -qO- http://ifconfig.me/`;
5. Zeek is stopped (its logs flushed), the extension's rows are written as an osqueryd results log
   next to the uplink's Zeek logs (a recording), and the scheduler replays it: the same join code
   as the daemon (scheduler.detect.join + nat_join).

The process-event connector is left off on purpose: every T1614 alert must then come from the
uplink's Zeek logs alone, tied to its container through the NAT join.

Checks (pass/fail rows like the other scenarios): the stand-in saw only the host's address (the
NAT happened), the extension reported each container's NAT flow with its id, the uplink's logs
hold each lookup from the host's address only, and the scheduler gave a T1614 alert with network
evidence joined through a NAT flow on each container, the one-shot included.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scheduler.emulate import uplink_lab

log = logging.getLogger(__name__)

IMAGE = "localhost/stowaway-busybox:latest"
SCENARIO = "geo-lookup-uplink"
PASS, FAIL = "pass", "FAIL"
HOST_NAME = "uplink-host"


@dataclass
class Check:
    scenario: str
    layer: str
    what: str
    result: str
    detail: str = ""


@dataclass
class UplinkRun:
    """What one run produced (the test and the CLI read it)."""

    checks: list[Check] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    containers: dict[str, str] = field(default_factory=dict)     # role -> container id
    names: dict[str, str] = field(default_factory=dict)          # role -> container name
    addresses: dict[str, str] = field(default_factory=dict)      # role -> container address
    nat_rows: list[dict[str, str]] = field(default_factory=list)
    recording: Path | None = None
    zeek_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.result == PASS for c in self.checks)


def skip_reason() -> str | None:
    why = uplink_lab.skip_reason()
    if why:
        return why
    if shutil.which("zeek") is None:
        return "zeek is not on PATH"
    return None


# -- pieces (I/O) ---------------------------------------------------------------------------------
def start_zeek(iface: str, out_dir: Path, timeout: float = 30.0) -> subprocess.Popen:
    """`zeek -C -i iface` with the Stowaway package, logs in out_dir; returns once it listens."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scripts = Path(__file__).resolve().parents[2] / "zeek_scripts"
    env = dict(os.environ, ZEEK_DNS_FAKE="1")
    err = open(out_dir / "zeek.stderr", "w")
    proc = subprocess.Popen(["zeek", "-C", "-i", iface, str(scripts)], cwd=out_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (out_dir / "zeek.stderr").read_text(errors="replace")
        if "listening on" in text:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"zeek exited ({proc.returncode}): {text[-400:]}")
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"zeek did not start listening on {iface} within {timeout:g}s")


def stop_process(proc: subprocess.Popen, wait: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _podman(*args: str, check: bool = True) -> str:
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {p.stderr.strip()[:300]}")
    return p.stdout.strip()


def _wait(cond: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


def results_line(table: str, row: dict[str, str], host: str, unix_time: int) -> str:
    """One osqueryd filesystem-logger result line for a pack query's added row."""
    return json.dumps({"name": f"pack_stowaway_stowaway_{table}", "hostIdentifier": host,
                       "unixTime": unix_time, "action": "added", "columns": row},
                      sort_keys=True)


# -- checks (pure) ----------------------------------------------------------------------------------
def check_nat_rows(rows: list[dict[str, str]], containers: dict[str, str],
                   services: dict[str, str]) -> list[Check]:
    out = []
    for role, name in (("web", "ipinfo.io"), ("oneshot", "ifconfig.me")):
        cid = containers.get(role, "")
        hits = [r for r in rows if r.get("remote_address") == services.get(name)
                and r.get("remote_port") == "80" and r.get("event") == "new"]
        good = [r for r in hits if r.get("container_id") == cid
                and r.get("nat_address") == uplink_lab.HOST_ADDR]
        what = f"container_nat_flows: {role} -> {name}:80 behind NAT"
        if good:
            r = good[0]
            out.append(Check(SCENARIO, "extension", what, PASS,
                             f"{r['container_address']}:{r['container_port']} -> "
                             f"{r['nat_address']}:{r['nat_port']} in {cid[:12]}"))
        else:
            out.append(Check(SCENARIO, "extension", what, FAIL,
                             f"{len(hits)} row(s) to {name}, none with container {cid[:12]}"))
    return out


def check_uplink_logs(zeek: dict[str, list[dict[str, Any]]], addresses: dict[str, str]) -> list[Check]:
    out = []
    http = zeek.get("http", [])
    for name in ("ipinfo.io", "ifconfig.me"):
        hits = [r for r in http if str(r.get("host", "")).split(":")[0] == name]
        srcs = {r.get("id.orig_h") for r in hits}
        ok = hits and srcs == {uplink_lab.HOST_ADDR}
        out.append(Check(SCENARIO, "zeek", f"uplink http.log: {name} from the host's address",
                         PASS if ok else FAIL,
                         f"{len(hits)} record(s) from {', '.join(sorted(map(str, srcs))) or '-'}"))
    inner = set(addresses.values())
    leaked = [r for recs in zeek.values() for r in recs if r.get("id.orig_h") in inner]
    out.append(Check(SCENARIO, "zeek", "no container address on the uplink (NAT in place)",
                     PASS if not leaked else FAIL, f"{len(leaked)} record(s) with one"))
    return out


def check_alerts(alerts: list[dict[str, Any]], containers: dict[str, str]) -> list[Check]:
    out = []
    for role in ("web", "oneshot"):
        cid = containers.get(role, "")
        mine = [a for a in alerts if a.get("rule") == "location_discovery"
                and (a.get("container") or {}).get("id") == cid]
        nat_ev = [e for a in mine for e in a.get("evidence", [])
                  if e.get("side") == "network" and e.get("join") == "nat_flow"]
        what = f"T1614 alert on {'--rm ' if role == 'oneshot' else ''}{role} from the uplink"
        if nat_ev:
            out.append(Check(SCENARIO, "scheduler", what, PASS,
                             f"{len(mine)} alert(s); {nat_ev[0].get('summary', '')}"))
        else:
            out.append(Check(SCENARIO, "scheduler", what, FAIL,
                             f"{len(mine)} alert(s) on {cid[:12]}, none with NAT-joined network "
                             "evidence"))
    return out


# -- the run -------------------------------------------------------------------------------------
def run(workdir: Path | None = None, image: str = IMAGE) -> UplinkRun:
    """Build the lab, run the containers, collect, replay, check; always cleans up."""
    from scheduler.emulate import emulab
    from scheduler.emulate.emuview import InProcessTables

    res = UplinkRun()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="stwup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    names = {"web": f"stwup-{tag}-web", "oneshot": f"stwup-{tag}-oneshot"}
    res.names = dict(names)
    cleanup = emulab.Cleanup()
    zeek = None
    tables = None
    try:
        url = emulab.start_podman_service(cleanup, workdir)
        lab = uplink_lab.start(tag, workdir / "lab")
        cleanup.push("uplink lab", lab.close)
        res.zeek_dir = workdir / "zeek-live"
        zeek = start_zeek(lab.host_if, res.zeek_dir)
        cleanup.push("zeek", lambda: stop_process(zeek))
        saved = os.environ.get("STOWAWAY_NO_PROC_CONNECTOR")
        os.environ["STOWAWAY_NO_PROC_CONNECTOR"] = "1"   # network evidence only (see docstring)
        try:
            tables = InProcessTables("podman", url)
        finally:
            if saved is None:
                os.environ.pop("STOWAWAY_NO_PROC_CONNECTOR", None)
            else:
                os.environ["STOWAWAY_NO_PROC_CONNECTOR"] = saved
        cleanup.push("extension", tables.close)
        cap = next((w for w in tables.workers
                    if type(w).__name__ in ("ConntrackReader", "ConntrackCapture")), None)
        if cap is None or not cap.ready.wait(10) or cap.mode != "events":
            raise RuntimeError("conntrack capture not running: "
                               f"{getattr(cap, 'mode', 'absent')} {getattr(cap, 'reason', '')}")
        t0 = time.time()
        for n in names.values():
            cleanup.push(f"container {n}", lambda n=n: _podman("rm", "-f", "-t", "0", n,
                                                              check=False))
        res.containers["web"] = _podman(
            "run", "-d", "--name", names["web"], *lab.run_args(), image, "sh", "-c",
            f"wget -qO- http://ipinfo.io/ >/dev/null; nslookup ipinfo.io {lab.resolver} "
            ">/dev/null; sleep 600")
        res.addresses["web"] = _podman("inspect", "-f", "{{range .NetworkSettings.Networks}}"
                                       "{{.IPAddress}}{{end}}", res.containers["web"])
        cidfile = workdir / "oneshot.cid"
        _podman("run", "--rm", "--name", names["oneshot"], "--cidfile", str(cidfile),
                *lab.run_args(), image, "wget", "-qO-", "http://ifconfig.me/")
        res.containers["oneshot"] = cidfile.read_text().strip()
        ids = set(res.containers.values())

        def nat_rows() -> list[dict[str, str]]:
            return [r for r in tables.rows("container_nat_flows") if r["container_id"] in ids]
        _wait(lambda: {r["container_id"] for r in nat_rows()} >= ids, 15)
        # the web container's DNS query comes a moment after its wget
        _wait(lambda: any(r["remote_port"] == "53" for r in nat_rows()), 10)
        res.nat_rows = nat_rows()
        for r in res.nat_rows:
            if r["container_id"] == res.containers["oneshot"]:
                res.addresses.setdefault("oneshot", r["container_address"])
        time.sleep(1.0)          # the last packets reach Zeek
        stop_process(zeek)       # flushes the logs
        res.checks += check_standin(lab)
        res.checks += check_nat_rows(res.nat_rows, res.containers, lab.services)
        res.recording = write_recording(workdir / "recording", tables, ids, res.zeek_dir, t0)
        zeek_recs = load_zeek(res.zeek_dir)
        res.checks += check_uplink_logs(zeek_recs, res.addresses)
        res.alerts = replay_alerts(res.recording)
        res.checks += check_alerts(res.alerts, res.containers)
    finally:
        cleanup.run()
    return res


def check_standin(lab: uplink_lab.UplinkLab) -> list[Check]:
    evs = [e for e in lab.standin_events() if e.get("kind") in ("http", "dns")]
    clients = {e.get("client") for e in evs}
    ok = bool(evs) and clients == {uplink_lab.HOST_ADDR}
    return [Check(SCENARIO, "emulation", "stand-in reached only through the host's NAT",
                  PASS if ok else FAIL,
                  f"{len(evs)} request(s) from {', '.join(sorted(map(str, clients))) or '-'}")]


def write_recording(path: Path, tables: Any, ids: set[str], zeek_dir: Path, t0: float) -> Path:
    """The extension's rows (this run's containers) and the uplink's Zeek logs as a recording."""
    from scheduler.collect.recording import RecordingMeta, RecordingWriter

    meta = RecordingMeta(name=SCENARIO, host=HOST_NAME, environment="default",
                         source="stowaway emulate --uplink", time_range=[t0, time.time()])
    with RecordingWriter(path, meta, compress=False) as w:
        now = int(time.time())
        for table, key in (("container_inventory", "id"), ("container_events", "container_id"),
                           ("container_nat_flows", "container_id")):
            for row in tables.rows(table):
                if row.get(key) in ids:
                    w.write_line(results_line(table, row, HOST_NAME, now))
        for log_file in sorted(zeek_dir.glob("*.log")):
            w.add_zeek_log(log_file, compress=False)
    return path


def load_zeek(zeek_dir: Path) -> dict[str, list[dict[str, Any]]]:
    from scheduler.collect import zeeklog

    out: dict[str, list[dict[str, Any]]] = {}
    for stream in ("conn", "dns", "http", "ssl"):
        out[stream] = [r for p in zeeklog.find_logs(zeek_dir, stream)
                       for r in zeeklog.iter_zeek_log(p)]
    return out


def replay_alerts(recording: Path) -> list[dict[str, Any]]:
    from scheduler.config import Config
    from scheduler.replay import replay

    result = replay(recording, Config())
    return [a.to_dict() for a in result.alerts]


def main(out: Any = None, image: str | None = None, report: str | None = None,
         keep_workdir: bool = False) -> int:
    """`stowaway emulate --uplink`: run, print the pass/fail table; 0 all pass, 1 a check failed,
    2 the lab could not be set up."""
    import sys

    from scheduler.emulate.runner import print_table

    out = out or sys.stdout
    why = skip_reason()
    if why:
        print(f"stowaway emulate --uplink: cannot run here: {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="stwup-"))
    try:
        try:
            res = run(workdir, image or IMAGE)
        except (RuntimeError, uplink_lab.LabError, OSError) as exc:
            print(f"stowaway emulate --uplink: set-up failed: {exc}", file=sys.stderr)
            return 2
        print_table(res.checks, out)
        if report:
            Path(report).write_text(json.dumps({"ok": res.ok, "checks": [c.__dict__ for c in
                                                                          res.checks]},
                                               indent=1) + "\n")
        return 0 if res.ok else 1
    finally:
        if keep_workdir:
            print(f"work directory kept: {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
