"""A host uplink in a box: containers on a podman bridge, masqueraded out of a veth into a network
namespace that plays the uplink and the "internet" (the stand-in services).

Why: sensors sit on the uplink, where the host's NAT has replaced every container address with the
host's own. To check that Stowaway still attributes what such a sensor sees (through the host's
conntrack, osquery_ext.conntrack), the emulation and the tests need that exact topology without a
single packet leaving the machine:

    container --podman bridge--> host (netavark MASQUERADE) --veth <host_if>--> netns <netns>
    10.89.N.x                    198.51.100.1                               198.51.100.2, .201 ...

- Addresses are TEST-NET-2 (198.51.100.0/24, RFC 5737), routed to the veth explicitly (the
  connected route of the host's veth address); the netns has no default route.
- A guard in the mangle table's FORWARD chain (before netavark's own filter rules, which it
  re-inserts as containers come and go) drops anything forwarded from the podman subnet that does
  not go out of the lab veth, and anything from the veth that does not go to the bridge. So even a
  bug (a wrong --add-host, a real resolver) cannot reach the machine's real uplink.
- Containers find the services by `--add-host name:addr` (no DNS needed); the stand-in also runs
  the DNS resolver (scheduler.emulate.standin) for `nslookup name <resolver>`.
- Everything is undone by `close()`, also after a failure half-way through setup.

Root only (netns, veth, iptables, rootful podman). Only one lab at a time per host: the TEST-NET
/24 is routed to it (a second lab refuses to start rather than share the route).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

UPLINK_PREFIX = "198.51.100"           # TEST-NET-2
HOST_ADDR = f"{UPLINK_PREFIX}.1"       # what the uplink sees as every container's source
UPLINK_PEER = f"{UPLINK_PREFIX}.2"     # the "upstream router" end in the netns


class LabError(RuntimeError):
    """The lab could not be set up; the message says which step and why."""


def _run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def guard_rules(subnet: str, host_if: str, bridge: str) -> list[list[str]]:
    """iptables arguments (without -A/-D) of the lab's leak guard in mangle FORWARD."""
    return [["FORWARD", "-s", subnet, "!", "-o", host_if, "-j", "DROP"],
            ["FORWARD", "-i", host_if, "!", "-o", bridge, "-j", "DROP"]]


def skip_reason() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (netns, veth, iptables, rootful podman)"
    for tool in ("podman", "ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass
class UplinkLab:
    """One running lab; `close()` undoes it."""

    tag: str
    network: str = ""
    subnet: str = ""
    bridge: str = ""
    netns: str = ""
    host_if: str = ""
    workdir: Path = field(default_factory=Path)
    spec: dict = field(default_factory=dict)
    standin: subprocess.Popen | None = None
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    @property
    def services(self) -> dict[str, str]:
        """Stand-in name -> address (what --add-host maps)."""
        return {n: a for n, a in self.spec.get("records", {}).items()
                if a.startswith(UPLINK_PREFIX + ".")}

    @property
    def resolver(self) -> str:
        return str(self.spec.get("resolver", ""))

    def add_hosts(self) -> list[str]:
        """`podman run` arguments that map every stand-in name to its lab address."""
        out = []
        for name, addr in sorted(self.services.items()):
            out += ["--add-host", f"{name}:{addr}"]
        return out

    def run_args(self) -> list[str]:
        """`podman run` arguments that put a container on the lab network."""
        return ["--network", self.network, "--dns", self.resolver, *self.add_hosts()]

    def standin_events(self) -> list[dict]:
        path = Path(self.spec.get("event_log", ""))
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def close(self) -> None:
        """Undo every step in reverse order; errors are logged, never raised."""
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # cleanup must go on
                log.warning("uplink lab cleanup of %s failed: %s", what, exc)

    def __enter__(self) -> "UplinkLab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _route_taken() -> bool:
    out = _run(["ip", "-4", "route", "show"], check=False).stdout
    net = ipaddress.ip_network(f"{UPLINK_PREFIX}.0/24")
    for line in out.splitlines():
        dst = line.split()[0] if line.strip() else ""
        try:
            if dst != "default" and ipaddress.ip_network(dst, strict=False).overlaps(net):
                return True
        except ValueError:
            continue
    return False


def start(tag: str | None = None, workdir: Path | None = None) -> UplinkLab:
    """Build the lab (network, netns, veth, NAT, guard, stand-in); raises LabError and leaves
    nothing behind when a step fails."""
    tag = tag or uuid.uuid4().hex[:6]
    lab = UplinkLab(tag=tag, workdir=workdir or Path(tempfile.mkdtemp(prefix=f"stwnat-{tag}-")))
    try:
        _build(lab)
    except BaseException:
        lab.close()
        raise
    return lab


def _build(lab: UplinkLab) -> None:
    if _route_taken():
        raise LabError(f"{UPLINK_PREFIX}.0/24 is already routed on this host (another uplink "
                       "lab running?); refusing to share it")
    tag = lab.tag
    lab.network = f"stwnat-{tag}"
    lab.netns = f"stwnat-{tag}"
    lab.host_if, ns_if = f"stwnu{tag}", f"stwnn{tag}"
    # 1. podman network: not internal (netavark adds the MASQUERADE rule), no DNS plugin.
    lab._undo.append(("network", lambda: _run(["podman", "network", "rm", "-f", lab.network],
                                              check=False)))
    _run(["podman", "network", "create", "--disable-dns", lab.network])
    info = json.loads(_run(["podman", "network", "inspect", lab.network]).stdout)[0]
    lab.subnet = info["subnets"][0]["subnet"]
    lab.bridge = info["network_interface"]
    # 2. the guard before anything can be forwarded (netavark only acts on container start)
    for rule in guard_rules(lab.subnet, lab.host_if, lab.bridge):
        _run(["iptables", "-t", "mangle", "-I", *rule])
        lab._undo.append(("guard", lambda r=rule: _run(["iptables", "-t", "mangle", "-D", *r],
                                                       check=False)))
    # 3. the uplink netns and its veth
    lab._undo.append(("netns", lambda: (_run(["ip", "link", "del", lab.host_if], check=False),
                                        _run(["ip", "netns", "del", lab.netns], check=False))))
    _run(["ip", "netns", "add", lab.netns])
    _run(["ip", "link", "add", lab.host_if, "type", "veth", "peer", "name", ns_if])
    _run(["ip", "link", "set", ns_if, "netns", lab.netns])
    for key in ("disable_ipv6",):
        try:
            Path(f"/proc/sys/net/ipv6/conf/{lab.host_if}/{key}").write_text("1")
        except OSError:
            pass
    _run(["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", lab.host_if])
    _run(["ip", "link", "set", lab.host_if, "up"])
    nsx = ["ip", "netns", "exec", lab.netns]
    _run(nsx + ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
    _run(nsx + ["ip", "link", "set", "lo", "up"])
    _run(nsx + ["ip", "link", "set", ns_if, "name", "eth0"])
    _run(nsx + ["ip", "addr", "add", f"{UPLINK_PEER}/24", "dev", "eth0"])
    # 4. the stand-in services on their TEST-NET addresses inside the netns
    from scheduler.emulate import standin as standin_mod
    events = lab.workdir / "standin-events.jsonl"
    certdir = lab.workdir / "tls"
    try:
        _ca, crt, key = standin_mod.make_certificates(certdir, list(standin_mod.SERVICE_HOSTS),
                                                      label=f"stwnat-{tag}")
        cert_args = (str(crt), str(key))
    except Exception as exc:  # no openssl: HTTP and DNS only
        log.warning("no TLS stand-in (%s)", exc)
        cert_args = ("", "")
    lab.spec = standin_mod.build_spec(UPLINK_PREFIX, str(events), *cert_args)
    for addr in lab.spec["addresses"]:
        _run(nsx + ["ip", "addr", "add", f"{addr}/32", "dev", "eth0"])
    _run(nsx + ["ip", "link", "set", "eth0", "up"])
    routes = _run(nsx + ["ip", "-4", "route", "show"]).stdout
    if "default" in routes:
        raise LabError(f"uplink namespace {lab.netns} has a default route: {routes}")
    spec_path = lab.workdir / "standin-spec.json"
    spec_path.write_text(json.dumps(lab.spec, indent=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get(
        "PYTHONPATH", "")
    proc = subprocess.Popen(nsx + [sys.executable, "-m", "scheduler.emulate.standin", "--spec",
                                   str(spec_path)],
                            stdout=subprocess.PIPE, stderr=open(lab.workdir / "standin.log", "w"),
                            text=True, env=env, start_new_session=True)
    lab.standin = proc
    lab._undo.append(("stand-in", lambda: _stop(proc)))
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        raise LabError("stand-in did not start: "
                       + (lab.workdir / "standin.log").read_text()[-600:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
