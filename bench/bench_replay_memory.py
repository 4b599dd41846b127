#!/usr/bin/env python3
"""Replay (and so backfill) peak RSS and speed as its Zeek input grows: streamed vs read once.

Why: a backfill replays a host's whole day (`scheduler.backfill` runs `scheduler.replay.replay`
per host); a busy host's http.log is millions of lines, and holding every batch of it costs
hundreds of bytes a line (read_once below: ~580 MiB at 1,000,000 lines, ~1.4 GiB at 3,000,000;
its growth is ~400 B a line). A host-day backfill must not need gigabytes (issue 13). The
replay now streams its Zeek logs and osquery results (`scheduler/collect/replay_items.py`): an
index pass keeps each batch's size and earliest time, the feed reads the files again a batch at a
time as late as the time order allows. The question is what that costs in time and whether
memory stays flat as the input grows.

The input is a recording built in a temporary directory from the bundled benign_long
(scheduler/demo_data/benign_long: meta.json, osquery/, zeek/ conn, dns and files as they are)
whose zeek/http.log.gz is replaced by a plain zeek/http.log of `lines` data lines: benign_long's
own http log repeated, each repetition shifted by the recording's length (bench_ingest.build,
header included, no `#close` trailer). The other logs cover only the recording's ~30 minutes,
so the http rows run on for hours after them: rows after the recording's containers ended are
simply unattributed (no container record at their time), unlike bench_ingest's engine contender,
which keeps the containers alive. They still go through the whole replay (order, dispatch,
rules), which is what is measured.

Contenders, each `replay(rec, Config(), None)` (no baselines: no scoring, as bench_ingest;
bench_model.py measures scoring) in a fresh child process (its own peak RSS: VmHWM of
/proc/self/status, read by the child), in interleaved rounds (A B A B ...); imports (including
what the replay would import on its first rows: pyarrow's readers, pandas) are done before the
clock starts:

* ``streamed``: the default `keep_rows` (`scheduler.collect.replay_items.KEEP_ROWS`): files whose
  batches total more than that are read twice, a batch in memory only while its rows are due;
* ``read_once``: `keep_rows=10**12`, every batch kept from the index pass: the replay as it was
  before streaming (read once, all of it in memory), with the same code;
* ``one_thread``: streamed with `sources.read_ahead = false`: the Zeek files read, inflated and
  parsed in the replay's own thread (the others read them ahead in threads,
  `scheduler/collect/readahead.py`), so streamed / one_thread is what those threads buy.

All must give the same replay (items, records, unattributed, alerts): checked every round.
`--gzip` writes the http log gzipped, as a backfill reads rotated logs (zlib's inflate is then
part of the reading).

Printed per size: median wall seconds, CPU seconds, http lines/s (over the whole replay's
time, which includes benign_long's ~34,000 osquery and other Zeek rows: a fixed cost that weighs
on small sizes) and peak RSS (and after imports) of each; streamed / read_once of time and CPU
(median of per-round ratios) and of peak RSS (worst rounds); with several `--sizes`, a table of
peak RSS per size (flat for streamed, growing with the lines for read_once). No speed target:
streaming reads the Zeek files a second time, which costs CPU (measured on a 2-core box:
streamed 1.2-1.6x read_once's time at 1,000,000-3,000,000 lines, varying from run to run;
1.0-1.2x at 100,000 lines, where the fixed cost weighs).

Targets (exit 1 when one is missed, naming it): streamed peak RSS <= 250 MiB at every size;
streamed peak RSS growth from the smallest to the largest size <= 25% (bounded memory).

    .venv/bin/python bench/bench_replay_memory.py [--sizes 100000,1000000] [--rounds 3]
    .venv/bin/python bench/bench_replay_memory.py --sizes 100000,1000000,3000000
    .venv/bin/python bench/bench_replay_memory.py --sizes 1000000 --gzip

3,000,000 lines works (a ~520 MB http.log; each replay ~12-16 s on a 2-core box): read_once then
needs about 1.4 GiB of memory, streamed what it needs at 100,000 (~210 MiB).
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ingest import RECORDING, build, summary  # bench/
from procstat import child_result, interleaved_rounds, median_ratio, run_child, verdict

ROOT = Path(__file__).resolve().parents[1]
#: contender -> the replay's keep_rows (None: its default)
KEEP = {"streamed": None, "read_once": 10**12, "one_thread": None}
#: contender -> `sources.read_ahead` (the Zeek files read, inflated and parsed ahead in threads)
READ_AHEAD = {"streamed": True, "read_once": True, "one_thread": False}
CONTENDERS = tuple(KEEP)
GZIP = False              # --gzip: the http log written as zeek/http.log.gz
#: what the replay imports, up to its first rows (pyarrow converts through pandas)
IMPORTS = ("scheduler.replay", "scheduler.config", "scheduler.pipeline",
           "scheduler.collect.recording", "scheduler.collect.zeekbatch", "model.features",
           "pyarrow.csv", "pyarrow.json", "pyarrow.compute", "pyarrow.pandas_compat", "pandas")
#: what both contenders must agree on (the same replay)
OUTCOME = ("items", "records", "unattributed", "alerts", "late")
TARGET_RSS_MIB = 250.0
TARGET_GROWTH = 0.25


# ---- building the input -----------------------------------------------------------------------

def recording(tmp: Path, lines: int, gz: bool = False) -> Path:
    """benign_long with its http log replaced by `lines` repeated data lines (a plain
    zeek/http.log, or zeek/http.log.gz with `gz`; the recording's own http.log.gz left out, or
    the replay would read it too)."""
    rec = tmp / f"benign_long-{lines}"

    def no_http(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith("http.")] if Path(directory).name == "zeek" \
            else []

    shutil.copytree(RECORDING, rec, ignore=no_http)
    plain = rec / "zeek" / "http.log"
    build(plain, lines)
    if gz:
        with open(plain, "rb") as src, gzip.open(f"{plain}.gz", "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        plain.unlink()
    return rec


def other_zeek_records(tmp: Path) -> int:
    """Rows of the recording's other Zeek logs (conn, dns): the replay's Zeek records minus
    these are the http lines it fed."""
    sys.path.insert(0, str(ROOT))
    from scheduler.replay import load_recording_items

    stats: dict[str, Any] = {}
    rec = recording(tmp, 0)
    load_recording_items(rec, stats)
    shutil.rmtree(rec)
    return int(stats["zeek"]["records"])


# ---- a contender (runs in a child process) ----------------------------------------------------

def child(mode: str, rec: Path, other: int) -> int:
    """Imports and the config before the clock, then the replay; one JSON line on stdout
    (procstat.child_result)."""
    import importlib

    sys.path.insert(0, str(ROOT))
    for mod in IMPORTS:
        importlib.import_module(mod)
    from scheduler.config import Config
    from scheduler.replay import replay

    config = Config()
    config.sources.read_ahead = READ_AHEAD[mode]
    kw = {} if KEEP[mode] is None else {"keep_rows": KEEP[mode]}

    def work() -> dict[str, Any]:
        res = replay(rec, config, None, **kw)
        p = res.stats["pipeline"]
        return {"lines": p["zeek_records"] - other, "items": res.items,
                "records": p["nets"], "unattributed": p["nets_unattributed"],
                "alerts": len(res.alerts), "late": p["late_records"]}

    return child_result(mode, work)


# ---- measuring and grading --------------------------------------------------------------------

def same_replay(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The outcome every round of every contender gave; raises if two differ."""
    seen = {tuple(r[k] for k in OUTCOME) for rs in results.values() for r in rs}
    if len(seen) != 1:
        raise RuntimeError(f"contenders gave different replays {OUTCOME}: {sorted(seen)}")
    return dict(zip(OUTCOME, seen.pop()))


def measure(lines: int, rounds: int, tmp: Path, other: int) -> dict[str, Any]:
    """Build the recording with `lines` http lines, run the interleaved rounds, print and return
    figures."""
    t = time.perf_counter()
    rec = recording(tmp, lines, GZIP)
    log = rec / "zeek" / ("http.log.gz" if GZIP else "http.log")
    print(f"\n== {lines:,} http lines: built {log.stat().st_size / 1e6:.0f} MB {log.name} from "
          f"benign_long in {time.perf_counter() - t:.1f}s", flush=True)
    results = interleaved_rounds(
        CONTENDERS, rounds, lines,
        lambda mode: run_child(__file__, mode, "--rec", str(rec), "--other", str(other),
                               cwd=ROOT))
    shutil.rmtree(rec)
    out = same_replay(results)
    s = summary(results, lines)
    print(f"replay (both): {out['items']:,} items, {out['records']:,} network records "
          f"({out['unattributed']:,} unattributed), {out['alerts']} alerts, {out['late']} late")
    for mode in CONTENDERS:
        m = s[mode]
        print(f"  {mode:9s} {m['seconds']:7.2f} s wall {m['cpu_seconds']:7.2f} s CPU "
              f"{m['lines_s']:>9,.0f} lines/s | peak RSS {m['peak_rss_mib']:6.1f} MiB "
              f"(after imports {m['rss_import_mib']:5.1f})")
    a, b = results["streamed"], results["read_once"]
    ratios = {"time": median_ratio(a, b), "cpu": median_ratio(a, b, "cpu_seconds"),
              "rss": s["streamed"]["peak_rss_mib"] / s["read_once"]["peak_rss_mib"]}
    print(f"streamed / read_once: time {ratios['time']:.2f}x, CPU {ratios['cpu']:.2f}x (median "
          f"of per-round ratios; no target); peak RSS {ratios['rss']:.2f}x (streamed "
          f"{s['streamed']['peak_rss_mib']:.1f} MiB, target <= {TARGET_RSS_MIB:.0f})")
    c = results["one_thread"]
    ratios["threads_time"] = median_ratio(a, c)
    ratios["threads_cpu"] = median_ratio(a, c, "cpu_seconds")
    print(f"streamed / one_thread (what the read-ahead threads buy): time "
          f"{ratios['threads_time']:.2f}x, CPU {ratios['threads_cpu']:.2f}x; peak RSS "
          f"{s['one_thread']['peak_rss_mib']:.1f} MiB without them")
    return {"lines": lines, "summary": s, "ratios": ratios}


def rss_table(rows: list[dict[str, Any]]) -> list[str]:
    """Peak RSS per size of each contender, and streamed's time over read_once's."""
    head = "".join(f"{m + ' MiB':>15s}" for m in CONTENDERS)
    out = [f"{'lines':>10s}{head}{'RSS ratio':>11s}{'time ratio':>12s}"]
    for r in rows:
        cells = "".join(f"{r['summary'][m]['peak_rss_mib']:>15.1f}" for m in CONTENDERS)
        out.append(f"{r['lines']:>10,d}{cells}{r['ratios']['rss']:>10.2f}x"
                   f"{r['ratios']['time']:>11.2f}x")
    return out


def misses(rows: list[dict[str, Any]]) -> list[str]:
    """The targets missed, each said in words: streamed's ceiling at every size, and its growth
    from the smallest size to the largest."""
    peak = {r["lines"]: r["summary"]["streamed"]["peak_rss_mib"] for r in rows}
    out = [f"{n:,} lines: streamed peak RSS {mib:.1f} MiB (target <= {TARGET_RSS_MIB:.0f} MiB)"
           for n, mib in peak.items() if mib > TARGET_RSS_MIB]
    lo, hi = min(peak), max(peak)
    if hi > lo:
        growth = peak[hi] / peak[lo] - 1.0
        print(f"streamed peak RSS {lo:,} -> {hi:,} lines: {peak[lo]:.1f} -> {peak[hi]:.1f} MiB, "
              f"{100 * growth:+.0f}% (target <= +{100 * TARGET_GROWTH:.0f}%)")
        if growth > TARGET_GROWTH:
            out.append(f"streamed peak RSS grew {100 * growth:.0f}% from {lo:,} to {hi:,} lines "
                       f"(target <= {100 * TARGET_GROWTH:.0f}%: bounded memory)")
    else:
        print("one size: streamed peak RSS growth not checked (give --sizes two or more)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000",
                    help="comma list of http line counts (default 100000,1000000; 3000000 works, "
                         "read_once then needs ~1.4 GiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gzip", action="store_true",
                    help="write the http log gzipped (zeek/http.log.gz), as a backfill reads "
                         "rotated logs")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--rec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--other", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global GZIP
    GZIP = args.gzip
    if args.child:
        return child(args.child, args.rec, args.other)
    if not RECORDING.exists():
        print(f"bench_replay_memory: recording {RECORDING} missing", file=sys.stderr)
        return 2
    sizes = sorted(int(x) for x in args.sizes.split(","))
    print(f"{args.rounds} interleaved rounds per size ({' '.join(CONTENDERS)}), each contender "
          f"in its own process; figures are medians, ratios the median of per-round ratios, "
          f"peak RSS the worst round")
    with tempfile.TemporaryDirectory() as tmp:
        other = other_zeek_records(Path(tmp))
        rows = [measure(n, args.rounds, Path(tmp), other) for n in sizes]
    if len(rows) > 1:
        print("\npeak RSS per size (streamed flat, read_once growing with the lines):")
        for line in rss_table(rows):
            print(line)
    return verdict(misses(rows))


if __name__ == "__main__":
    sys.exit(main())
