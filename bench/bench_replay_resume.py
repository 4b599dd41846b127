#!/usr/bin/env python3
"""A killed replay's resume: with the checkpoint's re-feed time against finding it by reading.

Why: a backfill of a host-day that is killed (an OOM kill, a reboot) is run again and resumes
at its last committed chunk. The resume re-feeds, without rules, the hour before the earliest
window open at the checkpoint, and needs that window's first item's time. Checkpoints now keep
it (`t_first`, `scheduler.replay._ItemTimes`); a checkpoint without it (written before that, or
right after a resume) makes the resume read the input up to that item once more to find it.
The question is what keeping it saves.

The input is benign_long with its http.log repeated to `--lines` lines (bench_replay_memory's
recording; `--gzip` writes it gzipped, as a backfill's rotated logs are). Set-up, untimed: one
`replay()` with a state DB killed after `--at` of its chunks; its DB copied twice with SQLite's
backup: ``kept`` as written, ``scan`` with `t_first` taken out of the checkpoint.

Contenders, each the resumed `replay(rec, Config(), None, state_db=copy)` (no baselines) of a
fresh copy of its DB in a fresh child process, in interleaved rounds; imports before the clock.
Both must resume at the same item and end with the same alerts and items: checked every round.

Printed: median wall and CPU seconds and peak RSS of each, and kept / scan of time and CPU
(median of per-round ratios). No target.

    .venv/bin/python bench/bench_replay_resume.py [--lines 1000000] [--at 0.87] [--gzip]
"""
from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_replay_memory as brm  # bench/
from procstat import child_result, interleaved_rounds, median_ratio, round_figures, run_child

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("kept", "scan")
IMPORTS = brm.IMPORTS


class _Killed(Exception):
    pass


def killed_checkpoint(rec: Path, db: Path, at: float) -> dict[str, Any]:
    """Replay `rec` into `db`, killed after the fraction `at` of its chunks; its checkpoint."""
    sys.path.insert(0, str(ROOT))
    from scheduler.config import Config
    from scheduler.replay import load_recording_items, replay

    _, items = load_recording_items(rec)
    chunk = int(inspect.signature(replay).parameters["chunk"].default)   # the replay's own
    chunks = -(-len(items) // chunk)
    stop = max(1, int(chunks * at))

    def kill(i: int) -> None:
        if i == stop:
            raise _Killed

    try:
        replay(rec, Config(), None, state_db=db, after_chunk=kill)
    except _Killed:
        pass
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data FROM pipeline_state").fetchall()
    st = json.loads(rows[0][0]) if len(rows) == 1 else None
    if st is None or "t_first" not in st:
        raise RuntimeError("the killed replay left no checkpoint with t_first")
    return st


def copy_db(src: Path, dst: Path, drop_t_first: bool = False) -> None:
    """`src` to `dst` with SQLite's backup (a file copy can miss what is still in the WAL)."""
    dst.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    if drop_t_first:
        with sqlite3.connect(dst) as b:
            for name, data in b.execute("SELECT name, data FROM pipeline_state").fetchall():
                st = json.loads(data)
                st.pop("t_first", None)
                b.execute("UPDATE pipeline_state SET data=? WHERE name=?",
                          (json.dumps(st), name))


def child(mode: str, rec: Path, db: Path, lines: int) -> int:
    import importlib

    sys.path.insert(0, str(ROOT))
    for mod in IMPORTS:
        importlib.import_module(mod)
    from scheduler.config import Config
    from scheduler.replay import replay

    work_db = db.with_name(f"{mode}-work.db")
    copy_db(db, work_db)
    config = Config()

    def work() -> dict[str, Any]:
        res = replay(rec, config, None, state_db=work_db)
        return {"lines": lines, "resumed_from": res.resumed_from, "items": res.items,
                "alerts": len(res.alerts)}

    return child_result(mode, work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="http lines (default 1,000,000)")
    ap.add_argument("--at", type=float, default=0.87,
                    help="fraction of the replay's chunks done when it is killed (default 0.87)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gzip", action="store_true", help="write the http log gzipped")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--rec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.rec, args.db, args.lines)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rec = brm.recording(work, args.lines, args.gzip)
        st = killed_checkpoint(rec, work / "killed.db", args.at)
        copy_db(work / "killed.db", work / "kept.db")
        copy_db(work / "killed.db", work / "scan.db", drop_t_first=True)
        print(f"{args.lines:,} http lines{' gzipped' if args.gzip else ''}; killed at item "
              f"{st['position']:,}; {args.rounds} interleaved rounds ({' '.join(CONTENDERS)}), "
              f"each in its own process", flush=True)
        results = interleaved_rounds(
            CONTENDERS, args.rounds, args.lines,
            lambda mode: run_child(__file__, mode, "--rec", str(rec), "--db",
                                   str(work / f"{mode}.db"), "--lines", str(args.lines),
                                   cwd=ROOT))
        shutil.rmtree(rec)
    seen = {(r["resumed_from"], r["items"], r["alerts"]) for rs in results.values() for r in rs}
    if len(seen) != 1:
        raise RuntimeError(f"the resumes differ (resumed_from, items, alerts): {sorted(seen)}")
    for mode in CONTENDERS:
        f = round_figures(results[mode])
        print(f"  {mode:5s} {f['seconds']:7.2f} s wall {f['cpu_seconds']:7.2f} s CPU | peak RSS "
              f"{f['peak_rss_mib']:6.1f} MiB")
    a, b = results["kept"], results["scan"]
    print(f"kept / scan: time {median_ratio(a, b):.2f}x, "
          f"CPU {median_ratio(a, b, 'cpu_seconds'):.2f}x (median of per-round ratios; no target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
