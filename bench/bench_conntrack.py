#!/usr/bin/env python3
"""Benchmark: how many of a burst of short masqueraded flows container_nat_flows catches, and what
the capture costs the extension in CPU.

Runs the extension as osqueryd would (fake manager over Thrift, tests/fake_osqueryd.py) in the
uplink lab (scheduler.emulate.uplink_lab: a podman network masqueraded into a TEST-NET netns,
nothing leaves the machine). One container sleeps on the lab network; a burst of N TCP flows
(connect and close, or with --http one HTTP GET in between: each lives about a
millisecond, or a few) is made from inside its network namespace
(`nsenter -n`, so the flows carry the container's address and are NATed like its own), as fast as
one Python loop goes, to "ipinfo.io" in the lab (a bare accept-and-close listener on port 9, or with --http
the HTTP stand-in). Then the table is read over Thrift and the
flows it holds (by container source port) are compared with the ports the burst used.

Figures: flows sent, caught (with the right container id), burst duration, the extension's CPU
(utime+stime of its process) during the burst and drain, and the same extension's CPU over an
idle interval of the same length measured in the same run (the baseline). Needs root and podman;
not a unit test.

    .venv/bin/python bench/bench_conntrack.py [--flows 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_osqueryd import FakeOsqueryd, constraint, start_extension  # noqa: E402
from scheduler.emulate import uplink_lab  # noqa: E402

IMAGE = "localhost/stowaway-busybox:latest"
CLK = os.sysconf("SC_CLK_TCK")

#: Runs inside the container's network namespace: N short HTTP flows, their source ports as JSON.
BURST = r"""
import json, socket, sys, time
addr, n, http = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
port = 80 if http else 9
ports, failed = [], 0
t0 = time.monotonic()
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((addr, port))
        ports.append(s.getsockname()[1])
        if http:
            s.sendall(b"GET / HTTP/1.0\r\nHost: ipinfo.io\r\n\r\n")
            while s.recv(4096):
                pass
    except OSError:
        failed += 1
    finally:
        s.close()
print(json.dumps({"ports": ports, "failed": failed, "seconds": time.monotonic() - t0}))
"""

#: Runs in the lab's uplink netns: accepts and closes connections on port 9 (a discard stand-in,
#: so the burst is not paced by the HTTP stand-in answering each request).
SINK = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


def _own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, all its threads and its live children (the extension's
    conntrack and exec capture processes), in seconds."""
    total = _own_cpu(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += _own_cpu(int(child))
            except (OSError, ValueError):
                pass
    return total


def join_cost(n: int = 20000) -> tuple[float, float]:
    """Seconds per uplink record through the NAT join (Joiner.net_record with n flows known and
    n matching conn records), and per record through the address join on the same records
    seen from the bridge (the baseline)."""
    from scheduler.collect.osquery_results import OsqueryRow
    from scheduler.detect.join import Joiner

    j = Joiner(default_host="h", hold_s=0, inbound=False, geo_from_names=False)
    uplink, bridge = [], []
    for i in range(n):
        port = 20000 + i % 40000
        caddr = f"10.89.0.{2 + i % 200}"      # container c<k> holds 10.89.0.<2+k>
        cols = {"time": str(1000 + i // 100), "event": "new", "protocol": "tcp",
                "container_address": caddr, "container_port": str(port),
                "remote_address": "198.51.100.201", "remote_port": "80",
                "nat_address": "198.51.100.1", "nat_port": str(port),
                "nat_remote_address": "198.51.100.201", "nat_remote_port": "80",
                "start_time": f"{1000 + i / 100:.6f}", "end_time": "", "container_id": f"c{i % 200}",
                "conntrack_id": str(i + 1)}
        j.observe_nat(OsqueryRow("container_nat_flows", "h", 0.0, "added", cols))
        base = {"ts": 1000 + i / 100 + 0.002, "id.resp_h": "198.51.100.201", "id.resp_p": 80,
                "proto": "tcp", "uid": f"C{i}", "conn_state": "SF"}
        uplink.append({**base, "id.orig_h": "198.51.100.1", "id.orig_p": port})
        bridge.append({**base, "id.orig_h": caddr, "id.orig_p": port})
    for k in range(200):
        j.inventory.observe(OsqueryRow("container_inventory", "h", 0.0, "added", {
            "id": f"c{k}", "name": f"n{k}", "image": "i", "state": "running", "created": "1",
            "started": "1", "ip_addresses": f"10.89.0.{2 + k}"}))
    t = time.perf_counter()
    hits = sum(1 for r in uplink if (nr := j.net_record("conn", r, "h")) and nr.container_id)
    nat = (time.perf_counter() - t) / n
    t = time.perf_counter()
    bhits = sum(1 for r in bridge if (nr := j.net_record("conn", r, "h")) and nr.container_id)
    addr = (time.perf_counter() - t) / n
    assert hits == n and bhits == n, f"attributed: NAT {hits}/{n}, address {bhits}/{n}"
    return nat, addr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--http", action="store_true",
                    help="one HTTP GET per flow (slower burst: the stand-in answers each)")
    args = ap.parse_args()
    why = uplink_lab.skip_reason()
    if why or shutil.which("nsenter") is None:
        print(f"bench_conntrack: SKIPPED ({why or 'nsenter missing'})", file=sys.stderr)
        return 0
    d = Path(tempfile.mkdtemp(prefix="stw-ctb-"))
    tag = uuid.uuid4().hex[:6]
    name = f"stw-ctb-{tag}"
    lab = uplink_lab.start()
    manager = FakeOsqueryd(d).start()
    ext = None
    sink = None
    try:
        ext = start_extension(manager.path, extra=["--verbose"], env={
            "STOWAWAY_RUNTIME_SOCKETS": "none", "STOWAWAY_NO_PROC_CONNECTOR": "1"})
        lines: list[str] = []
        threading.Thread(target=lambda: [lines.append(ln.decode(errors="replace"))
                                         for ln in iter(ext.stderr.readline, b"")],
                         daemon=True).start()
        uuid_, _i, _r = manager.wait_registered()
        end = time.monotonic() + 15
        while not any("conntrack event capture running" in ln for ln in lines):
            if time.monotonic() > end:
                print("bench_conntrack: capture did not start:\n" + "".join(lines), file=sys.stderr)
                return 1
            time.sleep(0.1)
        client = manager.client(uuid_)
        cid = subprocess.run(["podman", "run", "-d", "--name", name, *lab.run_args(), IMAGE,
                              "sleep", "600"], capture_output=True, text=True, check=True).stdout.strip()
        pid = subprocess.run(["podman", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True,
                             text=True, check=True).stdout.strip()
        web = lab.services["ipinfo.io"]
        sink = subprocess.Popen(["ip", "netns", "exec", lab.netns, sys.executable, "-c", SINK],
                                stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        t_start = int(time.time()) - 1
        time.sleep(1.0)

        # baseline: the same extension, idle, for a fixed interval
        idle_wall = 5.0
        c0 = cpu_seconds(ext.pid)
        time.sleep(idle_wall)
        idle_cpu = cpu_seconds(ext.pid) - c0

        c0 = cpu_seconds(ext.pid)
        w0 = time.monotonic()
        burst = subprocess.run(["nsenter", "-t", pid, "-n", sys.executable, "-c", BURST, web,
                                str(args.flows), "1" if args.http else "0"], capture_output=True, text=True, check=True)
        sent = json.loads(burst.stdout)
        # a source port can come back within the burst (the sink closes first): count flows
        # per port, not ports
        want = Counter(sent["ports"])
        n_sent = sum(want.values())

        def caught() -> list[dict]:
            resp = client.generate("container_nat_flows", [constraint("time", 4, t_start)])
            per_port: dict[int, list[dict]] = {}
            for r in resp.response:
                if r["event"] == "new" and r["remote_address"] == web \
                        and int(r["container_port"]) in want:
                    per_port.setdefault(int(r["container_port"]), []).append(r)
            return [r for p, rs in per_port.items() for r in rs[:want[p]]]

        got: list[dict] = []
        drain_end = time.monotonic() + 10
        while time.monotonic() < drain_end:
            got = caught()
            if len(got) >= n_sent:
                break
            time.sleep(0.2)
        wall = time.monotonic() - w0
        burst_cpu = cpu_seconds(ext.pid) - c0
        right = sum(1 for r in got if r["container_id"] == cid)
        natted = sum(1 for r in got if r["nat_address"] == uplink_lab.HOST_ADDR)
        idle_rate = idle_cpu / idle_wall
        print(f"flows sent            {n_sent} in {sent['seconds']:.2f} s "
              f"({n_sent / max(sent['seconds'], 1e-9):.0f}/s) from {len(want)} source ports, "
              f"{sent['failed']} failed")
        print(f"caught (new rows)     {len(got)}/{n_sent} = {100 * len(got) / max(n_sent, 1):.1f}%")
        print(f"right container id    {right}/{len(got)}; NAT address {uplink_lab.HOST_ADDR}: "
              f"{natted}/{len(got)}")
        print(f"extension CPU         {burst_cpu:.2f} s over {wall:.1f} s (burst + drain + "
              f"table reads) = {1000 * burst_cpu / max(len(got), 1):.2f} ms per caught flow")
        print(f"extension CPU share   burst {100 * burst_cpu / wall:.1f}% of one core; idle "
              f"baseline {100 * idle_rate:.2f}% ({idle_cpu:.2f} s over {idle_wall:.0f} s, clock "
              f"tick {1000 / CLK:.0f} ms); ratio burst/idle = "
              f"{(burst_cpu / wall) / max(idle_rate, 1 / CLK / idle_wall):.0f}x")
        nat_s, addr_s = join_cost()
        print(f"NAT join              {1e6 * nat_s:.1f} us per uplink record (20,000 flows "
              f"known, all attributed); address join on the same records from the bridge "
              f"{1e6 * addr_s:.1f} us; ratio {nat_s / addr_s:.2f}x")
        client.close()
        return 0 if len(got) == n_sent else 2
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(5)
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
        if ext is not None and ext.poll() is None:
            ext.terminate()
            try:
                ext.wait(10)
            except subprocess.TimeoutExpired:
                ext.kill()
        manager.stop()
        lab.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
