#!/usr/bin/env python3
"""A real Zeek cluster (manager, proxy, two workers) run by Zeek's supervisor, no zeekctl.

Used by the btest ``cluster_resolved_ip``. Everything happens inside a network namespace made
for the run (and deleted afterwards): loopback for Broker, and two veth pairs, one per worker.
Worker-1 sniffs ``cap1``, worker-2 sniffs ``cap2``; packets are written into the other ends
(``inj1``, ``inj2``) with scapy's sendp, so nothing leaves the namespace.

1. the supervisor starts the four nodes with the package and the test's helper script (which
   drops marker files: data files read, nodes up, answer relayed);
2. a container (172.17.0.5) asks the resolver for ipinfo.io and gets 34.117.59.81: sent on
   inj1, so only worker-1 sees the DNS answer;
3. once worker-2 has the answer from the manager's relay, the container opens a TCP
   connection to 34.117.59.81:443 without a TLS client hello (no SNI), and a second one to
   93.184.215.14:443 (a control no answer named): sent on inj2, so only worker-2 sees them;
4. the manager's container_geo.log must show the resolved_ip row for the first connection
   (worker-2 could only know the address from worker-1's answer), none for the control.

Prints what the btest baseline holds; exits 1 with the nodes' stderr when a step times out.
Usage: zeek_cluster.py PACKAGE_DIR HELPER_SCRIPT (as root, with scapy importable).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

CONTAINER = "172.17.0.5"
RESOLVER = "10.0.0.2"
ANSWER = "34.117.59.81"
CONTROL = "93.184.215.14"
NODES = ("manager", "proxy-1", "worker-1", "worker-2")

LAYOUT = """
event zeek_init()
	{{
	if ( ! Supervisor::is_supervisor() )
		return;

	local cluster: table[string] of Supervisor::ClusterEndpoint;
	cluster["manager"] = Supervisor::ClusterEndpoint($role=Supervisor::MANAGER,
	    $host=127.0.0.1, $p=27761/tcp);
	cluster["proxy-1"] = Supervisor::ClusterEndpoint($role=Supervisor::PROXY,
	    $host=127.0.0.1, $p=27762/tcp);
	cluster["worker-1"] = Supervisor::ClusterEndpoint($role=Supervisor::WORKER,
	    $host=127.0.0.1, $p=27763/tcp, $interface="cap1");
	cluster["worker-2"] = Supervisor::ClusterEndpoint($role=Supervisor::WORKER,
	    $host=127.0.0.1, $p=27764/tcp, $interface="cap2");

	for ( name, ep in cluster )
		{{
		local nc = Supervisor::NodeConfig($name=name, $directory=name, $cluster=cluster,
		    $addl_user_scripts=vector("{package}", "{helper}"),
		    $stderr_file="stderr.log", $stdout_file="stdout.log");
		if ( ep?$interface )
			nc$interface = ep$interface;
		Supervisor::create(nc);
		}}
	}}
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 45.0) -> None:
    """Poll ``ok`` every 0.1 s; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_namespace(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    for i in (1, 2):
        sh("ip", "-n", ns, "link", "add", f"inj{i}", "type", "veth", "peer", "name", f"cap{i}")
        for dev in (f"inj{i}", f"cap{i}"):
            # No IPv6 on the test links: the kernel's own router solicitations stay out.
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", dev, "up")


def send(ns: str, iface: str, packets_py: str) -> None:
    """sendp() the scapy expression ``packets_py`` on ``iface`` inside the namespace."""
    code = ("from scapy.all import Ether, IP, UDP, TCP, DNS, DNSQR, DNSRR, Raw, sendp\n"
            "ETH = Ether(src='02:00:00:00:00:01', dst='02:00:00:00:00:02')\n"
            f"sendp({packets_py}, iface={iface!r}, verbose=0)\n")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True)


def dns_lookup() -> str:
    q = (f"ETH/IP(src={CONTAINER!r}, dst={RESOLVER!r})/UDP(sport=40001, dport=53)/"
         "DNS(id=4660, rd=1, qd=DNSQR(qname='ipinfo.io', qtype='A'))")
    a = (f"ETH/IP(src={RESOLVER!r}, dst={CONTAINER!r})/UDP(sport=53, dport=40001)/"
         "DNS(id=4660, qr=1, aa=1, rd=1, ra=1, qd=DNSQR(qname='ipinfo.io', qtype='A'), "
         f"an=DNSRR(rrname='ipinfo.io', type='A', ttl=300, rdata={ANSWER!r}))")
    return f"[{q}, {a}]"


def tcp_session(server: str, sport: int) -> str:
    """Handshake, 64 bytes that are not a TLS client hello, and both FINs."""
    c = f"IP(src={CONTAINER!r}, dst={server!r})"
    s = f"IP(src={server!r}, dst={CONTAINER!r})"
    ct = f"TCP(sport={sport}, dport=443"
    st = f"TCP(sport=443, dport={sport}"
    return ("[" + ", ".join([
        f"ETH/{c}/{ct}, flags='S', seq=1000)",
        f"ETH/{s}/{st}, flags='SA', seq=5000, ack=1001)",
        f"ETH/{c}/{ct}, flags='A', seq=1001, ack=5001)",
        f"ETH/{c}/{ct}, flags='PA', seq=1001, ack=5001)/Raw(b'\\x00' * 64)",
        f"ETH/{s}/{st}, flags='A', seq=5001, ack=1065)",
        f"ETH/{c}/{ct}, flags='FA', seq=1065, ack=5001)",
        f"ETH/{s}/{st}, flags='FA', seq=5001, ack=1066)",
        f"ETH/{c}/{ct}, flags='A', seq=1066, ack=5002)",
    ]) + "]")


def geo_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    fields: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields\t"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"))))
    return [[r["method"], r["service"], r["host"], r["id.orig_h"], r["id.resp_h"],
             r["id.resp_p"]] for r in rows]


def run(package: Path, helper: Path, work: Path, ns: str) -> int:
    markers = work / "markers"
    markers.mkdir()
    layout = work / "layout.zeek"
    layout.write_text(LAYOUT.format(package=package, helper=helper))
    env = dict(os.environ, STOWAWAY_MARKERS=str(markers), ZEEK_DNS_FAKE="1",
               ZEEK_DISABLE_ZEEKYGEN="1")
    make_namespace(ns)
    sup_err = work / "supervisor.err"
    with open(sup_err, "wb") as err_file:
        sup = subprocess.Popen(["ip", "netns", "exec", ns, "zeek", "-j", str(layout)],
                               cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                               start_new_session=True)
    try:
        def have(name: str) -> bool:
            if sup.poll() is not None:
                raise TimeoutError(f"the supervisor exited ({sup.returncode}): "
                                   f"{sup_err.read_text()[-2000:]}")
            return (markers / name).exists()

        wait_until("the manager to see proxy-1, worker-1 and worker-2",
                   lambda: all(have(f"up-{n}-manager") for n in NODES[1:]), timeout=90)
        wait_until("both workers to read the data files",
                   lambda: have("data-worker-1") and have("data-worker-2"))
        print("cluster up: manager, proxy-1, worker-1 (cap1), worker-2 (cap2)")
        # Sniffing starts before zeek_init ends, but give the capture a moment to settle.
        send(ns, "inj1", dns_lookup())
        wait_until("worker-2 to get ipinfo.io's answer relayed by the manager",
                   lambda: have("relay-worker-2"))
        print("worker-2 received the answer learned by worker-1 through the manager")
        send(ns, "inj2", f"{tcp_session(ANSWER, 50001)} + {tcp_session(CONTROL, 50002)}")
        log = work / "manager" / "container_geo.log"
        wait_until("the resolved_ip row in the manager's container_geo.log",
                   lambda: any(r[0] == "resolved_ip" for r in geo_rows(log)))
        # The control connection closed together with the first one: let its removal pass.
        wait_until("both connections in the manager's conn.log",
                   lambda: (work / "manager" / "conn.log").is_file() and
                   (work / "manager" / "conn.log").read_text().count(f"\t{CONTAINER}\t") >= 3)
        for row in sorted(geo_rows(log)):
            print("container_geo: " + " ".join(row))
        return 0
    except TimeoutError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        for node in NODES:
            err = work / node / "stderr.log"
            if err.is_file():
                print(f"--- {node} stderr ---\n{err.read_text()[-2000:]}", file=sys.stderr)
        print(f"markers: {sorted(p.name for p in markers.iterdir())}", file=sys.stderr)
        return 1
    finally:
        os.killpg(sup.pid, signal.SIGTERM)
        try:
            sup.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    package, helper = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    ns = f"stowaway-zc-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="zeek-cluster-", dir=os.environ.get("TMPDIR")))
    try:
        return run(package, helper, work, ns)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        if os.environ.get("STOWAWAY_KEEP_CLUSTER_DIR"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
