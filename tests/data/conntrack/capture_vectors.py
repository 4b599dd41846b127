"""How the conntrack test vectors in this directory were made (kept for provenance; root only).

Run from the repository root: `.venv/bin/python tests/data/conntrack/capture_vectors.py`.
It starts the uplink lab (scheduler.emulate.uplink_lab: a podman network masqueraded out of a veth
into a netns, nothing leaves the machine), subscribes to conntrack NEW and DESTROY events, runs one
container that makes an HTTP request and a DNS query to the stand-in services, waits for
the UDP entry to expire (its destroy event), and writes:
  events.jsonl   one line per netlink datagram received: {"t_ns", "hex"}
  dump.jsonl     the datagrams of one table dump taken while the flows were tracked
  proc_nf_conntrack.txt  /proc/net/nf_conntrack at the moment of the dump (the second, independent
                 view the tests compare the netlink parse against)
  meta.json      container id, its address, the lab's subnet and host address, kernel version
net.netfilter.nf_conntrack_timestamp is switched on for the run (and restored), so the destroy
event carries the kernel's start/stop times.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from osquery_ext import conntrack as ct  # noqa: E402
from scheduler.emulate import uplink_lab  # noqa: E402

OUT = Path(__file__).resolve().parent
TS = Path("/proc/sys/net/netfilter/nf_conntrack_timestamp")


def main() -> None:
    old_ts = TS.read_text().strip()
    TS.write_text("1")
    lab = uplink_lab.start()
    try:
        sock = ct.open_event_socket()
        got: list[tuple[int, bytes]] = []
        stop = threading.Event()

        def reader() -> None:
            sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    got.append((time.time_ns(), sock.recv(65536)))
                except socket.timeout:
                    pass
        t = threading.Thread(target=reader)
        t.start()
        web = lab.services["ipinfo.io"]
        cid = subprocess.run(
            ["podman", "run", "-d", *lab.run_args(), "localhost/stowaway-busybox:latest", "sh", "-c",
             f"wget -qO- http://ipinfo.io/ >/dev/null; nslookup ipinfo.io {lab.resolver}; "
             "sleep 90"], capture_output=True, text=True, check=True).stdout.strip()
        ip = subprocess.run(["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}"
                             "{{.IPAddress}}{{end}}", cid], capture_output=True, text=True,
                            check=True).stdout.strip()
        time.sleep(3)
        d = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER)
        d.bind((0, 0))
        d.settimeout(2)
        d.send(ct.dump_request())
        dump = []
        while True:
            b = d.recv(1 << 20)
            dump.append(b)
            if ct.parse_datagram(b).done:
                break
        proc_text = Path("/proc/net/nf_conntrack").read_text()
        time.sleep(70)  # the UDP entry expires (30 s) and the GC reaps it: destroy event
        stop.set()
        t.join()
        subprocess.run(["podman", "rm", "-f", "-t", "0", cid], capture_output=True)
        keep = lambda b: any(f.orig_src == ip for f in ct.parse_datagram(b).flows)  # noqa: E731
        (OUT / "events.jsonl").write_text("".join(
            json.dumps({"t_ns": tn, "hex": b.hex()}) + "\n" for tn, b in got if keep(b)))
        (OUT / "dump.jsonl").write_text("".join(json.dumps({"hex": b.hex()}) + "\n" for b in dump))
        (OUT / "proc_nf_conntrack.txt").write_text(proc_text)
        (OUT / "meta.json").write_text(json.dumps({
            "container_id": cid, "container_address": ip, "subnet": lab.subnet,
            "host_address": uplink_lab.HOST_ADDR, "services": lab.services,
            "resolver": lab.resolver, "kernel": platform.release(),
            "captured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
    finally:
        lab.close()
        TS.write_text(old_ts)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root")
    main()
