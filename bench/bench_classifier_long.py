#!/usr/bin/env python3
"""Benchmark: the T1614 classifier on command lines of 1 MB and 4 MB, with no scan cap.

The classifier scans the whole command line (issue 9 item 7: a lookup after 70 KB of padding
must be found), so its time must grow linearly with the length. For each padded shape of
tests/test_classifier.py (long header before the host, many arguments, many commands, deep
quoting and nesting, heredocs, interpreter code ...) this times classify_command at 1 MB and at
4 MB (CPU time, best of 3) and prints the ratio: linear is about 4x, quadratic would be 16x.
Baseline, measured in the same run on the same inputs: one `str.lower()` plus one pass of the
candidate-name regex (the cheapest whole-line scan there can be).

    .venv/bin/python bench/bench_classifier_long.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from osquery_ext import classifier  # noqa: E402
from test_classifier import _huge_positive_shapes  # noqa: E402

MIB = 1 << 20


def cpu_best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def as_text(cmd: object) -> str:
    if isinstance(cmd, bytes):
        return cmd.decode("utf-8", "replace")
    return cmd if isinstance(cmd, str) else "\0".join(cmd)  # type: ignore[arg-type]


def main() -> int:
    small = dict(_huge_positive_shapes(MIB))
    big = dict(_huge_positive_shapes(4 * MIB))
    print(f"{'shape':45s} {'1 MB':>9s} {'4 MB':>9s} {'4MB/1MB':>8s} {'baseline 1 MB':>14s} "
          f"{'vs baseline':>12s}")
    worst = 0.0
    for what, cmd in small.items():
        t1 = cpu_best(lambda: classifier.classify_command(cmd))
        t4 = cpu_best(lambda: classifier.classify_command(big[what]), 1)
        text = as_text(cmd)
        base = cpu_best(lambda: sum(1 for _ in classifier._CANDIDATE.finditer(text.lower())))
        worst = max(worst, t4 / max(t1, 1e-6))
        print(f"{what:45s} {t1 * 1000:7.0f}ms {t4 * 1000:7.0f}ms {t4 / max(t1, 1e-6):7.1f}x "
              f"{base * 1000:12.1f}ms {t1 / max(base, 1e-6):11.0f}x")
    print(f"largest 4MB/1MB ratio: {worst:.1f}x (linear ~4x, quadratic ~16x) -> "
          f"{'OK' if worst < 8 else 'NOT LINEAR'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
