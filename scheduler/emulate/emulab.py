"""The emulation lab: runtime connection, the internal network, the stand-in namespace and the
packet capture, each undone by a cleanup stack.

Why a stack: the emulator creates things in a fixed order (socket service, network, bridge, netns,
stand-in process, tcpdump, containers) and must remove all of them on success, on error and on
Ctrl-C / SIGTERM, including things whose creation was interrupted half way. Every resource is
registered *before* or right at its creation with an idempotent undo, and cleanup also sweeps by
label and name, so a container created by a request that was interrupted is still removed.

Safety: the network is created with internal=True and DNS disabled (through podman's libpod API on
the same socket, because podman's Docker-compat endpoint always turns DNS on); containers get the
stand-in resolver as their only nameserver; the stand-in namespace has no default route.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

LABEL_RUN = "io.stowaway.emulate.run"
LABEL_ROLE = "io.stowaway.emulate.role"
DEFAULT_IMAGE = "localhost/stowaway-busybox:latest"
BUILT_IMAGE = "localhost/stowaway-emulate:latest"

#: Where a Docker Engine API socket is looked for, in order, when --runtime-socket is not given.
CANDIDATE_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock", "/var/run/podman/podman.sock")


class Interrupted(Exception):
    """Raised in the main thread on SIGTERM so the same cleanup path as Ctrl-C runs."""


# ---------------------------------------------------------------------------------------------
# Cleanup stack


class Cleanup:
    """LIFO stack of undo callables; each runs once, errors are logged, never raised.

    With a `RunState`, the processes started for the run are also written to a state file, so a run
    killed with SIGKILL can still be cleaned up later (`stowaway emulate --cleanup-stale`).
    """

    def __init__(self, state: "RunState | None" = None) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self.done: list[str] = []
        self.failed: list[str] = []
        self.state = state

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._stack.append((what, undo))

    def track(self, proc: subprocess.Popen, what: str) -> None:
        if self.state is not None:
            self.state.add_process(proc.pid, what)

    def note(self, **facts: Any) -> None:
        if self.state is not None:
            self.state.update(**facts)

    def run(self) -> None:
        """Undo everything, with SIGINT/SIGTERM ignored so a second Ctrl-C cannot cut cleanup short."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        in_main = _in_main_thread()
        if in_main:
            for s in old:
                signal.signal(s, signal.SIG_IGN)
        try:
            while self._stack:
                what, undo = self._stack.pop()
                try:
                    undo()
                    self.done.append(what)
                except Exception as exc:  # noqa: BLE001 - cleanup must go on
                    log.warning("cleanup of %s failed: %s", what, exc)
                    self.failed.append(f"{what}: {exc}")
        finally:
            if in_main:
                for s, h in old.items():
                    signal.signal(s, h)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------
# Runtime socket


@dataclass
class RuntimeConn:
    """How we reach the container runtime: a Docker Engine API URL and what kind of engine it is."""

    url: str
    engine: str = "docker"          # "docker" | "podman"
    version: str = ""
    started_service: bool = False   # we started `podman system service` and must stop it


def resolve_socket(explicit: str | None, env: dict[str, str] | None = None,
                   exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The Engine API URL to use without starting anything: --runtime-socket, else $DOCKER_HOST
    (unix only), else the first existing well-known socket. None: nothing found (caller may start
    podman's service). Pure apart from the `exists` probe so the search order is testable."""
    env = os.environ if env is None else env
    if explicit:
        return explicit if "://" in explicit else f"unix://{explicit}"
    dh = env.get("DOCKER_HOST", "")
    if dh.startswith("unix://") and exists(dh[len("unix://"):]):
        return dh
    for path in CANDIDATE_SOCKETS:
        if exists(path):
            return f"unix://{path}"
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and exists(f"{xdg}/podman/podman.sock"):
        return f"unix://{xdg}/podman/podman.sock"
    return None


def start_podman_service(cleanup: Cleanup, workdir: Path) -> str:
    """Start `podman system service` on a private socket (stopped by cleanup); return its URL."""
    if not shutil.which("podman"):
        raise RuntimeError("no Docker/Podman API socket found and podman is not installed; "
                           "pass --runtime-socket")
    sock = workdir / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "podman-service.log", "w"),
                            start_new_session=True)
    cleanup.push(f"podman service pid {proc.pid}", lambda: _stop_process(proc))
    cleanup.track(proc, "podman service")
    cleanup.note(socket=f"unix://{sock}")
    deadline = time.time() + 15
    while time.time() < deadline:
        if sock.exists():
            return f"unix://{sock}"
        if proc.poll() is not None:
            raise RuntimeError(f"podman system service exited ({proc.returncode})")
        time.sleep(0.1)
    raise RuntimeError("podman system service did not create its socket within 15 s")


def connect(url: str, timeout: int = 60) -> tuple[Any, RuntimeConn]:
    """A docker SDK client and what engine answers at `url`."""
    import docker

    client = docker.DockerClient(base_url=url, timeout=timeout)
    ver = client.version()
    comps = [c.get("Name", "") for c in ver.get("Components") or []]
    engine = "podman" if any("Podman" in c for c in comps) else "docker"
    return client, RuntimeConn(url=url, engine=engine, version=str(ver.get("Version", "")))


def _stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    """Stop a child we started (its own session: signal the group by the child's pid only)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Image


def ensure_image(client: Any, image: str | None, rootfs: str | None, cleanup: Cleanup) -> str:
    """The image the scenarios run: --image as given (must exist locally: nothing is pulled), or one
    imported from a local rootfs directory (`docker import` of a tar of the dir)."""
    import docker

    if rootfs:
        return import_rootfs(client, Path(rootfs), image or BUILT_IMAGE)
    name = image or DEFAULT_IMAGE
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {name} is not present locally (images are never pulled); "
                           "build one with --build-image-from ROOTFS") from None
    return name


def import_rootfs(client: Any, root: Path, tag: str) -> str:
    """Import a directory as an image through the API's image-import endpoint."""
    import io
    import tarfile

    if not (root / "bin").exists():
        raise RuntimeError(f"{root} does not look like a root filesystem (no bin/)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(str(entry), arcname=entry.name)
    repo, _, tg = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    api = client.api
    res = api._post(api._url("/images/create"), data=buf.getvalue(),
                    params={"fromSrc": "-", "repo": repo, "tag": tg, "changes": 'CMD ["/bin/sh"]'},
                    headers={"Content-Type": "application/x-tar"}, timeout=300)
    api._raise_for_status(res)
    client.images.get(tag)
    log.info("imported %s from %s", tag, root)
    return tag


# ---------------------------------------------------------------------------------------------
# Network


@dataclass
class LabNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    internal: bool = True

    @property
    def prefix(self) -> str:
        """The first three octets, e.g. "10.213.7" (the lab always uses a /24)."""
        return str(self.subnet.network_address).rsplit(".", 1)[0]


def used_subnets(client: Any) -> list[ipaddress.IPv4Network]:
    """Subnets of existing runtime networks plus the host's routes, so ours collides with neither."""
    nets: list[ipaddress.IPv4Network] = []
    for n in client.networks.list():
        for cfg in (n.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                nets.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
            except ValueError:
                pass
    out = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        for r in json.loads(out.stdout):
            dst = r.get("dst", "")
            if dst and dst != "default" and "/" in dst:
                try:
                    nets.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    pass
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet(used: list[ipaddress.IPv4Network], rng: random.Random) -> ipaddress.IPv4Network:
    """A free /24 inside 10.213.0.0/16 (an arbitrary private block; free of every `used` one)."""
    choices = list(range(1, 255))
    rng.shuffle(choices)
    for third in choices:
        cand = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError("no free /24 in 10.213.0.0/16")


def create_network(client: Any, conn: RuntimeConn, run_id: str, cleanup: Cleanup,
                   live: bool = False) -> LabNetwork:
    """The emulation network: internal (no route out) with runtime DNS off, unless --live."""
    import docker

    name = f"stwemu-{run_id}"
    bridge = f"stwe{run_id}"
    rng = random.Random(run_id)
    cleanup.push(f"network {name}", lambda: _remove_network(client, name))
    cleanup.note(network=name, bridge=bridge)
    for attempt in range(3):
        # another run (or another tool) may take the same /24 between our look and our create
        subnet = pick_subnet(used_subnets(client), rng)
        try:
            _create_network(client, conn, name, bridge, subnet, run_id, live)
            break
        except docker.errors.APIError as exc:
            text = str(exc).lower()
            if attempt == 2 or not any(w in text for w in ("subnet", "overlap", "in use", "already")):
                raise
            log.info("subnet %s taken meanwhile (%s); picking another", subnet, exc)
            _remove_network(client, name)
    return LabNetwork(name=name, bridge=bridge, subnet=subnet, internal=not live)


def _create_network(client: Any, conn: RuntimeConn, name: str, bridge: str, subnet: ipaddress.IPv4Network,
                    run_id: str, live: bool) -> None:
    import docker

    lease_end = str(subnet.network_address + 127)
    if conn.engine == "podman":
        body = {"name": name, "driver": "bridge", "internal": not live, "dns_enabled": False,
                "network_interface": bridge, "labels": {LABEL_RUN: run_id},
                "subnets": [{"subnet": str(subnet),
                             "lease_range": {"start_ip": str(subnet.network_address + 2), "end_ip": lease_end}}]}
        if live:
            body["subnets"][0]["gateway"] = str(subnet.network_address + 1)
        api = client.api
        res = api._post_json(api.base_url + "/v4.0.0/libpod/networks/create", data=body)
        api._raise_for_status(res)
        info = res.json()
        if not live and (not info.get("internal") or info.get("dns_enabled")):
            raise RuntimeError(f"network {name} is not internal with DNS off: {info}")
    else:
        pool = docker.types.IPAMPool(subnet=str(subnet), iprange=f"{subnet.network_address}/25")
        net = client.networks.create(name, driver="bridge", internal=not live, labels={LABEL_RUN: run_id},
                                     ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                                     options={"com.docker.network.bridge.name": bridge})
        if not live and not net.attrs.get("Internal"):
            raise RuntimeError(f"network {name} is not internal")


def _remove_network(client: Any, name: str) -> None:
    import docker

    try:
        client.networks.get(name).remove()
    except docker.errors.NotFound:
        pass


def ensure_bridge(bridge: str, cleanup: Cleanup) -> None:
    """Create the bridge up front (the runtime creates it only when the first container joins, and
    the stand-in and tcpdump must be there before that). The runtime adopts an existing bridge."""
    cleanup.push(f"bridge {bridge}", lambda: _ip(["link", "del", bridge], check=False))
    if _ip(["link", "show", bridge], check=False).returncode != 0:
        _ip(["link", "add", bridge, "type", "bridge"])
    _sysctl(f"net.ipv6.conf.{bridge}.disable_ipv6", "1")
    _ip(["link", "set", bridge, "up"])


# ---------------------------------------------------------------------------------------------
# Stand-in namespace


@dataclass
class Standin:
    netns: str
    spec: dict[str, Any]
    proc: subprocess.Popen | None = None
    events_path: Path = field(default_factory=Path)
    ca_cert: Path | None = None

    def events(self) -> list[dict[str, Any]]:
        """What the stand-in answered so far (DNS, HTTP, TLS SNI)."""
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def start_standin(net: LabNetwork, run_id: str, workdir: Path, cleanup: Cleanup) -> Standin:
    """A network namespace on the lab bridge (no default route) running scheduler.emulate.standin."""
    from scheduler.emulate import standin as standin_mod

    ns = f"stwe-{run_id}"
    host_if, ns_if = f"stwe{run_id}h", f"stwe{run_id}n"
    cleanup.push(f"netns {ns}", lambda: _del_netns(ns, host_if))
    cleanup.note(netns=ns, veth=host_if)
    _ip(["netns", "add", ns])
    _ip(["link", "add", host_if, "type", "veth", "peer", "name", ns_if])
    _ip(["link", "set", ns_if, "netns", ns])
    _sysctl(f"net.ipv6.conf.{host_if}.disable_ipv6", "1")
    _ip(["link", "set", host_if, "master", net.bridge, "up"])
    nsx = ["ip", "netns", "exec", ns]
    for key in ("all", "default"):
        _run(nsx + ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"], check=False)
    _run(nsx + ["ip", "link", "set", "lo", "up"])
    _run(nsx + ["ip", "link", "set", ns_if, "name", "eth0"])
    certdir = workdir / "tls"
    names = [n for n in standin_mod.SERVICE_HOSTS]
    ca, crt, key = standin_mod.make_certificates(certdir, names, label=f"stwemu-{run_id}")
    events_path = workdir / "standin-events.jsonl"
    spec = standin_mod.build_spec(net.prefix, str(events_path), str(crt), str(key))
    for addr in spec["addresses"]:
        _run(nsx + ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
    _run(nsx + ["ip", "link", "set", "eth0", "up"])
    routes = _run(nsx + ["ip", "-4", "route", "show"]).stdout
    if "default" in routes:
        raise RuntimeError(f"stand-in namespace {ns} has a default route: {routes}")
    spec_path = workdir / "standin-spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(nsx + [sys.executable, "-m", "scheduler.emulate.standin", "--spec", str(spec_path)],
                            stdout=subprocess.PIPE, stderr=open(workdir / "standin.log", "w"),
                            text=True, env=env, start_new_session=True)
    cleanup.push(f"stand-in pid {proc.pid}", lambda: _stop_process(proc))
    cleanup.track(proc, "stand-in")
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        raise RuntimeError(f"stand-in did not start: {(workdir / 'standin.log').read_text()[-600:]}")
    return Standin(netns=ns, spec=spec, proc=proc, events_path=events_path, ca_cert=ca)


def _del_netns(ns: str, host_if: str) -> None:
    _ip(["link", "del", host_if], check=False)
    if _ip(["netns", "pids", ns], check=False).returncode == 0:
        _ip(["netns", "del", ns], check=False)


# ---------------------------------------------------------------------------------------------
# Capture


def sigint_default() -> None:
    """preexec_fn: SIGINT back to its default in the child. A program started in the background
    by a shell script (`cmd &`) inherits SIGINT *ignored*; tcpdump is stopped with SIGINT (so it
    flushes the pcap) and would then ignore it until the SIGKILL, losing its last packets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_tcpdump(bridge: str, pcap: Path, cleanup: Cleanup) -> subprocess.Popen | None:
    """tcpdump on the lab bridge (the whole emulation's traffic) when tcpdump is installed."""
    exe = shutil.which("tcpdump")
    if not exe:
        log.info("tcpdump not installed: no pcap")
        return None
    proc = subprocess.Popen([exe, "-i", bridge, "-n", "-s", "0", "-U", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=sigint_default)
    cleanup.push(f"tcpdump pid {proc.pid}", lambda: _stop_process(proc, signal.SIGINT))
    cleanup.track(proc, "tcpdump")
    deadline = time.time() + 5
    while time.time() < deadline and not pcap.exists():
        if proc.poll() is not None:
            log.warning("tcpdump exited: %s", proc.stderr.read() if proc.stderr else "")
            return None
        time.sleep(0.05)
    time.sleep(0.3)  # tcpdump opens the file before the capture is armed
    return proc


# ---------------------------------------------------------------------------------------------
# Containers


def sweep_containers(client: Any, run_id: str) -> list[str]:
    """Force-remove every container of this run (by label, then by name prefix): the safety net for
    containers whose creating request was interrupted before we learnt their id."""
    import docker

    removed = []
    seen: set[str] = set()
    for filters in ({"label": f"{LABEL_RUN}={run_id}"}, {"name": f"stwemu-{run_id}-"}):
        try:
            found = client.containers.list(all=True, filters=filters)
        except docker.errors.APIError as exc:
            log.warning("listing containers for cleanup failed: %s", exc)
            continue
        for c in found:
            if c.id in seen:
                continue
            seen.add(c.id)
            if c.labels.get(LABEL_RUN) != run_id and not c.name.startswith(f"stwemu-{run_id}-"):
                continue
            try:
                c.remove(force=True)
                removed.append(c.id)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("removing %s failed: %s", c.name, exc)
    return removed


def exec_monitors(container_ids: set[str], proc: str = "/proc") -> list[int]:
    """PIDs of conmon processes that monitor an *exec session* of one of `container_ids`.

    Why: Podman's API service starts one conmon pair per exec with `--exit-delay 300`
    (containers.conf `exit_command_delay`, so REST clients can still read the exit code), so they
    outlive the container by five minutes. They belong to execs this run made in containers this
    run created and removed; cleanup ends exactly those, by pid.
    """
    pids = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            argv = Path(proc, entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"conmon") or b"--exec-attach" not in argv:
            continue
        try:
            cid = argv[argv.index(b"-c") + 1].decode()
        except (ValueError, IndexError):
            continue
        if cid in container_ids:
            pids.append(int(entry))
    return pids


def reap_exec_monitors(container_ids: set[str]) -> int:
    """End the lingering exec conmons of our (already removed) containers; returns how many."""
    pids = exec_monitors(container_ids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 3
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return len(pids)


# ---------------------------------------------------------------------------------------------
# Run state (recovery after SIGKILL)

STATE_DIR = Path(os.environ.get("STOWAWAY_EMULATE_STATE", "/run/stowaway-emulate"))


def _proc_start(pid: int) -> str:
    """A process's start time in clock ticks (pid + start time identify it; pids are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


class RunState:
    """/run/stowaway-emulate/<run>.json: who owns the run and what it started."""

    def __init__(self, run_id: str, directory: Path | None = None) -> None:
        self.path = (directory or STATE_DIR) / f"{run_id}.json"
        self.data: dict[str, Any] = {"run_id": run_id, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
                                     "started": time.time(), "processes": []}

    def update(self, **facts: Any) -> None:
        self.data.update(facts)
        self.save()

    def add_process(self, pid: int, what: str) -> None:
        self.data["processes"].append({"pid": pid, "start": _proc_start(pid), "what": what})
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _stale_runtime_objects(data: dict[str, Any], run_id: str, runtime_url: str | None) -> list[str]:
    """Containers and network of a dead run, through its own socket when that still answers."""
    tmp = Cleanup()
    try:
        url = runtime_url
        if not url and data.get("socket") and os.path.exists(str(data["socket"]).replace("unix://", "")):
            url = data["socket"]
        url = url or resolve_socket(None)
        if url is None:
            sdir = Path(tempfile.mkdtemp(prefix="stwemu-stale-"))
            tmp.push(f"workdir {sdir}", lambda: shutil.rmtree(sdir, ignore_errors=True))
            url = start_podman_service(tmp, sdir)
        client, _conn = connect(url)
        try:
            ids = {c.id for c in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})}
            removed = sweep_containers(client, run_id)
            reap_exec_monitors(ids)
            if data.get("network"):
                _remove_network(client, data["network"])
            return removed
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - report and go on
        log.warning("stale run %s: runtime cleanup failed: %s", run_id, exc)
        return []
    finally:
        tmp.run()


def owner_alive(data: dict[str, Any]) -> bool:
    pid = int(data.get("pid") or 0)
    return pid > 0 and _proc_start(pid) == data.get("pid_start")


def cleanup_stale(directory: Path | None = None, runtime_url: str | None = None) -> list[str]:
    """Remove what runs that died without cleaning up (SIGKILL, power loss) left behind. Runs whose
    owner process is alive are never touched. Returns one line per run cleaned."""
    directory = directory or STATE_DIR
    done = []
    for f in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if owner_alive(data):
            continue
        run_id = str(data.get("run_id", f.stem))
        removed = _stale_runtime_objects(data, run_id, runtime_url)
        for p in data.get("processes", []):  # after the runtime work: one may be its podman service
            pid = int(p.get("pid") or 0)
            if pid > 0 and p.get("start") and _proc_start(pid) == p.get("start"):
                try:
                    os.killpg(pid, signal.SIGTERM)  # each was started in its own session
                except (ProcessLookupError, PermissionError):
                    pass
        if data.get("netns"):
            _del_netns(data["netns"], data.get("veth", ""))
        if data.get("bridge"):
            _ip(["link", "del", data["bridge"]], check=False)
        if data.get("workdir"):
            shutil.rmtree(data["workdir"], ignore_errors=True)
        f.unlink(missing_ok=True)
        done.append(f"run {run_id}: {len(removed)} container(s), network {data.get('network', '-')}, "
                    f"netns {data.get('netns', '-')}, {len(data.get('processes', []))} process(es)")
    return done


# ---------------------------------------------------------------------------------------------
# small helpers


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def _ip(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError as exc:
        log.debug("sysctl %s: %s", key, exc)


def leftovers(client: Any, run_id: str) -> dict[str, list[str]]:
    """Anything of run `run_id` still present (used by tests and by the final self-check)."""
    out: dict[str, list[str]] = {"containers": [], "networks": [], "netns": [], "links": []}
    try:
        out["containers"] = [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})]
        out["networks"] = [n.name for n in client.networks.list() if n.name == f"stwemu-{run_id}"]
    except Exception as exc:  # noqa: BLE001
        out["containers"] = [f"? {exc}"]
    ns = _ip(["netns", "list"], check=False).stdout
    out["netns"] = [l.split()[0] for l in ns.splitlines() if l.startswith(f"stwe-{run_id}")]
    links = _ip(["-o", "link", "show"], check=False).stdout
    out["links"] = [l.split(":")[1].strip().split("@")[0] for l in links.splitlines()
                    if f"stwe{run_id}" in l]
    return out
