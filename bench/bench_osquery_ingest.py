#!/usr/bin/env python3
"""The osquery results path on a busy host's volume, against a bare `json.loads` loop (issue 13 item 5).

Why: on a busy host osqueryd writes one results line per exec (`container_process_events`), and the
scheduler reads, parses and feeds each one through the pipeline in Python. Whether that path needs
batching (as the Zeek path does) is a question for numbers, so this prints them.

The input is built from the vendored benign_long recording
(scheduler/demo_data/benign_long/osquery/osqueryd.results.log.gz: real podman containers, all the
pack's tables), repeated until it holds `--events` container_process_events lines (200,000 by
default). Each repetition is shifted forward in time by the recording's length (plus a minute) and
gets its own container ids, so every cycle is new containers doing new work, as on a host that
keeps starting them.

Contenders, each in a fresh child process (so each has its own peak RSS), in interleaved rounds
(A B C A B C ...):

* ``json``: ``for line in file: json.loads(line)``: the floor for any Python JSON-lines reader;
* ``parse``: ``osquery_results.iter_results``: read + parse into OsqueryRow (malformed-line
  counting, table names, actions), nothing else;
* ``pipeline``: what the daemon does per collect tick (`--tick-lines` lines a tick): parse, sort the
  tick's rows by time, observe inventory/events first, then ``Pipeline.feed_osquery_row`` for each
  row (process records, T1614 command rules, misuse rules, churn, feature windows), then
  ``flush``. Scoring and sinks are left out (no baselines; alerts are counted, not written).
  The per-command-line verdict memos' hits and misses are printed (scheduler/detect/verdicts.py):
  the input repeats one recording, so nearly every verdict after the first cycle is a hit; on a
  real host the hit rate is what its distinct command lines allow (the parse contender counts
  them).

A before/after comparison runs this file from two checkouts (each child imports the tree the
script lives in), alternating: ``python /tmp/before/bench/bench_osquery_ingest.py``, then this one.

Printed per contender: median seconds, lines/s, peak RSS (VmHWM of the child) and the RSS after
its imports, and the ratios against ``json`` from the same rounds (median of per-round ratios).

    .venv/bin/python bench/bench_osquery_ingest.py [--events 200000] [--rounds 3] [--tick-lines 5000]
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from procstat import child_result, interleaved_rounds, median_ratio, round_figures, run_child

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "scheduler" / "demo_data" / "benign_long" / "osquery" / "osqueryd.results.log.gz"
EVENTS_QUERY = "pack_stowaway_stowaway_container_process_events"
SECOND_FIELDS = ("time", "created", "started", "start_time")
ID_FIELDS = ("id", "container_id")
CONTENDERS = ("json", "parse", "pipeline")

log = logging.getLogger("bench_osquery_ingest")


# ---- building the input (pure functions, then one writer) -------------------------------------

def shift_row(row: dict[str, Any], shift: int, prefix: str) -> dict[str, Any]:
    """A result row moved `shift` seconds later, its container id given `prefix` (a new container)."""
    out = dict(row)
    for k in SECOND_FIELDS:
        v = out.get(k)
        if isinstance(v, str) and v.isdigit():
            out[k] = str(int(v) + shift)
    v = out.get("time_nano")
    if isinstance(v, str) and v.isdigit():
        out["time_nano"] = str(int(v) + shift * 1_000_000_000)
    for k in ID_FIELDS:
        v = out.get(k)
        if isinstance(v, str) and len(v) >= 12:
            out[k] = prefix + v[len(prefix):]
    return out


def shift_object(obj: dict[str, Any], shift: int, prefix: str) -> dict[str, Any]:
    """One results-log object (event, snapshot or differential) shifted as `shift_row` does."""
    out = dict(obj)
    unix = int(out.get("unixTime", 0)) + shift
    out["unixTime"] = unix
    out["calendarTime"] = time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime(unix))
    if isinstance(out.get("columns"), dict):
        out["columns"] = shift_row(out["columns"], shift, prefix)
    if isinstance(out.get("snapshot"), list):
        out["snapshot"] = [shift_row(r, shift, prefix) for r in out["snapshot"]]
    if isinstance(out.get("diffResults"), dict):
        out["diffResults"] = {a: [shift_row(r, shift, prefix) for r in rows]
                              for a, rows in out["diffResults"].items()}
    return out


def cycle_lines(objs: list[dict[str, Any]], events: int) -> Iterator[str]:
    """Lines of the recording repeated (shifted, new ids) until `events` process-event lines."""
    t0 = min(int(o["unixTime"]) for o in objs)
    span = max(int(o["unixTime"]) for o in objs) - t0 + 60
    written, cycle = 0, 0
    while written < events:
        prefix = f"{0xb000 + cycle:04x}"          # hex, so ids stay valid container ids
        for o in objs:
            is_event = o.get("name") == EVENTS_QUERY
            if is_event and written >= events:
                continue
            yield json.dumps(shift_object(o, cycle * span, prefix), separators=(",", ":"))
            written += is_event
        cycle += 1


def build(path: Path, events: int) -> int:
    """Write the results log; returns its line count."""
    with gzip.open(SOURCE, "rt", encoding="utf-8") as fh:
        objs = [json.loads(x) for x in fh if x.strip()]
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for line in cycle_lines(objs, events):
            out.write(line + "\n")
            n += 1
    return n


# ---- the contenders (run in a child process each) ---------------------------------------------

def run_json(path: Path) -> dict[str, Any]:
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            json.loads(line)
            n += 1
    return {"lines": n}


def run_parse(path: Path) -> dict[str, Any]:
    from scheduler.collect.osquery_results import ParseStats, iter_results

    stats = ParseStats()
    rows, cmdlines = 0, set()
    for r in iter_results(path, stats):
        rows += 1
        if r.table == "container_process_events":
            cmdlines.add(r.columns.get("cmdline", ""))
    # how repetitive exec command lines are: what a per-batch unique-value rule pass would save
    return {"lines": stats.lines, "rows": rows, "malformed": stats.malformed,
            "distinct_cmdlines": len(cmdlines)}


def feed_tick(p: Any, rows: list[Any]) -> int:
    """One daemon collect tick over `rows` (scheduler/daemon.py's order); returns alerts raised."""
    from scheduler.pipeline import item_time

    rows.sort(key=lambda r: item_time("osq", r))
    for r in rows:
        if r.table in ("container_inventory", "container_events"):
            p.inventory.observe(r)
        elif r.table == "container_nat_flows":
            p.joiner.observe_nat(r)
    p.inventory.close_snapshots()
    for r in rows:
        p.feed_osquery_row(r, observe=False)
    return len(p.flush(wall=None))


def run_pipeline(path: Path, tick_lines: int) -> dict[str, Any]:
    from scheduler.collect.osquery_results import OsqueryResultsParser, ParseStats
    from scheduler.config import Config
    from scheduler.pipeline import Pipeline

    p = Pipeline(Config(), host="lab-host-1")
    stats = ParseStats()
    parser = OsqueryResultsParser(path, stats)
    alerts, rows = 0, []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            rows.extend(parser.parse_line(line, lineno))
            if lineno % tick_lines == 0:
                alerts += feed_tick(p, rows)
                rows = []
    alerts += feed_tick(p, rows)
    alerts += len(p.flush(force=True))
    return {"lines": stats.lines, "rows": stats.rows, "malformed": stats.malformed,
            "alerts": alerts, "processes": getattr(p.stats, "processes", None),
            "memo": memo_stats()}


def memo_stats() -> dict[str, list[int]] | None:
    """Hits and misses of the per-distinct-command-line verdict memos (detect/verdicts.py), or
    None on a tree that has none (a before/after comparison runs this file on both)."""
    from scheduler.detect import misuse_patterns, rules

    fns = {"classify_command": rules.classify_command, "tunnel_match": misuse_patterns.tunnel_match,
           "miner_match": misuse_patterns.miner_match, "escape_match": misuse_patterns.escape_match}
    if not all(hasattr(f, "cache_info") for f in fns.values()):
        return None
    return {n: [f.cache_info().hits, f.cache_info().misses] for n, f in fns.items()}


def child(mode: str, path: Path, tick_lines: int) -> int:
    """Import what the mode needs, then time it; one JSON line on stdout
    (procstat.child_result)."""
    if mode != "json":
        sys.path.insert(0, str(ROOT))
        import scheduler.pipeline  # noqa: F401  (imports are not part of the timed work)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "json": lambda: run_json(path), "parse": lambda: run_parse(path),
        "pipeline": lambda: run_pipeline(path, tick_lines)}
    return child_result(mode, runners[mode])


# ---- report -----------------------------------------------------------------------------------

def summarise(results: dict[str, list[dict[str, Any]]], lines: int) -> list[str]:
    """Text lines: per contender median time, lines/s, RSS; ratios against json per round."""
    base = results["json"]
    out = []
    for mode in CONTENDERS:
        rs = results[mode]
        f = round_figures(rs)
        sec, cpu, peak, imp = f["seconds"], f["cpu_seconds"], f["peak_rss_mib"], f["rss_import_mib"]
        ratio = median_ratio(rs, base)
        ratio_cpu = median_ratio(rs, base, "cpu_seconds")
        out.append(f"  {mode:9s} wall {sec:6.2f} s {lines / sec:>9,.0f} lines/s x{ratio:5.2f} json | "
                   f"CPU {cpu:6.2f} s {lines / cpu:>9,.0f} lines/CPU-s x{ratio_cpu:5.2f} json | "
                   f"peak RSS {peak:6.1f} MiB (after imports {imp:6.1f}, growth {peak - imp:5.1f})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="container_process_events lines")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tick-lines", type=int, default=5_000, help="lines per pipeline collect tick")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.path, args.tick_lines)
    if not SOURCE.exists():
        print(f"bench_osquery_ingest: recording {SOURCE} missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "osqueryd.results.log"
        t = time.perf_counter()
        lines = build(path, args.events)
        print(f"built {path.stat().st_size / 1e6:.0f} MB results log: {lines:,} lines "
              f"({args.events:,} container_process_events) from {SOURCE.parent.parent.name} "
              f"in {time.perf_counter() - t:.1f}s")
        results = interleaved_rounds(
            CONTENDERS, args.rounds, lines,
            lambda mode: run_child(__file__, mode, "--path", str(path),
                                   "--tick-lines", str(args.tick_lines), cwd=ROOT))
        last = results["pipeline"][-1]
        print(f"pipeline: {last['rows']:,} rows, {last['malformed']} malformed, "
              f"{last['alerts']} alerts, tick {args.tick_lines:,} lines; "
              f"{results['parse'][-1]['distinct_cmdlines']:,} distinct command lines among "
              f"{args.events:,} exec events")
        if last.get("memo"):
            print("verdict memos (hits/misses): " + ", ".join(
                f"{n} {h:,}/{m:,}" for n, (h, m) in last["memo"].items()))
        print(f"{lines:,} lines, {args.rounds} interleaved rounds (ratio: median of per-round "
              f"ratios against json in the same round):")
        for line in summarise(results, lines):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
