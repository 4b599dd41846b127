#!/usr/bin/env python3
"""Benchmark: container_processes generate time vs a bare loop reading the same /proc files.

Starts N containers (default 20) each running `sh` with K `sleep 3600` children (default 25, so
520 container processes), plus a `podman system service` so the table resolves names and images as
it would in production. Then, in the same run and interleaved (so both see the same host state and
cache warmth), it times:

- `generate`: tables.generate_container_processes (full rows: attribution, classification,
  names from the runtime API);
- `bare`: the minimum any implementation must do: list /proc, read every pid's cgroup, and for the
  container pids read stat, cmdline, status, readlink exe and ns/net (the same files generate reads).

Prints both (median, min over the repeats), the ratio of medians (target <= 1.5x) and the first
(cold) generate, which includes the runtime API list call. Cleans up every container and the
service, also on failure or Ctrl-C. Needs root and podman; not a unit test.

    .venv/bin/python bench/bench_container_processes.py [--containers 20] [--per 25] [--repeat 15]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osquery_ext import tables  # noqa: E402
from osquery_ext.runtimes import Runtimes  # noqa: E402

IMAGE = "localhost/stowaway-busybox:latest"


def bare_loop(proc: str = "/proc", container_pids: set[str] | None = None) -> int:
    """Read the files container_processes reads, doing nothing else; returns the pid count.

    Every pid's cgroup is read; the other files only for `container_pids` (the pids the table
    reported, so both read exactly the same files), or, before that set is known, for any pid
    whose cgroup names a runtime."""
    n = 0
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        base = f"{proc}/{pid}"
        try:
            with open(base + "/cgroup", "rb") as f:
                cg = f.read()
        except OSError:
            continue
        if container_pids is not None:
            if pid not in container_pids:
                continue
        elif b"libpod" not in cg and b"docker" not in cg and b"kubepods" not in cg:
            continue
        try:
            for name in ("/stat", "/cmdline", "/status"):
                with open(base + name, "rb") as f:
                    f.read()
            os.readlink(base + "/exe")
            os.readlink(base + "/ns/net")
        except OSError:
            continue
        n += 1
    return n


def podman(*args: str, check: bool = True) -> str:
    p = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--per", type=int, default=25, help="sleep processes per container")
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    if shutil.which("podman") is None or os.geteuid() != 0:
        print("bench_container_processes: SKIPPED (needs root and podman)", file=sys.stderr)
        return 0
    tag = uuid.uuid4().hex[:6]
    names = [f"stw-bench-{tag}-{i:02d}" for i in range(args.containers)]
    tmp = Path(tempfile.mkdtemp(prefix="stw-bench-"))
    sock = tmp / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = (f"i=0; while [ $i -lt {args.per} ]; do sleep 3600 & i=$((i+1)); done; wait")
        t0 = time.monotonic()
        for n in names:
            podman("run", "-d", "--name", n, "--network", "none", IMAGE, "sh", "-c", script)
        src = tables.Sources(runtimes=Runtimes({"podman": f"unix://{sock}"}, timeout=2))
        want = args.containers * (args.per + 1)
        while time.monotonic() - t0 < 120:
            if sock.exists() and bare_loop() >= want:
                break
            time.sleep(0.5)
        cold_t = time.perf_counter()
        rows = tables.generate_container_processes(src, None)
        cold = time.perf_counter() - cold_t
        ours = [r for r in rows if r["container_name"].startswith(f"stw-bench-{tag}")]
        total_pids = len([p for p in os.listdir("/proc") if p.isdigit()])
        container_pids = {r["pid"] for r in rows}
        gen_t, bare_t = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            n_rows = len(tables.generate_container_processes(src, None))
            gen_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            n_bare = bare_loop(container_pids=container_pids)
            bare_t.append(time.perf_counter() - t)
        gm, bm = statistics.median(gen_t), statistics.median(bare_t)
        print(f"host pids: {total_pids}; container processes: {n_rows} rows "
              f"({len(ours)} in the {args.containers} bench containers, all named: "
              f"{all(r['image'] == IMAGE for r in ours)}); bare loop saw {n_bare}")
        print(f"generate container_processes: median {gm * 1000:.1f} ms, min "
              f"{min(gen_t) * 1000:.1f} ms (cold first call, incl. importing the docker SDK and the runtime API list: "
              f"{cold * 1000:.1f} ms)")
        print(f"bare /proc loop (cgroup, stat, cmdline, status, exe, ns/net): median "
              f"{bm * 1000:.1f} ms, min {min(bare_t) * 1000:.1f} ms")
        ratio = gm / bm if bm else float("inf")
        print(f"ratio generate/bare: {ratio:.2f}x (target <= 1.5x) -> "
              f"{'OK' if ratio <= 1.5 else 'ABOVE TARGET'}")
        if len(ours) < args.containers * (args.per + 1):
            print(f"warning: only {len(ours)} bench processes seen", file=sys.stderr)
        return 0
    finally:
        for n in names:
            podman("rm", "-f", "-t", "0", n, check=False)
        service.terminate()
        try:
            service.wait(15)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
