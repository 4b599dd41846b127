#!/usr/bin/env python3
"""A real `stowaway run` daemon following an http.log written at a sustained rate: RSS, lag, CPU.

Why: a Zeek sensor on a busy tap writes tens of thousands of lines a second for hours. The daemon
must keep up with that and its memory must not grow with the rate or the duration (issue 13 item
4: at 20,000 lines/s for 10 minutes, RSS <= 250 MiB and flat).

Set-up (bench/daemon_harness.py): the daemon follows `zeek/http.log` and an osqueryd results log
in a scratch directory, with its shipped settings apart from the paths (collect every
`--collect-interval` s, 5 by default as shipped; windows stored in its window store). The results
log gets benign_long's last full `container_inventory` snapshot (9 running podman containers,
lab-host-1), re-stamped to the present and written again every `--inventory-every` s as osqueryd's
pack schedule would; the daemon is given time to take it in before the writer starts. Its model
dir holds trained baselines for the snapshot's images (daemon_harness.train_models), as a deployed
daemon's does; `--no-models` starts it without (the set-up of the runs before 2026-12-03).

The writer (this process) appends http.log lines at `--rate` lines/s for `--minutes`, one write
per `--tick` s, in real time: each line is one of benign_long's real http.log lines (cycled), its
time stamp the wall time it is due at, so data time moves forward with the clock and windows open
and close as in production.

Every `--sample` s: the daemon's RSS (VmRSS) and CPU (utime + stime, /proc), and how many of the
written lines its committed http.log checkpoint covers (a read-only look at its state DB; lines
are counted from the byte offsets the writer recorded).

Printed: RSS min / median / max, the slope of RSS over the second half (least squares, MiB/min),
the lines/s the daemon consumed against the rate written and its lag at the end (lines, seconds),
and the daemon's CPU seconds (and per million lines). Targets, exit 1 on a miss (each named):
max RSS <= 250 MiB; flat: second-half slope <= `--flat-slope` MiB/min (1.0); and kept up: the lag
at the end is at most `--max-lag` seconds of writing (3 collect intervals by default: what a daemon
that keeps pace still has to read), since an RSS measured on a daemon that reads a fraction of the
input says nothing about the rate. The run stops early when RSS passes `--abort-mib` (1,500 MiB).

    .venv/bin/python bench/bench_daemon_ingest.py [--rate 20000] [--minutes 10]
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_osquery_ingest import shift_object  # noqa: E402  (bench/)
from daemon_harness import running_daemon, train_models, write_config  # noqa: E402  (bench/)
from procstat import proc_usage, verdict  # noqa: E402  (bench/)
from soak_harness import wait_until  # noqa: E402  (tests/)

RECORDING = ROOT / "scheduler" / "demo_data" / "benign_long"
HTTP_SOURCE = RECORDING / "zeek" / "http.log.gz"
OSQ_SOURCE = RECORDING / "osquery" / "osqueryd.results.log.gz"
INVENTORY_QUERY = "pack_stowaway_stowaway_container_inventory"
HOST = "lab-host-1"
TARGET_RSS_MIB = 250.0

log = logging.getLogger("bench_daemon_ingest")


# ---- inputs (pure) ----------------------------------------------------------------------------

def http_template() -> tuple[list[str], list[str]]:
    """benign_long's http.log: header lines (no `#close`) and each data line without its ts."""
    with gzip.open(HTTP_SOURCE, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    header = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    rests = [x.split("\t", 1)[1] for x in lines if not x.startswith("#")]
    return header, rests


def last_full_inventory() -> dict[str, Any]:
    """The recording's last container_inventory snapshot in which every container runs."""
    best = None
    with gzip.open(OSQ_SOURCE, "rt", encoding="utf-8") as fh:
        for line in fh:
            o = json.loads(line)
            if o.get("name") == INVENTORY_QUERY and o.get("snapshot") and \
                    all(r.get("state") == "running" for r in o["snapshot"]):
                best = o
    if best is None:
        raise RuntimeError(f"no running container_inventory snapshot in {OSQ_SOURCE}")
    return best


def inventory_line(snapshot: dict[str, Any], now: float) -> str:
    """The snapshot re-stamped so that it is taken at `now` (created/started moved with it)."""
    shifted = shift_object(snapshot, int(now) - int(snapshot["unixTime"]), "")
    return json.dumps(shifted, separators=(",", ":")) + "\n"


def http_lines(rests: list[str], first: int, count: int, t0: float, rate: float) -> str:
    """Lines `first`..`first+count-1` of the stream: line i is template i mod len, stamped
    t0 + i/rate."""
    n = len(rests)
    return "".join([f"{t0 + i / rate:.6f}\t{rests[i % n]}" for i in range(first, first + count)])


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute (0 with < 2 points)."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


# ---- the daemon, seen from outside ------------------------------------------------------------

def committed_offset(state_db: Path, path: Path) -> int:
    """The byte offset of `path` the daemon has committed (0 before its first commit)."""
    try:
        con = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT offset FROM checkpoints WHERE path=?",
                              (str(path),)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def mapped_containers(address_map: Path) -> int:
    """Rows of the address map the daemon writes (the containers it knows)."""
    try:
        return max(0, len(address_map.read_text().splitlines()) - 1)
    except OSError:
        return 0


@dataclass
class Written:
    """What the writer appended: the end offset and the line count after each write."""

    ends: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def add(self, end: int, lines: int) -> None:
        self.ends.append(end)
        self.lines.append(lines)

    def lines_before(self, offset: int) -> int:
        """Data lines wholly before `offset` (writes are whole lines; the tailer commits whole
        lines, so an offset inside a write counts that write's earlier lines as unread)."""
        i = bisect.bisect_right(self.ends, offset)
        return self.lines[i - 1] if i else 0


@dataclass
class Sample:
    t: float          # seconds since the writer started
    rss_mib: float
    cpu_s: float
    written: int
    consumed: int


# ---- the run ----------------------------------------------------------------------------------

def run(args: argparse.Namespace, t: Path) -> list[Sample]:
    (t / "zeek").mkdir()
    http = t / "zeek" / "http.log"
    osq = t / "osqueryd.results.log"
    amap = t / "container_addrs.tsv"
    header, rests = http_template()
    snap = last_full_inventory()
    n_containers = len(snap["snapshot"])
    osq.write_text(inventory_line(snap, time.time()))
    http.write_text("".join(header))
    if not args.no_models:
        train_models(t, [r["image"] for r in snap["snapshot"]])
    cfg = write_config(t, HOST, address_map=str(amap), collect_interval_s=args.collect_interval,
                       zeek_streams=("http",))
    written = Written()
    samples: list[Sample] = []
    with running_daemon(cfg, log_path=t / "daemon.log") as proc, \
            open(http, "a", encoding="utf-8") as out, open(osq, "a", encoding="utf-8") as oq:
        wait_until(lambda: mapped_containers(amap) >= n_containers, 120,
                   f"daemon took in the {n_containers} containers")
        base_cpu = proc_usage(proc.pid)[1]
        offset = http.stat().st_size
        written.add(offset, 0)
        t0 = time.time()
        start = time.monotonic()
        end = start + 60.0 * args.minutes
        next_sample, next_inv, n = start, start + args.inventory_every, 0
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({proc.returncode}); see {t / 'daemon.log'}")
            due = int(args.rate * (min(now, end) - start))
            if due > n:
                text = http_lines(rests, n, due - n, t0, args.rate)
                out.write(text)
                out.flush()
                offset += len(text.encode("utf-8"))
                n = due
                written.add(offset, n)
            if now >= next_inv:
                oq.write(inventory_line(snap, time.time()))
                oq.flush()
                next_inv += args.inventory_every
            if now >= next_sample or now >= end:
                rss, cpu = proc_usage(proc.pid)
                consumed = written.lines_before(committed_offset(t / "state.db", http))
                samples.append(Sample(now - start, rss, cpu - base_cpu, n, consumed))
                print(f"  {now - start:6.0f}s RSS {rss:7.1f} MiB  written {n:>10,}  consumed "
                      f"{consumed:>10,}  lag {n - consumed:>9,}  CPU {cpu - base_cpu:7.1f}s",
                      flush=True)
                next_sample += args.sample
                if rss > args.abort_mib:
                    print(f"RSS {rss:.0f} MiB passed --abort-mib {args.abort_mib:.0f}: stopping")
                    break
            if now >= end:
                break
            # pacing: until the next write, sample or the end (a rate, not a wait for a state)
            time.sleep(max(0.0, min(start + args.tick * (1 + int((now - start) / args.tick)),
                                    next_sample, end) - time.monotonic()))
    return samples


def report(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """Print the figures; return the targets missed, each in words."""
    if not samples:
        return ["no samples taken"]
    rss = [s.rss_mib for s in samples]
    last = samples[-1]
    half = [(s.t, s.rss_mib) for s in samples if s.t >= last.t / 2]
    slope = slope_per_min(half)
    secs = max(last.t, 1e-9)
    kept = last.consumed / last.written if last.written else 0.0
    lag_s = (last.written - last.consumed) / args.rate
    mid = min(samples, key=lambda s: abs(s.t - last.t / 2))
    half_rate = (last.consumed - mid.consumed) / max(last.t - mid.t, 1e-9)
    max_lag = args.max_lag if args.max_lag is not None else 3 * args.collect_interval
    print(f"RSS MiB: min {min(rss):.1f}, median {statistics.median(rss):.1f}, max {max(rss):.1f}; "
          f"second-half slope {slope:+.2f} MiB/min ({len(half)} samples)")
    print(f"written {last.written:,} lines in {secs:.0f}s ({last.written / secs:,.0f}/s, target "
          f"rate {args.rate:,.0f}/s); daemon consumed {last.consumed:,} "
          f"({last.consumed / secs:,.0f} lines/s, {100 * kept:.1f}%), lag at the end "
          f"{last.written - last.consumed:,} lines "
          f"({lag_s:.1f} s of writing); second half consumed {half_rate:,.0f} lines/s")
    per_m = last.cpu_s / (last.consumed / 1e6) if last.consumed else float("inf")
    print(f"daemon CPU {last.cpu_s:.1f} s over {secs:.0f} s ({last.cpu_s / secs:.2f} cores; "
          f"{per_m:.1f} CPU-s per million lines consumed)")
    missed = []
    if max(rss) > TARGET_RSS_MIB:
        missed.append(f"max RSS {max(rss):.1f} MiB > {TARGET_RSS_MIB:.0f} MiB")
    if slope > args.flat_slope:
        missed.append(f"RSS not flat: {slope:+.2f} MiB/min over the second half "
                      f"(target <= {args.flat_slope} MiB/min)")
    if lag_s > max_lag:
        missed.append(f"did not keep up: {lag_s:.1f} s of writing behind at the end "
                      f"(target <= {max_lag:g} s; consumed {100 * kept:.1f}% of the lines)")
    return missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20_000.0, help="http.log lines per second")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--tick", type=float, default=0.25, help="seconds between writes")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--collect-interval", type=float, default=5.0,
                    help="daemon.collect_interval_s (5 as shipped)")
    ap.add_argument("--inventory-every", type=float, default=60.0,
                    help="seconds between inventory snapshots (the pack's interval)")
    ap.add_argument("--flat-slope", type=float, default=1.0, help="MiB/min allowed, second half")
    ap.add_argument("--max-lag", type=float, default=None,
                    help="seconds of writing the daemon may be behind at the end "
                         "(3 collect intervals)")
    ap.add_argument("--abort-mib", type=float, default=1500.0)
    ap.add_argument("--no-models", action="store_true",
                    help="start the daemon with an empty model dir (no baselines, no scoring)")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args(argv)
    for p in (HTTP_SOURCE, OSQ_SOURCE):
        if not p.exists():
            print(f"bench_daemon_ingest: recording file {p} missing", file=sys.stderr)
            return 2
    print(f"daemon following http.log at {args.rate:,.0f} lines/s for {args.minutes:g} min "
          f"(collect every {args.collect_interval:g} s), RSS sampled every {args.sample:g} s")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        samples = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            samples = run(args, Path(tmp))
    return verdict(report(samples, args))


if __name__ == "__main__":
    sys.exit(main())
