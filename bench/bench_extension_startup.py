#!/usr/bin/env python3
"""Benchmark: how long the extension takes from start to registration, now that it starts and
verifies its exec capture (kernel proc connector, probe exec seen) before it registers.

Starts the extension R times as osqueryd would (fake manager over Thrift, tests/fake_osqueryd.py)
and times process start -> registerExtension. Baseline, measured in the same run and interleaved:
the same start with `--no-proc-connector` (registration without any capture). Also prints the
capture's own "verified in N ms" figure from the extension's log. Needs root (the connector);
not a unit test.

    .venv/bin/python bench/bench_extension_startup.py [--runs 10]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_osqueryd import FakeOsqueryd, start_extension  # noqa: E402

_VERIFIED = re.compile(r"exec capture verified in (\d+) ms")


def one_start(with_capture: bool) -> tuple[float, float | None]:
    """(seconds from process start to registration, capture-verified ms from the log)."""
    d = Path(tempfile.mkdtemp(prefix="stw-start-"))
    manager = FakeOsqueryd(d).start()
    env = {"STOWAWAY_RUNTIME_SOCKETS": "none"}
    if not with_capture:
        env["STOWAWAY_NO_PROC_CONNECTOR"] = "1"
    t0 = time.monotonic()
    ext = start_extension(manager.path, extra=["--verbose"], env=env)
    try:
        manager.wait_registered(30)
        took = time.monotonic() - t0
    finally:
        ext.terminate()
        ext.wait(10)
        err = ext.stderr.read().decode(errors="replace") if ext.stderr else ""
        manager.stop()
        shutil.rmtree(d, ignore_errors=True)
    m = _VERIFIED.search(err)
    if with_capture and m is None:
        raise SystemExit(f"capture was not verified:\n{err}")
    return took, float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_extension_startup: SKIPPED (needs root for the proc connector)",
              file=sys.stderr)
        return 0
    with_cap, without, verified = [], [], []
    for _ in range(args.runs):
        t, v = one_start(True)
        with_cap.append(t)
        verified.append(v or 0.0)
        without.append(one_start(False)[0])
    med_c, med_b = statistics.median(with_cap), statistics.median(without)
    print(f"start -> registered, capture verified first: median {med_c * 1000:.0f} ms, "
          f"max {max(with_cap) * 1000:.0f} ms ({args.runs} runs)")
    print(f"  of which waiting for the verified capture (extension log): median "
          f"{statistics.median(verified):.0f} ms, max {max(verified):.0f} ms")
    print(f"start -> registered, no capture (baseline): median {med_b * 1000:.0f} ms, "
          f"max {max(without) * 1000:.0f} ms")
    print(f"ratio with/without capture: {med_c / med_b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
