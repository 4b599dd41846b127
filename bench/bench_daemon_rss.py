#!/usr/bin/env python3
"""Daemon RSS with 1,000 containers in the inventory.

A real `stowaway run` daemon (subprocess) follows an osqueryd results log and a Zeek dns.log. The
results log gets a container_inventory snapshot of 1,000 running containers (10 images, one address
each) with their create/start events, and every container then makes DNS lookups and runs
processes for a few minutes of data time (so each has an open feature window, and windows close
and are built). RSS (VmRSS, /proc) is read once the daemon has consumed everything, and compared
with the same daemon idle (no containers).

By default the model dir holds trained baselines for the 30 images (daemon_harness.train_models),
as a deployed daemon's does, so the windows are scored; `--no-models` starts it without any
(scoring off until the first retrain), the set-up of the figures before 2026-12-03.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon_harness import running_daemon, train_models, write_config  # noqa: E402  (bench/)
from scheduler.collect.osquery_results import batched_line, snapshot_line  # noqa: E402

N = 1000
DNS_HEADER = [
    "#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
    "#path\tdns", "#open\t2026-11-27-19-44-04",
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\trtt\tquery\tqclass"
    "\tqclass_name\tqtype\tqtype_name\trcode\trcode_name\tAA\tTC\tRD\tRA\tZ\tanswers\tTTLs\trejected",
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tinterval\tstring\tcount\tstring\tcount"
    "\tstring\tcount\tstring\tbool\tbool\tbool\tbool\tcount\tvector[string]\tvector[interval]\tbool",
]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def image_of(i: int) -> str:
    """The image of container i: 30 image keys (10 repositories x 3 tags)."""
    return f"registry.local/app{i % 10}:1.{i % 3}"


def write_inputs(t: Path, n: int, t0: float) -> int:
    containers = []
    for i in range(n):
        cid = f"{i:08x}" + "ab" * 28
        containers.append({
            "id": cid, "name": f"svc-{i}", "image": image_of(i),
            "image_id": "", "state": "running", "created": str(int(t0)), "started": str(int(t0)),
            "ip_addresses": f"172.17.{i // 250}.{2 + i % 250}", "networks": "bridge",
            "privileged": "0", "network_mode": "bridge", "pid_mode": "", "ipc_mode": "",
            "runtime_socket_mounted": "0", "host_root_mounted": "0", "labels": "{}",
            "pod_name": "", "pod_namespace": "", "pid": str(10000 + i), "runtime": "docker",
            "source": "api"})
    events = [{"time": str(int(t0)), "time_nano": str(int(t0 * 1e9) + i), "action": a,
               "container_id": c["id"], "name": c["name"], "image": c["image"], "exit_code": "",
               "runtime": "docker"} for i, c in enumerate(containers) for a in ("create", "start")]
    lines = [snapshot_line("container_inventory", "bench-host", t0 + 1, containers),
             batched_line("container_events", "bench-host", t0 + 1, events)]
    dns = list(DNS_HEADER)
    n_dns = 0
    for minute in range(4):                      # 4 minutes of data time, 2 lookups + 1 process
        procs = []
        for i, c in enumerate(containers):
            ts = t0 + 5 + minute * 60 + (i % 50)
            ip = c["ip_addresses"]
            for q in ("db.svc.internal", "cache.svc.internal"):
                dns.append(f"{ts:.6f}\tC{i}m{minute}{q[0]}\t{ip}\t40000\t10.0.0.2\t53\tudp\t1\t0.0001"
                           f"\t{q}\t1\tC_INTERNET\t1\tA\t0\tNOERROR\tT\tF\tT\tT\t0\t172.17.9.9\t300.0\tF")
                n_dns += 1
            procs.append({"time": str(int(ts)), "time_nano": str(int(ts * 1e9)), "pid": str(20000 + i),
                          "ppid": "1", "uid": "0", "name": "wget",
                          "cmdline": f"wget -qO- http://172.17.0.2:8080/health?m={minute}",
                          "path": "/bin/wget", "container_id": c["id"], "container_name": c["name"],
                          "image": c["image"], "runtime": "docker", "location_discovery": "0",
                          "indicator": "", "tool": ""})
        lines.append(batched_line("container_process_events", "bench-host", t0 + 60 * (minute + 1),
                                  procs))
    (t / "osqueryd.results.log").write_text("\n".join(lines) + "\n")
    (t / "zeek" / "dns.log").write_text("\n".join(dns) + "\n")
    return n_dns


def run(n: int, models: bool = True) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "zeek").mkdir()
        if models:
            train_models(t, [image_of(i) for i in range(N)])
        t0 = time.time() - 600
        if n:
            write_inputs(t, n, t0)
        else:
            (t / "osqueryd.results.log").write_text("")
            (t / "zeek" / "dns.log").write_text("\n".join(DNS_HEADER) + "\n")
        cfg = write_config(t, "bench-host", address_map=f"{t}/container_addrs.tsv",
                           collect_interval_s=0.5)
        with running_daemon(cfg) as proc:
            start = time.monotonic()
            done = False
            while time.monotonic() - start < 120:
                time.sleep(0.5)
                db = t / "state.db"
                if not db.exists():
                    continue
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    n_cont = con.execute("SELECT count(*) FROM containers").fetchone()[0]
                    pending = con.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    continue
                if n_cont >= n and pending >= 1:
                    done = True
                    break
            time.sleep(3.0)                      # a few more cycles (score job, windows built)
            rss = rss_kb(proc.pid)
            amap = (t / "container_addrs.tsv")
            rows = len(amap.read_text().splitlines()) - 1 if amap.exists() else 0
            if n and (not done or rows < n):
                raise RuntimeError(f"daemon did not take in {n} containers (map rows {rows})")
        return rss, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-models", action="store_true",
                    help="start the daemon with an empty model dir (no baselines, no scoring)")
    args = ap.parse_args()
    models = not args.no_models
    idle, _ = run(0, models)
    full, secs = run(N, models)
    print(f"model dir: {'trained baselines for 30 images' if models else 'empty'}")
    print(f"daemon RSS idle (no containers):            {idle / 1024:7.1f} MiB")
    print(f"daemon RSS with {N:,} containers in inventory: {full / 1024:7.1f} MiB "
          f"(+{(full - idle) / 1024:.1f} MiB, {(full - idle) / N:.1f} KiB per container; "
          f"8,000 DNS lines + 4,000 process events consumed, {secs:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
