#!/usr/bin/env python3
"""Benchmark: how many sub-second `--rm` wget containers the process-event connector catches.

Runs the extension as osqueryd would (fake manager over Thrift, tests/fake_osqueryd.py), then
launches R one-shot `podman run --rm --network none ... wget -qO- http://ipinfo.io/` containers
(busybox wget fails at once on DNS, so each process lives well under a millisecond after exec),
optionally while a thread hammers container_processes generate through Thrift to load the
extension. Reports how many of the R wget execs appear in container_process_events with their
cmdline and location_discovery=1, and how many lifecycles appear in container_events. Needs root
and podman; not a unit test.

    .venv/bin/python bench/bench_exec_capture.py [--runs 30] [--load]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_osqueryd import FakeOsqueryd, constraint, start_extension  # noqa: E402

IMAGE = "localhost/stowaway-busybox:latest"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--load", action="store_true", help="query container_processes meanwhile")
    args = ap.parse_args()
    if shutil.which("podman") is None or os.geteuid() != 0:
        print("bench_exec_capture: SKIPPED (needs root and podman)", file=sys.stderr)
        return 0
    d = Path(tempfile.mkdtemp(prefix="stw-cap-"))
    sock = d / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager = FakeOsqueryd(d).start()
    ext = None
    stop = threading.Event()
    tag = uuid.uuid4().hex[:6]
    names = [f"stw-cap-{tag}-{i:03d}" for i in range(args.runs)]
    try:
        while not sock.exists():
            time.sleep(0.1)
        ext = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": f"podman=unix://{sock}"})
        uuid_, _i, _r = manager.wait_registered()
        time.sleep(1.5)
        queries = [0]

        def load() -> None:
            c = manager.client(uuid_)
            while not stop.is_set():
                c.generate("container_processes")
                queries[0] += 1
        if args.load:
            threading.Thread(target=load, daemon=True).start()
        t0 = int(time.time()) - 1
        for n in names:
            subprocess.run(["podman", "run", "--rm", "--name", n, "--network", "none", IMAGE,
                            "wget", "-qO-", "http://ipinfo.io/"], capture_output=True)
        time.sleep(2)
        stop.set()
        c = manager.client(uuid_)
        ev = c.generate("container_events", [constraint("time", 32, t0)]).response
        pe = c.generate("container_process_events", [constraint("time", 32, t0)]).response
        ids = {r["container_id"]: r["name"] for r in ev if r["name"] in set(names)}
        full = {n for n in names
                if {"create", "start", "die", "destroy"} <= {r["action"] for r in ev if r["name"] == n}}
        caught = {ids[r["container_id"]] for r in pe if r["container_id"] in ids
                  and r["cmdline"] == "wget -qO- http://ipinfo.io/" and r["location_discovery"] == "1"}
        seen = {ids[r["container_id"]] for r in pe if r["container_id"] in ids
                and r["name"] == "wget"}
        print(f"one-shot --rm wget containers: {args.runs}"
              f"{f' (under load: {queries[0]} container_processes queries meanwhile)' if args.load else ''}")
        print(f"  full lifecycle create/start/die/destroy in container_events: {len(full)}/{args.runs}")
        print(f"  wget exec with cmdline, location_discovery=1: {len(caught)}/{args.runs}")
        print(f"  wget exec seen at all (incl. already exited, empty cmdline): {len(seen)}/{args.runs}")
        return 0
    finally:
        stop.set()
        if ext is not None and ext.poll() is None:
            ext.terminate()
            ext.wait(10)
        manager.stop()
        for n in names:
            subprocess.run(["podman", "rm", "-f", "-t", "0", n], capture_output=True)
        service.terminate()
        try:
            service.wait(15)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
