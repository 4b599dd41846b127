#!/usr/bin/env python3
"""Soak: hours of recorded time through a real `stowaway run`, with faults; the daemon must equal
the replay.

benign_long (30 min of a real podman lab) is played back to back (`--hours` of recorded time; each
loop shifted in time with its own container ids), compressed `--speed` times, into the osquery
results log and Zeek logs the daemon follows, with Zeek rotations (+ a truncated .gz), malformed
lines, `--kills` random kill -9 + restart, and a webhook receiver on 127.0.0.1 flapping (500, hang,
recover) `--flaps` times (tests/soak_harness.py). At the end the alerts are compared with
`stowaway replay` of exactly what was fed.

Prints the daemon's RSS and CPU per hour of recorded time (RSS must stay flat), the alert diff
(missing / duplicate / extra), undelivered and late webhook deliveries, and the CPU per recorded
hour against a baseline measured in the same run: `stowaway replay` of the same input (the batch
path; the daemon's extra work is tailing, the state commit per cycle and the faults).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from soak_harness import looped_feed, run_soak, train_models  # noqa: E402  (tests/)

DEMO = ROOT / "scheduler" / "demo_data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=2.0, help="recorded hours to feed")
    ap.add_argument("--speed", type=float, default=60.0, help="recorded seconds per wall second")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--flaps", type=int, default=3, help="webhook 500/hang/recover cycles")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--lag-s", type=float, default=20.0)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)

    loops = max(1, round(args.hours * 3600 / (31 * 60)))
    work = Path(args.keep or tempfile.mkdtemp(prefix="stowaway-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    t0 = time.monotonic()
    train_models(models, [DEMO / "benign"], window_s=args.window_s)
    feed = looped_feed(DEMO / "benign_long", loops)
    print(f"soak: {len(feed.lines):,} lines, {(feed.end - feed.start) / 3600:.2f} h recorded, "
          f"{loops} loops of benign_long, speed {args.speed:g}x, {args.kills} kill -9, "
          f"{args.flaps} webhook flaps, seed {args.seed} (setup {time.monotonic() - t0:.0f} s)",
          flush=True)
    res = run_soak(work / "run", [], feed=feed, seed=args.seed, speed=args.speed,
                   window_s=args.window_s, lag_s=args.lag_s, models=models, kills=args.kills,
                   webhook_flaps=args.flaps, rotations=6, malformed=True, truncated_gz=True,
                   sample_every_s=900.0, end_timeout_s=600.0)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)

    print(f"{'recorded h':>10} {'RSS MiB':>8} {'CPU s':>8}")
    for h, rss, cpu in res.samples:
        print(f"{h:10.2f} {rss:8.1f} {cpu:8.1f}")
    hours = res.recorded_s / 3600.0
    cpu_total = res.samples[-1][2] if res.samples else 0.0
    rss_vals = [r for _, r, _ in res.samples if r > 0]
    later = [r for h, r, _ in res.samples if h >= hours / 2 and r > 0]
    earlier = [r for h, r, _ in res.samples if 0 < h < hours / 2 and r > 0]
    growth = (max(later) - max(earlier)) if later and earlier else 0.0
    print(f"RSS: min {min(rss_vals):.1f} MiB, max {max(rss_vals):.1f} MiB, second half vs first "
          f"half {growth:+.1f} MiB")
    print(f"daemon CPU: {cpu_total:.1f} s for {hours:.2f} recorded h = "
          f"{cpu_total / hours:.1f} s per recorded hour ({res.kills} restarts included)")
    replay_cpu = child.ru_utime + child.ru_stime - cpu_total
    print(f"baseline (same run): stowaway replay of the same input used "
          f"{replay_cpu:.1f} s CPU = {replay_cpu / hours:.1f} s per recorded hour; "
          f"daemon/replay ratio {cpu_total / max(replay_cpu, 1e-9):.2f}")
    d = res.diff
    print(f"alerts: daemon {len(res.daemon_alerts)}, replay {len(res.replay_alerts)}; "
          f"{len(d.missing)} missing / {len(d.duplicates)} duplicate / {len(d.extra)} extra; "
          f"{len(res.undelivered)} undelivered, {len(res.late_deliveries)} late webhook "
          f"deliveries (retry interval {res.retry_interval_s:g} s)")
    print(f"faults: {res.kills} kill -9, {res.rotations} rotations, "
          f"{sum(res.malformed.values())} malformed lines; not injected (readers raise): "
          f"{res.not_injected or 'none'}; wall {res.wall_s:.0f} s")
    if not d.equal:
        print(d.text()[:4000])
    ok = d.equal and not res.undelivered and not res.late_deliveries
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
