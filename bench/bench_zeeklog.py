#!/usr/bin/env python3
"""Ingest of a 1,000,000-line http.log: scheduler.collect.zeeklog / scheduler.detect.geo_stock vs zat's
LogToDataFrame (pandas read_csv in C).

The file is built from the real Zeek 7.0.11 http.log of the benign_long fixture (container
health checks and API calls, all from the container subnet), repeated to 1M data lines. Three
interleaved rounds, best time of each contender:

* ``zat``: ``LogToDataFrame().create_dataframe(path)``, the reference;
* ``records``: every line to a full normalised dict (all 30 columns), the tailer's path;
* ``geo``: the stock-log detector over the file (``iter_stream``: raw-column prefilters, then
  only the detector's columns converted), the path the scheduler runs on http.log.

Targets (exit status 1 when missed): geo <= 1.5x zat, records <= 5x zat (pure-Python dicts of 30
typed fields against a C CSV reader that makes columns, not rows).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduler.detect.geo_stock import GeoStockDetector, iter_stream  # noqa: E402
from scheduler.collect.zeeklog import ParseStats, iter_zeek_log  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from datafiles import exists, read_text, scenario_dir  # noqa: E402  (tests/datafiles.py)

SOURCE = scenario_dir("benign_long") / "zeek" / "http.log"   # .log or .log.gz
LINES = 1_000_000
TARGET_GEO = 1.5
TARGET_RECORDS = 5.0


def build(path: Path) -> None:
    text = read_text(SOURCE).splitlines(keepends=True)
    header = [line for line in text if line.startswith("#") and not line.startswith("#close")]
    data = [line for line in text if not line.startswith("#")]
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(header)
        written = 0
        while written < LINES:
            chunk = data[: LINES - written]
            out.writelines(chunk)
            written += len(chunk)
        out.write("#close\t2026-11-27-20-00-00\n")


def run_zat(path: Path) -> int:
    from zat.log_to_dataframe import LogToDataFrame

    return len(LogToDataFrame().create_dataframe(str(path)))


def run_records(path: Path) -> int:
    stats = ParseStats()
    n = sum(1 for _ in iter_zeek_log(path, stats))
    assert stats.bad_lines == 0
    return n


def run_geo(path: Path) -> int:
    stats = ParseStats()
    found = list(iter_stream(GeoStockDetector(), "http", [path], stats))
    assert found == [] and stats.records + stats.filtered == LINES
    return stats.records + stats.filtered


def main() -> int:
    if not exists(SOURCE):
        print(f"bench_zeeklog: data file {SOURCE} missing", file=sys.stderr)
        return 2
    contenders = {"zat": run_zat, "records": run_records, "geo": run_geo}
    best = {name: float("inf") for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "http.log"
        build(path)
        for _round in range(3):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                n = fn(path)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert n == LINES, (name, n)
    ratio_geo = best["geo"] / best["zat"]
    ratio_rec = best["records"] / best["zat"]
    for name, secs in best.items():
        print(f"{name:8s} {secs:6.2f} s  {LINES / secs / 1e3:7.0f} k lines/s")
    print(f"geo/zat {ratio_geo:.2f} (target <= {TARGET_GEO}), "
          f"records/zat {ratio_rec:.2f} (target <= {TARGET_RECORDS})")
    return 0 if ratio_geo <= TARGET_GEO and ratio_rec <= TARGET_RECORDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
