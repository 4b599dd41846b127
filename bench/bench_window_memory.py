#!/usr/bin/env python3
"""What an open feature window costs: memory of one window of N http rows, and the CPU of
closing windows (`_score_closed`) on the benign_long replay, record lists against counts.

Two measurements, each in fresh child processes so RSS is the window's own:

1. One container window gets N http rows (default 1,000,000; 5,000 distinct hosts, a unique uid
   per row, as Zeek writes them). "records": the NetRecords kept in a list, as open windows did
   before model/window_agg.py. "counts": the same rows as 64k-row NetColumns batches added to a
   NetWindowAgg (each batch freed after it is counted). Printed: RSS growth over the child's
   baseline (MiB, VmRSS after the rows; and VmHWM peak), CPU seconds, and the ratio.
2. `_score_closed` CPU on `replay(benign_long)` (training run: every window is built) with the
   engine of `--before` (a commit, exported with `git archive`) against the working tree, in
   alternating rounds; median per side and the ratio.

Usage: .venv/bin/python bench/bench_window_memory.py [--rows N] [--rounds R] [--before COMMIT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "05eae72"          # the last commit whose open windows kept their records

CHILD_MEMORY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from model.records import NetColumns, NetRecord, NET_FIELDS
from model.window_agg import NetWindowAgg

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return 0.0

mode, n = sys.argv[2], int(sys.argv[3])
hosts = [f"svc{i}.example.com" for i in range(5000)]
def rows(lo, hi):
    for i in range(lo, hi):
        yield (1000.0 + i * 1e-4, f"C{i:017x}", hosts[i % 5000], f"/api/v1/item/{i % 977}")
if mode != "records":
    # what the accumulator imports on its first batch (pyarrow's text hashing, and pyarrow's
    # pandas shim where pandas is installed) belongs to "after imports", not to the window
    from model.codes import factorize
    factorize(np.array([f"x{i}" for i in range(1000)], dtype=object))
base = status("VmRSS:")
t0 = time.process_time()
if mode == "records":
    window = []
    for ts, uid, host, uri in rows(0, n):
        window.append(NetRecord(ts=ts, kind="http", container_id="c" * 64, image="web:1",
                                orig_h="172.17.0.5", resp_h="10.0.3.7", resp_p=80,
                                orig_p=40000 + (len(window) % 20000), proto="tcp", uid=uid,
                                host="sensor", domain=host, uri=uri, user_agent="curl/8.5"))
else:
    window = NetWindowAgg()
    step = 65536
    for lo in range(0, n, step):
        part = list(rows(lo, min(n, lo + step)))
        m = len(part)
        def obj(v):
            a = np.empty(m, dtype=object); a[:] = v; return a
        cols = {f: obj([""] * m) for f in NET_FIELDS}
        cols.update(ts=np.array([p[0] for p in part]), kind=obj(["http"] * m),
                    container_id=obj(["c" * 64] * m), image=obj(["web:1"] * m),
                    orig_h=obj(["172.17.0.5"] * m), resp_h=obj(["10.0.3.7"] * m),
                    resp_p=np.full(m, 80, dtype=np.int64),
                    orig_p=40000 + np.arange(m, dtype=np.int64) % 20000,
                    proto=obj(["tcp"] * m), uid=obj([p[1] for p in part]),
                    host=obj(["sensor"] * m), domain=obj([p[2] for p in part]),
                    uri=obj([p[3] for p in part]), user_agent=obj(["curl/8.5"] * m),
                    bytes_out=np.zeros(m, dtype=np.int64), bytes_in=np.zeros(m, dtype=np.int64))
        window.add_columns(NetColumns(**cols))
        del cols, part
cpu = time.process_time() - t0
print(json.dumps({"rss_mib": status("VmRSS:") - base, "hwm_mib": status("VmHWM:") - base,
                  "cpu_s": cpu, "rows": len(window)}))
"""

CHILD_SCORE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from scheduler.detect import windowing
from scheduler.collect.recording import demo_data_dir
from scheduler.config import Config
from scheduler.replay import replay
spent = [0.0, 0]
orig = windowing.WindowingMixin._score_closed
def timed(self):
    t = time.process_time()
    try:
        return orig(self)
    finally:
        spent[0] += time.process_time() - t
        spent[1] += 1
windowing.WindowingMixin._score_closed = timed
t = time.process_time()
res = replay(demo_data_dir() / "benign_long", Config(), None, collect_windows=True)
total = time.process_time() - t
print(json.dumps({"score_closed_cpu_s": spent[0], "calls": spent[1], "replay_cpu_s": total,
                  "windows": sum(len(w) for w in res.windows)}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def export(commit: str, into: Path) -> Path:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True,
                         check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=BEFORE, help="commit of the record-list windows")
    args = ap.parse_args()

    print(f"1. one window of {args.rows:,} http rows (fresh child per run)")
    mem = {"records": [], "counts": []}
    for _ in range(args.rounds):
        for mode in ("records", "counts"):
            mem[mode].append(child(CHILD_MEMORY, str(ROOT), mode, str(args.rows)))
    med = {m: {k: statistics.median(r[k] for r in runs) for k in ("rss_mib", "hwm_mib", "cpu_s")}
           for m, runs in mem.items()}
    for m, v in med.items():
        print(f"   {m:8s} RSS +{v['rss_mib']:8.1f} MiB  peak +{v['hwm_mib']:8.1f} MiB  "
              f"CPU {v['cpu_s']:6.2f} s  ({args.rows / v['cpu_s']:,.0f} rows/s)")
    print(f"   RSS ratio records/counts: {med['records']['rss_mib'] / max(med['counts']['rss_mib'], 0.1):.0f}x"
          f"  (counts' peak is one 64k batch being built)")

    print(f"2. _score_closed CPU, replay(benign_long) training run: {args.before} vs working tree")
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        old = export(args.before, Path(tmp))
        runs = {"before": [], "after": []}
        for _ in range(args.rounds):
            runs["before"].append(child(CHILD_SCORE, str(old)))
            runs["after"].append(child(CHILD_SCORE, str(ROOT)))
    for side, rs in runs.items():
        sc = statistics.median(r["score_closed_cpu_s"] for r in rs)
        tot = statistics.median(r["replay_cpu_s"] for r in rs)
        print(f"   {side:6s} _score_closed {sc * 1000:8.1f} ms in {rs[0]['calls']} calls "
              f"({rs[0]['windows']} windows), whole replay {tot:6.2f} s CPU "
              f"(medians of {len(rs)})")
    b = statistics.median(r["score_closed_cpu_s"] for r in runs["before"])
    a = statistics.median(r["score_closed_cpu_s"] for r in runs["after"])
    print(f"   _score_closed after/before: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
