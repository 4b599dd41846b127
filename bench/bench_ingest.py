#!/usr/bin/env python3
"""Scheduler ingest of a 1,000,000-line http.log vs zat's LogToDataFrame, same file, same run.

The file is built from the real Zeek 7.0.11 http.log of the benign_long recording (container
health checks and API calls from 172.17.0.0/24), repeated to 1M data lines; each repetition is
shifted by the recording's length so time keeps moving forward (windows close, as in production).

Contenders (best of N rounds each, interleaved):

* ``zat``: ``LogToDataFrame().create_dataframe(path)``: parse all 30 columns into a pandas frame
  (typed: ts index as datetime, counts as numbers), nothing else;
* ``pipeline``: what the scheduler does per line: read (scheduler.collect.zeeklog, asking for the fields
  the engine reads, ``pipeline.ingest_fields("http")``: 10 of the 30 columns, as the replay and
  the daemon's tailers do), attribute the source address to a container at that time (inventory
  of benign_long, through scheduler.detect.join.Joiner), run the T1614 rules and the stock-log geo
  detector, and put the record into its container's feature window (windows are built as they
  close). Only scoring is left out (it is per window, not per line).

Printed: lines/s of each and the ratio pipeline/zat. No pass/fail target: the pipeline does far
more per line than a CSV-to-columns reader; the figure says what that costs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
from datafiles import exists, read_text, scenario_dir  # noqa: E402  (tests/datafiles.py)

SOURCE = scenario_dir("benign_long") / "zeek" / "http.log"   # .log or .log.gz


def build(path: Path, lines: int) -> None:
    text = read_text(SOURCE).splitlines(keepends=True)
    header = [x for x in text if x.startswith("#") and not x.startswith("#close")]
    data = [x for x in text if not x.startswith("#")]
    t0 = float(data[0].split("\t", 1)[0])
    span = float(data[-1].split("\t", 1)[0]) - t0 + 1.0
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(header)
        written, cycle = 0, 0
        while written < lines:
            shift = cycle * span
            for line in data[: lines - written]:
                ts, rest = line.split("\t", 1)
                out.write(f"{float(ts) + shift:.6f}\t{rest}")
            written += min(len(data), lines - written)
            cycle += 1
        out.write("#close\t2026-11-27-20-00-00\n")


def run_zat(path: Path) -> int:
    from zat.log_to_dataframe import LogToDataFrame

    return len(LogToDataFrame().create_dataframe(str(path)))


def run_pipeline(path: Path) -> tuple[int, dict]:
    from scheduler.config import Config
    from scheduler.pipeline import Pipeline
    from scheduler.collect.recording import Recording, demo_data_dir
    from scheduler.pipeline import ingest_fields
    from scheduler.collect.zeeklog import ParseStats, iter_zeek_log

    rec = Recording(demo_data_dir() / "benign_long")
    p = Pipeline(Config(), host=rec.host)
    p.collect_windows = True          # build every window (no baselines: scoring left out)
    for row in rec.iter_osquery_rows():
        if row.table in ("container_inventory", "container_events"):
            p.inventory.observe(row)
    # The file repeats the recording forward in time: keep its containers alive for the whole of
    # it (the recording ends with their teardown), so every line is attributed as in production.
    for c in p.inventory.containers():
        if c.container_id not in ("81be6c98a3e8", "479517b64507") and \
                not c.container_id.startswith(("81be6c98a3e8", "479517b64507")):
            c.destroyed = c.gone = None
    stats = ParseStats()
    n = 0
    for r in iter_zeek_log(path, stats, fields=ingest_fields("http")):
        p.feed_zeek("http", r)
        n += 1
        if n % 50_000 == 0:
            p.flush(wall=None)
    p.flush(force=True)
    return n, {"windows": sum(len(w) for w in p.collected), "alerts": p.stats.alerts,
               "attributed": p.stats.nets - p.stats.nets_unattributed, "bad": stats.bad_lines}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not exists(SOURCE):
        print(f"bench_ingest: fixture {SOURCE} missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "http.log"
        t = time.perf_counter()
        build(path, args.lines)
        print(f"built {path.stat().st_size / 1e6:.0f} MB http.log with {args.lines:,} lines "
              f"from {SOURCE.name} in {time.perf_counter() - t:.1f}s")
        best = {"zat": float("inf"), "pipeline": float("inf")}
        info: dict = {}
        for rnd in range(args.rounds):
            t = time.perf_counter()
            nz = run_zat(path)
            best["zat"] = min(best["zat"], time.perf_counter() - t)
            t = time.perf_counter()
            np_, info = run_pipeline(path)
            best["pipeline"] = min(best["pipeline"], time.perf_counter() - t)
            print(f"round {rnd + 1}: zat {best['zat']:.2f}s ({nz:,} rows), pipeline "
                  f"{best['pipeline']:.2f}s ({np_:,} records)")
        ratio = best["pipeline"] / best["zat"]
        print(f"zat LogToDataFrame : {best['zat']:7.2f} s  {args.lines / best['zat']:>10,.0f} lines/s")
        print(f"stowaway pipeline  : {best['pipeline']:7.2f} s  {args.lines / best['pipeline']:>10,.0f} "
              f"lines/s  (read + attribute + rules + windows; {info})")
        print(f"ratio pipeline/zat : {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
