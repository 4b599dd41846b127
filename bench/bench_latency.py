#!/usr/bin/env python3
"""Latency: a line appended to a tailed Zeek log until its alert is in alerts.jsonl (median of 20).

A real `stowaway run` daemon (subprocess) follows a dns.log. Each sample appends one real
geo-lookup line (the recorded A3 `nslookup ipinfo.io`, re-timed to now and given a fresh source
address so no suppression applies) and polls alerts.jsonl every 5 ms until the alert appears.

The latency is the wait for the next collect tick + processing + the merge window (an alert waits
`merge_s` + `daemon.lag_s` of data time for the other side's evidence and for evidence read late).
Two settings are measured: `merge_s = 0`, `lag_s = 0` (the pipeline's own latency) and the
shipped `merge_s = 10`, `lag_s = 10` on a few samples (what a deployment with default settings
sees).

Each line is appended at a random (seeded) offset within the collect tick: after an alert is seen
the bench waits uniform(0, tick) before the next append. A fixed pause would land at the same phase
of the tick every time (a 0.05 s pause always landed about 200 ms before the 0.25 s tick, so every
sample measured the same wait). The distribution is printed (median, p90, min, max) with the tick:
with uniform phases the wait for the tick alone averages tick/2, the rest is the daemon's work.

    .venv/bin/python bench/bench_latency.py [--samples 20] [--tick 0.25] [--seed 13]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from daemon_harness import ROOT, running_daemon, write_config  # bench/

sys.path.insert(0, str(ROOT / "tests"))
from datafiles import exists, read_text, scenario_dir  # noqa: E402  (tests/datafiles.py)

DNS = scenario_dir("geo_lookup") / "zeek" / "dns.log"   # .log or .log.gz


def sample_line() -> tuple[list[str], str]:
    lines = read_text(DNS).splitlines()
    header = [x for x in lines if x.startswith("#") and not x.startswith("#close")]
    hit = next(x for x in lines if not x.startswith("#") and "\tipinfo.io\t" in x)
    return header, hit


def address(i: int) -> str:
    return f"172.17.{1 + i // 250}.{1 + i % 250}"


def count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def measure(merge_s: float | None, n: int, collect_s: float, rng: random.Random,
            lag_s: float | None = None) -> list[float]:
    header, hit = sample_line()
    fields = hit.split("\t")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "zeek").mkdir()
        dns = t / "zeek" / "dns.log"
        dns.write_text("\n".join(header) + "\n")
        # osquery has already reported the n containers (as on a live host): records are
        # attributed at once, so the attribution hold does not apply.
        sys.path.insert(0, str(ROOT))
        from scheduler.collect.osquery_results import snapshot_line

        now = time.time()
        inv = [{"id": f"{i:08x}" + "cd" * 28, "name": f"bench-{i}", "image": "bench/app:1",
                "state": "running", "created": str(int(now - 60)), "started": str(int(now - 60)),
                "ip_addresses": address(i), "privileged": "0", "network_mode": "bridge",
                "runtime": "docker", "source": "api"} for i in range(n)]
        (t / "osqueryd.results.log").write_text(snapshot_line("container_inventory", "bench", now - 30,
                                                             inv) + "\n")
        cfg = write_config(t, "bench", address_map="", collect_interval_s=collect_s,
                           merge_s=merge_s, lag_s=lag_s)
        with running_daemon(cfg):
            out = t / "alerts.jsonl"
            lat: list[float] = []
            end = time.monotonic() + 30
            while not (t / "state.db").exists() and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(1.0)
            for i in range(n):
                f = list(fields)
                f[0] = f"{time.time():.6f}"
                f[1] = f"Cbench{i}"
                f[2] = address(i)                           # a new container: new alert key
                before = count(out)
                t0 = time.perf_counter()
                with open(dns, "a") as fh:
                    fh.write("\t".join(f) + "\n")
                deadline = time.monotonic() + (merge_s or 10.0) + (lag_s or 10.0) + 30
                while count(out) == before and time.monotonic() < deadline:
                    time.sleep(0.005)
                if count(out) == before:
                    raise RuntimeError(f"no alert for sample {i}")
                lat.append(time.perf_counter() - t0)
                time.sleep(rng.uniform(0.0, collect_s))      # a random phase of the next tick
            got = [json.loads(x) for x in out.read_text().splitlines()]
            assert len(got) == n and all(a["rule"] == "location_discovery" for a in got)
            assert all(a["container"]["name"].startswith("bench-") for a in got)
    return lat


def distribution(lat: list[float]) -> str:
    """median, p90, min, max in ms (p90 by the 'inclusive' method: defined for any n >= 2)."""
    p90 = statistics.quantiles(lat, n=10, method="inclusive")[-1]
    return (f"median {statistics.median(lat) * 1000:.0f} ms, p90 {p90 * 1000:.0f}, "
            f"min {min(lat) * 1000:.0f}, max {max(lat) * 1000:.0f} ms of {len(lat)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--tick", type=float, default=0.25, help="daemon collect_interval_s")
    ap.add_argument("--seed", type=int, default=13, help="seed of the append offsets")
    args = ap.parse_args(argv)
    if not exists(DNS):
        print(f"bench_latency: data file {DNS} missing", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    collect_s = args.tick
    lat = measure(0.0, args.samples, collect_s, rng, lag_s=0.0)
    print(f"latency append -> alert written, merge_s=0, lag_s=0, collect tick {collect_s * 1000:.0f} ms, "
          f"appends at random offsets in the tick (seed {args.seed}): {distribution(lat)}")
    print(f"  for reference: the wait for the tick alone averages {collect_s * 500:.0f} ms "
          f"(0 to {collect_s * 1000:.0f}); median minus that: "
          f"{(statistics.median(lat) - collect_s / 2) * 1000:.0f} ms of processing and polling")
    lat10 = measure(None, 3, collect_s, rng)
    print(f"latency with the defaults merge_s=10, lag_s=10 (3 samples): median "
          f"{statistics.median(lat10):.2f} s (the alert waits for the other side's evidence and "
          f"for evidence read late)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
