"""`stowaway emulate`: run the adversary emulation in real containers and prove each detection fired.

Why: every detection ends with a validation step, "run the technique, see the alert". This module
runs the techniques this project detects (T1614 location discovery from inside containers, container
churn) and a benign control in real containers, through the Docker Engine API (Docker, or Podman's
compatible service), then checks each layer and prints a pass / fail / not checked table:

1. extension: the osquery tables (in-process, or a running osqueryd over Thrift) saw the processes
   and the lifecycle events, including the exec of a `--rm` container that lives under a second;
2. zeek: the Zeek logs show the lookups from the container's address: with `--zeek` from a live
   `zeek -i` on the run's bridge (scheduler/emulate/zeeklive.py, the address map rewritten live),
   or from `--zeek-logs`; otherwise "not checked", never "pass";
3. scheduler: the pipeline, fed with what the extension saw, raised the expected alerts attributed to
   the right container id and image, and none on the benign control.

Offline by default: containers sit on an internal network (no route out, runtime DNS off) with a
stand-in resolver and stand-in geolocation services in a network namespace on that bridge
(scheduler/standin.py), so no packet leaves the machine. `--live` is for the operator's own hosts
only. Everything created is removed at the end, on errors and on Ctrl-C / SIGTERM (emulab.Cleanup).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from scheduler.emulate import emulab, standin
from scheduler.emulate.emulab import LABEL_ROLE, LABEL_RUN

log = logging.getLogger(__name__)

SCENARIOS = ("geo-lookup", "churn", "benign")
#: Self-test of the checker (not part of "all"): a container that does nothing suspicious, with a
#: T1614 alert declared as expected. It must end in a failed check and a non-zero exit.
SELFTEST = "selftest-miss"
PASS, FAIL, NOT_CHECKED = "pass", "FAIL", "not checked"
RULE_LOCATION = "location_discovery"
RULE_CHURN = "container_churn"
T1614 = "MITRE ATT&CK T1614 System Location Discovery (external-IP / IP-geolocation lookup)"


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Options:
    scenarios: list[str]
    runtime_socket: str | None = None
    image: str | None = None
    build_image_from: str | None = None
    record: str | None = None
    live: bool = False
    zeek_logs: str | None = None
    zeek_live: bool = False          # --zeek: zeek -i on the run's bridge with the package
    osquery_socket: str | None = None
    churn_count: int = 20
    churn_seconds: float = 30.0
    benign_seconds: float = 20.0
    keep_workdir: bool = False
    report: str | None = None        # write the checks as JSON here (for CI)


@dataclass
class Action:
    """One emulated technique step (ground truth)."""

    action_id: str
    label: str
    how_run: str                      # "exec" into a running container | "run --rm"
    command: list[str]
    dest_name: str = ""
    protocol: str = ""                # http | https | dns | "" (no network)
    match: str = ""                   # substring the process's cmdline must contain
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    container_ip: str = ""
    start: float = 0.0
    end: float = 0.0
    exit_code: int | None = None
    output: str = ""
    lifetime_s: float | None = None   # run --rm: create -> die by the runtime's own event times


@dataclass
class Expect:
    """An alert the scheduler must (or, with present=False, must not) raise."""

    rule: str
    container_id: str = ""            # "" = any container of `image`
    image: str = ""
    present: bool = True
    what: str = ""
    forbid_ids: set[str] = field(default_factory=set)  # for present=False: these containers


@dataclass
class Check:
    scenario: str
    layer: str
    what: str
    result: str
    detail: str = ""


@dataclass
class ScenarioRun:
    name: str
    start: float = 0.0
    end: float = 0.0
    image: str = ""
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> info
    actions: list[Action] = field(default_factory=list)
    expects: list[Expect] = field(default_factory=list)
    #: (container id, cmdline substring, what, must come from an exec event)
    process_expects: list[tuple[str, str, str, bool]] = field(default_factory=list)
    lifecycle_expects: list[tuple[str, str]] = field(default_factory=list)     # (container id, what)
    #: (table, what, predicate): some row of `table` must satisfy the predicate
    row_expects: list[tuple[str, str, Callable[[dict[str, str]], bool]]] = field(default_factory=list)
    benign: list[dict[str, Any]] = field(default_factory=list)
    churn_summary: dict[str, Any] | None = None
    pcap: Path | None = None
    recording: Path | None = None
    alerts: list[dict[str, Any]] | None = None
    pipeline_note: str = ""

    @property
    def ids(self) -> set[str]:
        return set(self.containers)


@dataclass
class Lab:
    """Everything a scenario needs; created once per invocation."""

    client: Any
    conn: emulab.RuntimeConn
    run_id: str
    image: str
    workdir: Path
    cleanup: emulab.Cleanup
    net: emulab.LabNetwork | None = None
    standin: emulab.Standin | None = None
    live: bool = False
    known_ids: set[str] = field(default_factory=set)
    zeek: Any = None                  # zeeklive.LiveZeek with --zeek

    @property
    def prefix(self) -> str:
        return f"stwemu-{self.run_id}-"

    def wanted(self, cid: str, name: str) -> bool:
        """Does a table row belong to this emulation run?"""
        # a copy: the host view's poll thread asks while the run adds the ids it starts
        if cid and any(cid.startswith(k) or k.startswith(cid) for k in tuple(self.known_ids)
                       if len(cid) >= 12):
            return True
        return bool(name) and name.lstrip("/").startswith(self.prefix)


# ---------------------------------------------------------------------------------------------
# Container helpers


def run_kwargs(lab: Lab, role: str) -> dict[str, Any]:
    """The create arguments every emulation container shares: our network, our resolver, labels."""
    kw: dict[str, Any] = {"labels": {LABEL_RUN: lab.run_id, LABEL_ROLE: role}, "detach": True}
    if lab.net is not None:
        kw["network"] = lab.net.name
    if lab.standin is not None and not lab.live:
        kw["dns"] = [lab.standin.spec["resolver"]]
    return kw


def start_container(lab: Lab, sr: ScenarioRun, role: str, command: list[str], auto_remove: bool = False,
                    name: str | None = None) -> Any:
    """Create and start one container; remember its id before anything else can go wrong."""
    cname = name or f"{lab.prefix}{role}"
    kw = run_kwargs(lab, role)
    t0 = time.time()
    c = lab.client.containers.create(lab.image, command, name=cname, auto_remove=auto_remove,
                                     **{k: v for k, v in kw.items() if k != "detach"})
    lab.known_ids.add(c.id)
    sr.containers[c.id] = {"id": c.id, "name": cname, "image": lab.image, "role": role,
                           "command": command, "created": t0, "auto_remove": auto_remove}
    c.start()
    sr.containers[c.id]["started"] = time.time()
    return c


def container_ip(lab: Lab, c: Any) -> str:
    try:
        c.reload()
    except Exception:  # noqa: BLE001 - a --rm container may be gone already
        return ""
    nets = (c.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    for info in nets.values():
        if info.get("IPAddress"):
            ip = str(info["IPAddress"])
            if lab.zeek is not None:   # --zeek: the live address map learns it now
                lab.zeek.map_container(ip, c.id, c.name.lstrip("/"), lab.image)
            return ip
    return ""


def has_default_route(route_table: str) -> bool:
    """Does a /proc/net/route text hold a default route (destination 00000000)?"""
    for line in route_table.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            return True
    return False


# ---------------------------------------------------------------------------------------------
# What counts as a leak (used by the tests' leak monitors; see docs/validation.md "No leak")

#: Link-local multicast: 224.0.0.0/24 (RFC 5771, Local Network Control Block) and ff02::/16
#: (RFC 4291, link-local scope) are never forwarded by a router, so such a packet cannot leave the
#: link it is on. The host kernel sends these on every interface by itself (IGMPv3 reports
#: 0.0.0.0 > 224.0.0.22 when a bridge or veth joins a group, MLD, router solicitations), so their
#: presence on a capture depends on timing, not on what the emulation did.
LINK_LOCAL_MULTICAST = (ipaddress.ip_network("224.0.0.0/24"), ipaddress.ip_network("ff02::/16"))
#: Addresses that only exist on one link: unspecified (DAD, IGMP before an address) and link-local.
_LINK_SCOPE_SOURCES = (ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128"),
                       ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


@dataclass(frozen=True)
class LeakScope:
    """What belongs to an emulation run: its container subnet(s), the stand-in addresses that are
    not on that subnet (the fake public IP), and the names the stand-in answers for."""

    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    hosts: frozenset[str]
    names: frozenset[str]

    def owns(self, addr: str) -> bool:
        ip = _ip(addr)
        return ip is not None and (str(ip) in self.hosts
                                   or any(ip.version == n.version and ip in n for n in self.nets))

    def names_service(self, name: str) -> bool:
        n = name.lower().rstrip(".")
        return any(n == s or n.endswith("." + s) for s in self.names)


def leak_scope(*subnets: str) -> LeakScope:
    """The LeakScope of a run on `subnets` (e.g. the run's /24, or the whole lab block)."""
    spec = standin.build_spec("10.213.0", "")
    return LeakScope(nets=tuple(ipaddress.ip_network(s, strict=False) for s in subnets),
                     hosts=frozenset({spec["public_ip"]}),
                     names=frozenset(n.lower() for n in spec["records"]))


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(addr).split("%", 1)[0])
    except ValueError:
        return None


def _in(addr: str, nets: Iterable[Any]) -> bool:
    ip = _ip(addr)
    return ip is not None and any(ip.version == n.version and ip in n for n in nets)


def is_uplink_leak(src: str, dst: str, names: Iterable[str], scope: LeakScope) -> bool:
    """A packet seen on the host's uplink is a leak when it is to or from the run's subnet or a
    stand-in address, or names an emulated service (a DNS question or answer for ipinfo.io...,
    however it got there). Everything else on the uplink is the host's own traffic, including its
    link-local multicast housekeeping, which is not the emulation's doing; a lab address on a
    link-local multicast packet on the uplink *is* a leak (the lab link reached the uplink)."""
    return scope.owns(src) or scope.owns(dst) or any(scope.names_service(n) for n in names)


def escapes_lab(src: str, dst: str, scope: LeakScope) -> bool:
    """A packet captured on the lab bridge escapes the lab unless both ends are on the run's
    subnet, or it is link-scoped: link-local multicast (LINK_LOCAL_MULTICAST) from the lab, the
    unspecified or a link-local address, or link-local unicast (fe80::/10) between two link-local
    ends. Such packets cannot cross a router, so they prove nothing left the machine; anything
    else (a lab address talking to 8.8.8.8, an off-lab source on the bridge) is an escape."""
    if _in(dst, LINK_LOCAL_MULTICAST):
        return not (_in(src, scope.nets) or _in(src, _LINK_SCOPE_SOURCES))
    link_local = (ipaddress.ip_network("fe80::/10"),)
    if _in(src, link_local) and _in(dst, link_local):
        return False
    return not (_in(src, scope.nets) and _in(dst, scope.nets))


def assert_no_default_route(lab: Lab, c: Any) -> None:
    """Safety net: abort before any technique runs if the container could reach beyond the bridge.
    Read from the host (/proc/<pid>/net/route of the container's init), so it works for any image
    and costs no exec."""
    if lab.live:
        return
    c.reload()
    pid = int((c.attrs.get("State") or {}).get("Pid") or 0)
    try:
        table = Path(f"/proc/{pid}/net/route").read_text() if pid > 0 else ""
    except OSError as exc:
        raise RuntimeError(f"cannot read the routes of {c.name} (pid {pid}): {exc}") from exc
    if not table:
        raise RuntimeError(f"cannot read the routes of {c.name}: no pid")
    if has_default_route(table):
        raise RuntimeError(f"container {c.name} has a default route; refusing to run")


def exec_action(lab: Lab, c: Any, act: Action) -> Action:
    act.container_id, act.container_name, act.image = c.id, c.name, lab.image
    act.start = time.time()
    res = c.exec_run(act.command)
    act.end = time.time()
    act.exit_code = res.exit_code
    act.output = (res.output or b"").decode("utf-8", "replace")[:2000]
    return act


def wait_gone(lab: Lab, cid: str, timeout: float = 30.0) -> None:
    """Wait until an auto-removed container has exited (404 = it is already removed)."""
    import docker

    try:
        lab.client.api.wait(cid, timeout=timeout)
    except docker.errors.NotFound:
        pass
    except Exception as exc:  # noqa: BLE001 - podman answers 500 for a just-removed container
        if "no such container" not in str(exc).lower():
            log.debug("wait %s: %s", cid[:12], exc)


def stop_container(c: Any) -> None:
    import docker

    try:
        c.remove(force=True)
    except docker.errors.NotFound:
        pass


# ---------------------------------------------------------------------------------------------
# Scenarios


def geo_actions(live: bool) -> list[Action]:
    """The seed's T1614 emulation: HTTP, DNS-only and HTTPS(SNI) lookups by exec, plus a --rm one."""
    return [
        Action("G1", "location_discovery", "exec", ["wget", "-qO-", "http://ipinfo.io/"],
               "ipinfo.io", "http", "ipinfo.io"),
        Action("G2", "location_discovery_dns", "exec",
               ["nslookup", "myip.opendns.com", "resolver1.opendns.com"],
               "myip.opendns.com", "dns", "myip.opendns.com"),
        Action("G3", "location_discovery_tls", "exec",
               ["wget", "-qO-", "https://api.ipify.org/?format=json"],
               "api.ipify.org", "https", "api.ipify.org"),
        Action("G4", "location_discovery_oneshot", "run --rm", ["wget", "-qO-", "http://ifconfig.me/"],
               "ifconfig.me", "http", "ifconfig.me"),
    ]


def scenario_geo_lookup(lab: Lab, sr: ScenarioRun, opts: Options) -> None:
    web = start_container(lab, sr, "web", ["httpd", "-f", "-p", "8080"])
    assert_no_default_route(lab, web)
    ip = container_ip(lab, web)
    time.sleep(1.0)
    if lab.zeek is not None and ip:
        # Zeek started before this container: its name reaches Zeek only by the map's re-read.
        took = lab.zeek.wait_mapped(ip)
        log.info("zeek re-read the address map with %s in %.1fs", ip, took)
    for act in geo_actions(lab.live):
        if act.how_run == "exec":
            exec_action(lab, web, act)
            act.container_ip = ip
            sr.expects.append(Expect(RULE_LOCATION, web.id, lab.image, what=f"T1614 alert on {web.name}"))
            sr.process_expects.append((web.id, act.match, f"{act.action_id} {' '.join(act.command)}", False))
        else:
            act.start = time.time()
            c = start_container(lab, sr, "oneshot", act.command, auto_remove=True)
            act.container_id, act.container_name, act.image = c.id, c.name, lab.image
            act.container_ip = container_ip(lab, c)
            wait_gone(lab, c.id)
            act.end = time.time()
            act.exit_code = 0
            sr.containers[c.id]["finished"] = act.end
            sr.expects.append(Expect(RULE_LOCATION, c.id, lab.image, what=f"T1614 alert on --rm {c.name}"))
            sr.process_expects.append((c.id, act.match, f"{act.action_id} --rm {' '.join(act.command)}", True))
            sr.lifecycle_expects.append((c.id, f"start+die of --rm {c.name}"))
        sr.actions.append(act)
        time.sleep(0.5)
    sr.benign.append({"containers": [web.name], "image": lab.image,
                      "what": "busybox httpd on :8080, target of the exec'd lookups"})
    time.sleep(1.5)
    stop_container(web)


def scenario_churn(lab: Lab, sr: ScenarioRun, opts: Options) -> None:
    n = max(1, opts.churn_count)
    gap = opts.churn_seconds / n
    ids = []
    first = time.time()
    for i in range(n):
        t = time.time()
        c = start_container(lab, sr, "churn", ["sh", "-c", f"echo job {i}; sleep 1"], auto_remove=True,
                           name=f"{lab.prefix}churn-{i:02d}")
        ids.append(c.id)
        sr.lifecycle_expects.append((c.id, f"create/start of {c.name}"))
        sr.actions.append(Action(f"C{i + 1:02d}", "container_churn", "run --rm", ["sh", "-c", f"echo job {i}; sleep 1"],
                                 container_id=c.id, container_name=c.name, image=lab.image, start=t))
        time.sleep(max(0.0, t + gap - time.time()))
    for cid in ids:
        wait_gone(lab, cid, timeout=15)
    last = time.time()
    for a in sr.actions:
        a.end = last
    sr.expects.append(Expect(RULE_CHURN, "", lab.image, what=f"churn alert for image {lab.image}"))
    sr.churn_summary = {"label": "container_churn", "image": lab.image, "containers": n,
                        "first_create": first, "last_remove": last, "duration_s": round(last - first, 3),
                        "creates_per_minute": round(n / max(1e-6, (last - first) / 60), 2)}


def scenario_benign(lab: Lab, sr: ScenarioRun, opts: Options) -> None:
    """The control: a web service with exec'd health checks and a worker calling a benign API."""
    web = start_container(lab, sr, "web", ["httpd", "-f", "-p", "8080"])
    assert_no_default_route(lab, web)
    web_ip = container_ip(lab, web)
    api = "http://api.example.com/v1/items" if not lab.live else "http://example.com/"
    worker = start_container(lab, sr, "worker", [
        "sh", "-c", f"while true; do wget -qO- {api} >/dev/null; wget -qO- http://{web_ip}:8080/ >/dev/null; "
                    "sleep 3; done"])
    deadline = time.time() + opts.benign_seconds
    checks = 0
    while time.time() < deadline:
        res = web.exec_run(["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"])
        checks += 1
        if res.exit_code not in (0, 1):
            log.debug("health check exit %s", res.exit_code)
        time.sleep(2.0)
    sr.process_expects.append((web.id, "httpd", f"httpd service in {web.name}", False))
    sr.process_expects.append((web.id, "127.0.0.1:8080", f"health-check wget in {web.name}", False))
    sr.process_expects.append((worker.id, "api.example.com", f"API call in {worker.name}", False))
    net_name = lab.net.name if lab.net else ""
    sr.row_expects.append(("container_sockets", f"httpd listening on :8080 in {web.name}",
                           lambda r, cid=web.id: same_id(r.get("container_id", ""), cid)
                           and r.get("local_port") == "8080" and r.get("protocol") == "tcp"
                           and r.get("state", "").upper() == "LISTEN"))
    sr.row_expects.append(("container_inventory", f"{web.name} with {web_ip} on {net_name}",
                           lambda r, cid=web.id: same_id(r.get("id", ""), cid)
                           and web_ip in (r.get("ip_addresses") or "").split(",")
                           and net_name in (r.get("networks") or "").split(",")))
    ids = {web.id, worker.id}
    sr.expects.append(Expect(RULE_LOCATION, present=False, forbid_ids=ids,
                             what="no T1614 alert on the benign control"))
    sr.expects.append(Expect(RULE_CHURN, present=False, forbid_ids=ids, image=lab.image,
                             what="no churn alert on the benign control"))
    sr.benign.append({"containers": [web.name], "image": lab.image,
                      "what": f"busybox httpd on :8080, health-checked by exec every 2 s ({checks} checks)"})
    sr.benign.append({"containers": [worker.name], "image": lab.image,
                      "what": f"loop: GET {api}, GET http://<web>:8080/, sleep 3"})
    stop_container(worker)
    stop_container(web)


def scenario_selftest_miss(lab: Lab, sr: ScenarioRun, opts: Options) -> None:
    """A container that does nothing suspicious, with a T1614 alert declared as expected: the checks
    must report the miss (proves a missing detection really fails the run)."""
    c = start_container(lab, sr, "quiet", ["sh", "-c", "sleep 2"], auto_remove=True)
    wait_gone(lab, c.id)
    sr.expects.append(Expect(RULE_LOCATION, c.id, lab.image,
                             what=f"T1614 alert on {c.name} (self-test: must be missing)"))
    sr.lifecycle_expects.append((c.id, f"start+die of {c.name}"))


#: Scenario sets registered from outside this module (scheduler.emulate.misuse_scenarios.install,
#: called by the CLI): scenario name -> hooks with `zeek(sr, lab, opts, workdir) -> (dir, why)` and
#: `check_zeek(sr, dir, why) -> [Check]`; and the scheduler config the pipeline layer runs with.
#: Data, not imports, so this module and those that build on its helpers form no import cycle.
EXTRA_SCENARIOS: dict[str, Any] = {}
PIPELINE_CONFIG: Callable[[], Any] | None = None

RUNNERS: dict[str, Callable[[Lab, ScenarioRun, Options], None]] = {
    "geo-lookup": scenario_geo_lookup,
    "churn": scenario_churn,
    "benign": scenario_benign,
    SELFTEST: scenario_selftest_miss,
}


# ---------------------------------------------------------------------------------------------
# Checks


def short(cid: str) -> str:
    return (cid or "")[:12]


def same_id(a: str, b: str) -> bool:
    a, b = (a or "").lower(), (b or "").lower()
    return bool(a and b) and len(min(a, b, key=len)) >= 12 and (a.startswith(b) or b.startswith(a))


def norm_image(name: str) -> str:
    """Compare image names the way Docker and Podman spell them differently."""
    n = (name or "").strip()
    for p in ("docker.io/library/", "docker.io/", "localhost/"):
        if n.startswith(p):
            n = n[len(p):]
    if ":" not in n.split("/")[-1] and "@" not in n:
        n += ":latest"
    return n


def check_extension(sr: ScenarioRun, view: Any, source_note: str) -> list[Check]:
    """Layer 1: the extension's tables saw the expected processes and lifecycle events."""
    if view is None:
        return [Check(sr.name, "extension", "tables saw the processes and events", NOT_CHECKED, source_note)]
    out = []
    t0, t1 = sr.start - 2, sr.end + 5
    procs = view.rows("container_processes", t0, t1) + view.rows("container_process_events", t0, t1)
    for cid, needle, what, need_event in sr.process_expects:
        hits = [r for r in procs if same_id(r.get("container_id", ""), cid) and needle in (r.get("cmdline") or "")]
        if need_event and hits and not any("time_nano" in r for r in hits):
            out.append(Check(sr.name, "extension", f"{what} in {short(cid)}", FAIL,
                             "seen by a process poll only: no container_process_events (exec) row"))
        elif hits:
            ev = [r for r in hits if "time_nano" in r]
            ld = any(r.get("location_discovery") == "1" for r in hits)
            src = "exec event" if ev else "process poll"
            extra = f"; location_discovery=1 ({hits[0].get('indicator', '')})" if ld else ""
            out.append(Check(sr.name, "extension", f"{what} in {short(cid)}", PASS, f"{src}{extra}"))
        else:
            out.append(Check(sr.name, "extension", f"{what} in {short(cid)}", FAIL,
                             f"no container_processes/container_process_events row with '{needle}'"))
    for table, what, pred in sr.row_expects:
        rows = view.rows(table, t0, t1)
        hit = next((r for r in rows if pred(r)), None)
        out.append(Check(sr.name, "extension", f"{table}: {what}", PASS if hit else FAIL,
                         "seen" if hit else f"no matching row among {len(rows)}"))
    events = view.rows("container_events", t0, t1)
    for cid, what in sr.lifecycle_expects:
        mine = [r for r in events if same_id(r.get("container_id", ""), cid)]
        acts = sorted({r.get("action", "") for r in mine})
        life = lifetime(mine)
        if life is not None and cid in sr.containers:
            sr.containers[cid]["lifetime_s"] = life
            for a in sr.actions:
                if a.container_id == cid:
                    a.lifetime_s = life
        need = {"start", "die"} if "die" in what else {"create", "start"}
        ok = need <= set(acts) or ({"create"} <= set(acts) and "create" in need and "start" in acts)
        if "create/start" in what:
            ok = bool({"create", "start"} & set(acts))
        out.append(Check(sr.name, "extension", f"container_events: {what}", PASS if ok else FAIL,
                         "actions " + (",".join(acts) or "none")
                         + (f"; lived {life:.3f}s (create->die)" if life is not None else "")))
    return _collapse_churn(sr, out)


def lifetime(rows: list[dict[str, str]]) -> float | None:
    """Seconds from a container's create (else init/start) event to its die event, by the runtime's
    own event times (a client-side stopwatch would add API latency)."""
    def first(action: str) -> float | None:
        ts = [int(r["time_nano"]) / 1e9 for r in rows if r.get("action") == action and r.get("time_nano")]
        return min(ts) if ts else None

    start = next((t for t in (first("create"), first("init"), first("start")) if t is not None), None)
    die = first("die")
    return round(die - start, 3) if start is not None and die is not None and die >= start else None


def _collapse_churn(sr: ScenarioRun, checks: list[Check]) -> list[Check]:
    """One line for the N churn containers instead of N lines."""
    if sr.name != "churn":
        return checks
    life = [c for c in checks if c.what.startswith("container_events")]
    rest = [c for c in checks if not c.what.startswith("container_events")]
    if not life:
        return checks
    ok = sum(1 for c in life if c.result == PASS)
    return rest + [Check(sr.name, "extension", f"container_events: create/start of the {len(life)} churn containers",
                         PASS if ok == len(life) else FAIL, f"{ok}/{len(life)} seen")]


def check_standin(sr: ScenarioRun, events: list[dict[str, Any]] | None) -> list[Check]:
    """Layer 0 (the emulation itself): each lookup really reached the stand-in, from the container's
    address. Not a detection layer; it tells "the technique did not run" apart from "not detected"."""
    net_actions = [a for a in sr.actions if a.protocol in ("http", "https", "dns") and a.dest_name]
    if not net_actions:
        return []
    if events is None:
        return [Check(sr.name, "emulation", f"{len(net_actions)} lookup(s) reached the service",
                      NOT_CHECKED, "--live: no stand-in to ask")]
    out = []
    for a in net_actions:
        kinds = {"http": ("http",), "https": ("tls", "https"), "dns": ("dns",)}[a.protocol]
        hits = [e for e in events if e.get("kind") in kinds
                and a.dest_name in (e.get("query"), e.get("sni"), str(e.get("host", "")).split(":")[0])
                and (not a.container_ip or e.get("client") == a.container_ip)
                and a.start - 1 <= float(e.get("ts", 0)) <= (a.end or a.start) + 2]
        what = f"{a.action_id} {a.protocol} {a.dest_name} reached the stand-in"
        out.append(Check(sr.name, "emulation", what, PASS if hits else FAIL,
                         f"from {hits[0].get('client')}" + (f", SNI {hits[0]['sni']}" if hits[0].get("sni") else "")
                         if hits else f"exit {a.exit_code}: {a.output.strip()[:80]}"))
    return out


def check_scheduler(sr: ScenarioRun) -> list[Check]:
    """Layer 3: expected alerts raised (and forbidden ones not), attributed to container and image."""
    if sr.alerts is None:
        return [Check(sr.name, "scheduler", e.what, NOT_CHECKED, sr.pipeline_note) for e in sr.expects]
    out = []
    seen_keys: set[tuple[str, str]] = set()
    for e in sr.expects:
        key = (e.rule, e.container_id)
        if e.present and key in seen_keys:
            continue  # several exec'd actions in one container: one check line
        seen_keys.add(key)
        of_rule = [a for a in sr.alerts if a.get("rule") == e.rule]
        if e.present:
            hits = [a for a in of_rule
                    if (not e.container_id or same_id(_cid(a), e.container_id))
                    and (not e.image or norm_image(_cimage(a)) == norm_image(e.image)
                         or _image_in_details(a, e.image))]
            if hits:
                a = hits[0]
                out.append(Check(sr.name, "scheduler", e.what, PASS,
                                 f"{e.rule} on {short(_cid(a)) or '-'} {_cimage(a) or a.get('details', {}).get('image', '')}"))
            else:
                near = [f"{short(_cid(a))}/{_cimage(a)}" for a in of_rule][:3]
                out.append(Check(sr.name, "scheduler", e.what, FAIL,
                                 f"no {e.rule} alert for {short(e.container_id) or e.image}"
                                 + (f" (got {', '.join(near)})" if near else f" ({len(sr.alerts)} alerts in all)")))
        else:
            bad = [a for a in of_rule if any(same_id(_cid(a), i) for i in e.forbid_ids)
                   or (e.rule == RULE_CHURN and e.image and norm_image(_cimage(a)) == norm_image(e.image))]
            out.append(Check(sr.name, "scheduler", e.what, PASS if not bad else FAIL,
                             f"{len(bad)} {e.rule} alert(s)" + (f": {bad[0].get('title', '')}" if bad else "")))
    return out


def _cid(alert: dict[str, Any]) -> str:
    c = alert.get("container") or {}
    return str(c.get("id", "") if isinstance(c, dict) else "")


def _cimage(alert: dict[str, Any]) -> str:
    c = alert.get("container") or {}
    return str(c.get("image", "") if isinstance(c, dict) else "")


def _image_in_details(alert: dict[str, Any], image: str) -> bool:
    d = alert.get("details") or {}
    return isinstance(d, dict) and norm_image(str(d.get("image", ""))) == norm_image(image)


def check_zeek(sr: ScenarioRun, zeek_dir: str | None) -> list[Check]:
    """Layer 2: the Zeek logs show each network lookup from the right address, when configured."""
    net_actions = [a for a in sr.actions if a.protocol in ("http", "https", "dns") and a.dest_name]
    if not net_actions:
        return []
    if not zeek_dir:
        return [Check(sr.name, "zeek", f"{len(net_actions)} lookup(s) in Zeek logs", NOT_CHECKED,
                      "no --zeek-logs given")]
    try:
        records = load_zeek(Path(zeek_dir), sr.start - 5, sr.end + 10)
    except Exception as exc:  # noqa: BLE001
        return [Check(sr.name, "zeek", "read Zeek logs", FAIL, str(exc))]
    if not any(records.values()):
        return [Check(sr.name, "zeek", f"{len(net_actions)} lookup(s) in Zeek logs", FAIL,
                      f"no dns/http/ssl record in {zeek_dir} during the scenario")]
    return [zeek_match(sr.name, a, records) for a in net_actions]


def load_zeek(directory: Path, t0: float, t1: float) -> dict[str, list[dict[str, Any]]]:
    from scheduler.collect import zeeklog

    out: dict[str, list[dict[str, Any]]] = {}
    for stream in ("dns", "http", "ssl", "container_geo"):
        recs = []
        for path in zeeklog.find_logs(directory, stream):
            for rec in zeeklog.iter_zeek_log(path):
                ts = rec.get("ts")
                if isinstance(ts, (int, float)) and t0 <= ts <= t1:
                    recs.append(rec)
        out[stream] = recs
    return out


def zeek_match(scenario: str, a: Action, records: dict[str, list[dict[str, Any]]]) -> Check:
    """Does one action show up in the Zeek records (name, and source address when known)?"""
    name = a.dest_name.lower()
    lo, hi = a.start - 2, (a.end or a.start) + 5

    def from_us(rec: dict[str, Any]) -> bool:
        return not a.container_ip or rec.get("id.orig_h") == a.container_ip

    def in_time(rec: dict[str, Any]) -> bool:
        return lo <= float(rec.get("ts") or 0) <= hi

    field_of = {"dns": ("dns", "query"), "http": ("http", "host"), "https": ("ssl", "server_name")}
    stream, fld = field_of[a.protocol]
    hits = [r for r in records.get(stream, []) if str(r.get(fld) or "").lower().split(":")[0] == name
            and from_us(r) and in_time(r)]
    geo = [r for r in records.get("container_geo", []) if in_time(r) and name in json.dumps(r).lower()]
    what = f"{a.action_id} {a.protocol} {a.dest_name} in {stream}.log"
    if hits:
        return Check(scenario, "zeek", what, PASS, f"{len(hits)} record(s) from {a.container_ip or '?'}"
                     + (f"; container_geo x{len(geo)}" if geo else ""))
    return Check(scenario, "zeek", what, FAIL, f"no {stream}.log {fld}={name} from {a.container_ip or '?'}")


# ---------------------------------------------------------------------------------------------
# Recording and the pipeline


def ground_truth(sr: ScenarioRun, lab: Lab) -> dict[str, Any]:
    """Labels in the shared fixtures' schema (plus the emulation's own facts)."""
    malicious = []
    for a in sr.actions:
        d = asdict(a)
        d["start_iso"], d["end_iso"] = _iso(a.start), _iso(a.end)
        d.pop("match", None)
        malicious.append(d)
    if sr.name == "benign":
        malicious = []
    gt: dict[str, Any] = {
        "scenario": sr.name.replace("-", "_"),
        "capture_window": {"start": sr.start, "end": sr.end},
        "time_unit": "epoch seconds (UTC), host clock = pcap clock",
        "attack_technique": T1614 if sr.name in ("geo-lookup", SELFTEST) else (
            "container churn (burst of short-lived containers of one image)" if sr.name == "churn" else None),
        "malicious_actions": malicious,
        "benign_activity": sr.benign,
        "containers": [dict(v, created_iso=_iso(v.get("created", 0))) for v in sr.containers.values()],
        "expected_alerts": [{"rule": e.rule, "container_id": e.container_id, "image": e.image,
                             "present": e.present, "what": e.what,
                             "forbid_ids": sorted(e.forbid_ids)} for e in sr.expects],
        "emulation": {"run_id": lab.run_id, "engine": lab.conn.engine, "engine_version": lab.conn.version,
                      "image": lab.image, "live": lab.live,
                      "network": lab.net.name if lab.net else "", "subnet": str(lab.net.subnet) if lab.net else "",
                      "bridge": lab.net.bridge if lab.net else ""},
    }
    if sr.churn_summary:
        gt["churn_summary"] = sr.churn_summary
    if sr.name == "benign":
        gt["note"] = "benign control: no malicious action was run"
    if lab.standin is not None:
        gt["standin_events"] = [e for e in lab.standin.events()
                                if sr.start - 1 <= float(e.get("ts", 0)) <= sr.end + 2 and e.get("kind") != "ready"]
    return gt


def _iso(ts: float) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_recording(sr: ScenarioRun, lab: Lab, view: Any, target: Path, zeek_dir: str | None) -> Path:
    """A recording (docs/recordings.md format) of what the host view saw, with labels and the pcap."""
    from scheduler.collect.recording import RecordingMeta, RecordingWriter

    clear_recording(target)
    meta = RecordingMeta(name=sr.name.replace("-", "_"), host=socket.gethostname(), environment="emulation",
                         source=f"stowaway emulate run {lab.run_id} ({lab.conn.engine} {lab.conn.version})",
                         time_range=[sr.start, sr.end])
    with RecordingWriter(target, meta, compress=False) as w:
        if view is not None:
            w.write_lines(view.result_lines(sr.start - 2, sr.end + 5, ids=_full_ids(sr, view)))
        if zeek_dir:
            for p in sorted(Path(zeek_dir).glob("*.log*")):
                w.add_zeek_log(p, compress=False)
        w.write_ground_truth(ground_truth(sr, lab))
    if sr.pcap is not None and sr.pcap.exists():
        shutil.copyfile(sr.pcap, target / "scenario.pcap")
    if lab.standin is not None:
        (target / "standin_events.jsonl").write_text("".join(
            json.dumps(e) + "\n" for e in lab.standin.events()
            if sr.start - 1 <= float(e.get("ts", 0)) <= sr.end + 2))
    return target


#: What a recording written here consists of (and all that is ever deleted when one is rewritten).
RECORDING_ENTRIES = ("meta.json", "osquery", "zeek", "ground_truth.json", "scenario.pcap", "standin_events.jsonl")


def record_dir_problem(path: str, scenarios: list[str]) -> str | None:
    """Why `--record path` must be refused (None: fine). A directory is reused only when it is empty
    or holds earlier recordings (its own, or one per scenario): never wipe an unrelated directory."""
    p = Path(path)
    if not p.exists():
        return None
    if not p.is_dir():
        return f"--record {path}: exists and is not a directory"
    allowed = set(RECORDING_ENTRIES) | {s.replace("-", "_") for s in [*SCENARIOS, *EXTRA_SCENARIOS,
                                                                      SELFTEST]}
    stray = sorted(e.name for e in p.iterdir() if e.name not in allowed)
    if stray:
        return (f"--record {path}: directory holds other files ({', '.join(stray[:5])}); "
                "give an empty or new directory")
    return None


def clear_recording(target: Path) -> None:
    """Remove an earlier recording's own entries only (see RECORDING_ENTRIES)."""
    for name in RECORDING_ENTRIES:
        p = target / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _full_ids(sr: ScenarioRun, view: Any) -> set[str]:
    """Container ids as the tables spell them (full ids; we may only know the full id anyway)."""
    return {cid for cid in sr.ids}


def run_pipeline(recording: Path, config: Any = None) -> tuple[list[dict[str, Any]] | None, str]:
    """Feed a recording through the scheduler's pipeline; (alerts as dicts, note) or (None, why)."""
    try:
        from scheduler import replay as replay_mod
    except ImportError as exc:
        return None, f"scheduler.replay not available ({exc})"
    fn, name = replay_mod.replay, "replay"
    try:
        result = fn(recording, config)
    except Exception as exc:  # noqa: BLE001 - a crash in the pipeline is a failed layer, reported
        log.exception("pipeline on %s failed", recording)
        return [], f"pipeline raised {type(exc).__name__}: {exc}"
    alerts = getattr(result, "alerts", result)
    out = []
    for a in alerts or []:
        out.append(a.to_dict() if hasattr(a, "to_dict") else dict(a))
    return out, f"pipeline.{name}"


# ---------------------------------------------------------------------------------------------
# Orchestration


def open_view(lab: Lab, opts: Options) -> tuple[Any, Any, str]:
    """(source, HostView, note); (None, None, why) when the extension cannot be used."""
    from scheduler.emulate import emuview

    try:
        if opts.osquery_socket:
            src = emuview.ThriftTables(opts.osquery_socket)
        else:
            src = emuview.InProcessTables(lab.conn.engine, lab.conn.url)
    except emuview.SourceUnavailable as exc:
        return None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the layer is not checked, not passed
        log.exception("extension source failed")
        return None, None, f"extension source failed: {type(exc).__name__}: {exc}"
    lab.cleanup.push("extension source", src.close)
    view = emuview.HostView(src, socket.gethostname(), lab.wanted)
    view.start()
    lab.cleanup.push("host view", view.stop)
    note = src.kind + (f" ({'; '.join(src.notes)})" if getattr(src, "notes", None) else "")
    return src, view, note


def run_scenario(lab: Lab, name: str, opts: Options, view: Any) -> ScenarioRun:
    sr = ScenarioRun(name=name, image=lab.image)
    tcpdump = None
    if lab.net is not None and not lab.live:
        sr.pcap = lab.workdir / f"{name}.pcap"
        tcpdump = emulab.start_tcpdump(lab.net.bridge, sr.pcap, lab.cleanup)
    sr.start = time.time()
    log.info("scenario %s: start", name)
    try:
        RUNNERS[name](lab, sr, opts)
    finally:
        sr.end = time.time()
        if tcpdump is not None:
            time.sleep(0.3)
            emulab._stop_process(tcpdump, signal.SIGINT)
    log.info("scenario %s: %d containers, %.1fs", name, len(sr.containers), sr.end - sr.start)
    return sr


def emulate(opts: Options, out: Any = sys.stdout) -> int:
    """Run the requested scenarios, check every layer, print the table. Exit status:
    0 every check passed or was not checked, 1 a check failed (expected detection missing),
    2 set-up error, 130 interrupted."""
    run_id = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"stwemu-{run_id}-"))
    state = emulab.RunState(run_id)
    cleanup = emulab.Cleanup(state)
    cleanup.push("run state file", state.remove)
    try:
        state.update(workdir=str(workdir))
    except OSError as exc:  # no /run (not root): the run still cleans up after itself
        log.info("no run state file: %s", exc)
        cleanup.state = None
    if not opts.keep_workdir:
        cleanup.push(f"workdir {workdir}", lambda: shutil.rmtree(workdir, ignore_errors=True))
    checks: list[Check] = []
    runs: list[ScenarioRun] = []
    status = 0
    lab: Lab | None = None
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, _frame: Any) -> None:
        raise emulab.Interrupted(f"signal {signum}")

    if emulab._in_main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"stowaway emulate: run {run_id}, scenarios {', '.join(opts.scenarios)}"
              f"{' (LIVE: real services)' if opts.live else ' (offline stand-in)'}", file=out, flush=True)
        if opts.record and (why := record_dir_problem(opts.record, opts.scenarios)):
            raise ValueError(why)
        url = emulab.resolve_socket(opts.runtime_socket)
        if url is None:
            url = emulab.start_podman_service(cleanup, workdir)
        client, conn = emulab.connect(url)
        cleanup.push("runtime client", client.close)
        image = emulab.ensure_image(client, opts.image, opts.build_image_from, cleanup)
        lab = Lab(client=client, conn=conn, run_id=run_id, image=image, workdir=workdir,
                  cleanup=cleanup, live=opts.live)
        cleanup.push(f"exec monitors of run {run_id}", lambda: emulab.reap_exec_monitors(set(lab.known_ids)))
        cleanup.push(f"containers of run {run_id}", lambda: emulab.sweep_containers(client, run_id))
        lab.net = emulab.create_network(client, conn, run_id, cleanup, live=opts.live)
        if not opts.live:
            emulab.ensure_bridge(lab.net.bridge, cleanup)
            lab.standin = emulab.start_standin(lab.net, run_id, workdir, cleanup)
        if opts.zeek_live:
            lab.zeek = start_live_zeek(lab, workdir, cleanup)
            print(f"  zeek -i {lab.net.bridge} with the package (address map "
                  f"{lab.zeek.map_path})", file=out, flush=True)
        print(f"  runtime {conn.engine} {conn.version} at {url}; image {image}; network {lab.net.name} "
              f"{lab.net.subnet} (bridge {lab.net.bridge}, internal={lab.net.internal})", file=out, flush=True)
        _src, view, view_note = open_view(lab, opts)
        print(f"  host view: {view_note}", file=out, flush=True)
        time.sleep(0.5)
        for name in opts.scenarios:
            sr = run_scenario(lab, name, opts, view)
            runs.append(sr)
            print(f"  ran {name}: {len(sr.containers)} container(s), {sr.end - sr.start:.1f}s", file=out, flush=True)
        time.sleep(2.0 if view is not None else 0)  # let the last events reach the tables
        if view is not None:
            view.stop()
        if lab.zeek is not None:
            lab.zeek.stop()   # flushes its logs before the zeek layer reads them
        for sr in runs:
            checks.extend(check_standin(sr, lab.standin.events() if lab.standin is not None else None))
            checks.extend(check_extension(sr, view, view_note))
            target = _recording_target(opts, sr, workdir, len(runs))
            extra = EXTRA_SCENARIOS.get(sr.name)
            # A registered scenario set may bring Zeek logs into the recording (the named
            # rules' network evidence is Zeek's): (log dir or None, why not).
            zdir, zwhy = extra.zeek(sr, lab, opts, workdir) if extra is not None else (None, "")
            sr.recording = write_recording(sr, lab, view, target, str(zdir) if zdir else None) \
                if view is not None or opts.record else None
            if view is None:
                sr.alerts, sr.pipeline_note = None, "no host view to feed the pipeline (extension not checked)"
            else:
                sr.alerts, sr.pipeline_note = run_pipeline(
                    sr.recording, PIPELINE_CONFIG() if PIPELINE_CONFIG is not None else None)
            if extra is not None:
                checks.extend(extra.check_zeek(sr, str(zdir) if zdir else None, zwhy))
            elif lab.zeek is not None:
                checks.extend(check_live_zeek(sr, lab.zeek))
            else:
                checks.extend(maybe_zeek(sr, opts))
            checks.extend(check_scheduler(sr))
        print_table(checks, out)
        status = 1 if any(c.result == FAIL for c in checks) else 0
        if opts.report:
            write_report(Path(opts.report), run_id, lab, runs, checks, status)
        if opts.record:
            print(f"recording(s): {', '.join(str(sr.recording) for sr in runs)}", file=out)
    except (KeyboardInterrupt, emulab.Interrupted) as exc:
        print(f"\nstowaway emulate: interrupted ({exc or 'Ctrl-C'}); cleaning up", file=out, flush=True)
        status = 130
    except Exception as exc:  # noqa: BLE001 - report set-up errors plainly, then clean up
        log.debug("emulate failed", exc_info=True)
        print(f"stowaway emulate: error: {exc}", file=sys.stderr, flush=True)
        status = 2
    finally:
        cleanup.run()
        if emulab._in_main_thread():
            signal.signal(signal.SIGTERM, old_term)
    if cleanup.failed:
        print(f"cleanup problems: {'; '.join(cleanup.failed)}", file=sys.stderr)
        status = status or 2
    print(f"cleanup: removed {len(cleanup.done)} item(s) of run {run_id}", file=out, flush=True)
    return status


def start_live_zeek(lab: Lab, workdir: Path, cleanup: emulab.Cleanup) -> Any:
    """--zeek: the package on the run's bridge for the whole emulation (stopped by cleanup too)."""
    from scheduler.emulate import zeeklive

    if lab.net is None or lab.live:
        raise ValueError("--zeek needs the offline lab network (not --live)")
    if shutil.which("zeek") is None:
        raise ValueError("--zeek: zeek is not on PATH")
    z = zeeklive.LiveZeek(lab.net.bridge, str(lab.net.subnet), workdir / "zeek-live")
    cleanup.push("zeek -i", z.stop)
    z.start()
    if z.proc is not None:
        cleanup.track(z.proc, "zeek")
    return z


def check_live_zeek(sr: ScenarioRun, z: Any) -> list[Check]:
    """Zeek layer from the live logs: each lookup seen, and the mapped containers named on the
    package's container_geo.log rows (the map re-read while Zeek ran)."""
    from scheduler.emulate import zeeklive

    checks = check_zeek(sr, str(z.out_dir))
    records = load_zeek(z.out_dir, sr.start - 5, sr.end + 10)
    checks += zeeklive.check_map_rows(sr.name, sr.actions, records.get("container_geo", []),
                                      z, Check, PASS, FAIL, NOT_CHECKED)
    return checks


def maybe_zeek(sr: ScenarioRun, opts: Options) -> list[Check]:
    """Zeek layer: run Zeek on the scenario's pcap when asked and Zeek is installed, then check."""
    if not opts.zeek_logs:
        return check_zeek(sr, None)
    zdir = Path(opts.zeek_logs)
    if shutil.which("zeek") and sr.pcap is not None and sr.pcap.exists():
        zdir = zdir / sr.name
        zdir.mkdir(parents=True, exist_ok=True)
        scripts = Path(__file__).resolve().parents[2] / "zeek_scripts"
        cmd = ["zeek", "-C", "-r", str(sr.pcap)] + ([str(scripts)] if (scripts / "__load__.zeek").exists() else [])
        proc = subprocess.run(cmd, cwd=zdir, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return [Check(sr.name, "zeek", "zeek on the scenario pcap", FAIL, proc.stderr.strip()[:200])]
    return check_zeek(sr, str(zdir))


def _recording_target(opts: Options, sr: ScenarioRun, workdir: Path, n: int) -> Path:
    if not opts.record:
        return workdir / "recordings" / sr.name
    base = Path(opts.record)
    return base if n == 1 else base / sr.name.replace("-", "_")


def write_report(path: Path, run_id: str, lab: Lab, runs: list[ScenarioRun], checks: list[Check],
                 status: int) -> None:
    """The table as JSON, for CI systems that gate a rollout on it."""
    data = {
        "run_id": run_id, "engine": lab.conn.engine, "engine_version": lab.conn.version,
        "image": lab.image, "live": lab.live, "exit_status": status,
        "scenarios": [{"name": sr.name, "start": sr.start, "end": sr.end,
                       "containers": sorted(sr.ids), "recording": str(sr.recording) if sr.recording else None,
                       "alerts": len(sr.alerts) if sr.alerts is not None else None} for sr in runs],
        "checks": [asdict(c) for c in checks],
        "summary": {k: sum(1 for c in checks if c.result == k) for k in (PASS, FAIL, NOT_CHECKED)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def print_table(checks: Iterable[Check], out: Any = sys.stdout) -> None:
    rows = [("scenario", "layer", "check", "result", "detail")]
    rows += [(c.scenario, c.layer, c.what, c.result, c.detail) for c in checks]
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(4)]
    print("", file=out)
    for i, r in enumerate(rows):
        cells = [r[j][:widths[j]].ljust(widths[j]) for j in range(4)]
        print("  ".join(cells) + "  " + r[4], file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 6, file=out)
    counts = {k: sum(1 for c in checks if c.result == k) for k in (PASS, FAIL, NOT_CHECKED)}
    print(f"\n{counts[PASS]} pass, {counts[FAIL]} fail, {counts[NOT_CHECKED]} not checked", file=out, flush=True)
