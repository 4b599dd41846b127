"""What the ingest benchmarks (bench_ingest.py, bench_osquery_ingest.py, bench_daemon_ingest.py)
share: a process's RSS, peak RSS and CPU read from /proc; a contender run in a child process of
its own that prints one JSON line of figures; interleaved rounds of contenders; medians over those
rounds and the median of per-round ratios; and the closing verdict on the targets.

Why one copy: each benchmark compares figures taken the same way (peak RSS read by the child
itself, time and CPU around the same work, ratios from the same round), so the way they are taken
lives in one place. Not named bench_*.py: `make bench` runs those, this is only imported by them
(they run as scripts, so bench/ is on sys.path).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

#: one contender's figures of one round, as its child printed them
Result = dict[str, Any]


# ---- a process, seen through /proc ------------------------------------------------------------

def status_mib(key: str, pid: int | str = "self") -> float | None:
    """The `key` line (VmRSS, VmHWM, ...) of /proc/<pid>/status in MiB; None when it is absent
    (a kernel thread, or a kernel that does not report it)."""
    prefix = key + ":"
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(prefix):
                return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec,
    so a child would report its parent's peak (a parent that held the input while building it).
    ru_maxrss only where /proc has no VmHWM."""
    hwm = status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/<pid>/stat: utime and stime, fields 14
    and 15; split after the last ')' since the command name may hold spaces or parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def proc_usage(pid: int) -> tuple[float, float]:
    """(VmRSS in MiB, CPU seconds user + system) of a live process: what a sampler of another
    process (a daemon under load) reads each time."""
    return status_mib("VmRSS", pid) or 0.0, cpu_seconds(pid)


# ---- contenders in child processes ------------------------------------------------------------

def child_result(mode: str, work: Callable[[], dict[str, Any]]) -> int:
    """In a contender's child, after its imports and untimed set-up: time `work`, then print one
    JSON line (mode, seconds, cpu_seconds, rss_import_mib, peak_rss_mib and what `work`
    returned) for `run_child` to read. Returns the child's exit code."""
    rss_import = peak_rss_mib()
    t, cpu = time.perf_counter(), time.process_time()
    info = work()
    sec, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"mode": mode, "seconds": sec, "cpu_seconds": cpu,
                      "rss_import_mib": rss_import, "peak_rss_mib": peak_rss_mib(), **info}))
    return 0


def run_child(script: str | Path, mode: str, *args: str, cwd: Path) -> Result:
    """Run `script --child mode *args` in a fresh interpreter (its own peak RSS, nothing the
    parent imported or built) and return the JSON line it printed last; a child that fails
    raises with the end of its stderr."""
    out = subprocess.run([sys.executable, str(script), "--child", mode, *args],
                         capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"child {mode} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved_rounds(contenders: Sequence[str], rounds: int, lines: int,
                       run_one: Callable[[str], Result]) -> dict[str, list[Result]]:
    """`rounds` rounds of every contender in turn (A B C A B C ...), so a slow spell of a loaded
    machine falls on all of them; each must have read all `lines` lines. Prints each round's
    seconds as it ends."""
    results: dict[str, list[Result]] = {m: [] for m in contenders}
    for rnd in range(rounds):
        for mode in contenders:
            r = run_one(mode)
            if r["lines"] != lines:
                raise RuntimeError(f"{mode} read {r['lines']:,} lines of {lines:,}")
            results[mode].append(r)
        print(f"round {rnd + 1}: " + ", ".join(f"{m} {results[m][-1]['seconds']:.2f}s"
                                              for m in contenders), flush=True)
    return results


# ---- figures over rounds (pure) ---------------------------------------------------------------

def round_figures(rs: Sequence[Result]) -> dict[str, float]:
    """One contender over its rounds: median seconds and CPU seconds; peak RSS and the RSS after
    imports as their maximum (a memory ceiling is the worst round, not a typical one)."""
    return {"seconds": statistics.median(r["seconds"] for r in rs),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "rss_import_mib": max(r["rss_import_mib"] for r in rs)}


def median_ratio(num: Sequence[Result], den: Sequence[Result], key: str = "seconds") -> float:
    """Median over rounds of num[key] / den[key] taken in the same round: both ran under the same
    load, which a ratio of two medians would not ensure."""
    return statistics.median(n[key] / d[key] for n, d in zip(num, den))


def verdict(missed: Sequence[str]) -> int:
    """Print each missed target (`MISSED: ...`), or `all targets met`; the exit code: 1 on a
    miss, else 0."""
    for m in missed:
        print(f"MISSED: {m}")
    if not missed:
        print("all targets met")
    return 1 if missed else 0
