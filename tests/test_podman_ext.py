"""The extension against real rootful podman containers and a real `podman system service` socket.

Skipped (with the reason) only where podman is absent, we are not root, or the test image has not
been built (`make podman` / `.ci/setup-podman.sh` builds it). Every container, network and service
made here has a unique name and is removed on success and on failure. No traffic leaves the
machine: containers run with `--network none` or on an `--internal --disable-dns` network.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from fake_hosts import wait_extension_sees_containers, wait_until
from fake_osqueryd import FakeOsqueryd, constraint, start_extension
from osquery_ext import tables
from osquery_ext.runtimes import Runtimes

IMAGE = "localhost/stowaway-busybox:latest"
#: The one-shot's command: the lookup after a pause that outlasts a starved exec capture's wake-up.
ONESHOT = "sleep 1; wget -qO- http://ipinfo.io/"
EQ, GT, GE = 2, 4, 32


def _skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed"
    if os.geteuid() != 0:
        return "needs root (rootful podman, kernel proc connector)"
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        return f"image {IMAGE} missing: run `make podman`"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.podman,
              pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def podman(*args: str, check: bool = True, timeout: float = 60) -> str:
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {p.stderr}")
    return p.stdout.strip()


def unique(prefix: str) -> str:
    return f"stw-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def service():
    """`podman system service` on a socket in a temp dir; yields the unix:// URL."""
    d = Path(tempfile.mkdtemp(prefix="stw-pd-"))
    sock = d / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.1)
        if not sock.exists():
            pytest.fail(f"podman system service did not start: {proc.stderr.read()[:500]!r}")
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cleanup():
    """Collects container and network names; removes them whatever happens."""
    made: dict[str, list[str]] = {"containers": [], "networks": []}
    yield made
    for c in made["containers"]:
        podman("rm", "-f", "-t", "0", c, check=False)
    for n in made["networks"]:
        podman("network", "rm", "-f", n, check=False)


def _sources(url: str) -> tables.Sources:
    return tables.Sources(runtimes=Runtimes({"podman": url}, timeout=2, cache_ttl=0))


def _by_id(cid: str) -> str:
    return json.dumps({"constraints": [{"name": "container_id", "affinity": "TEXT",
                                        "list": [{"op": EQ, "expr": cid}]}]})


def test_long_running_container_attributed(service, cleanup):
    name = unique("long")
    cleanup["containers"].append(name)
    cid = podman("run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "600")
    assert len(cid) == 64
    src = _sources(service)

    def sleeps() -> list[dict]:
        rows = tables.generate_container_processes(src, _by_id(cid))
        return [r for r in rows if r["cmdline"] == "sleep 600" and r["image"]]

    # `podman run -d` returns once the container started, not once `sleep 600` has exec'd, and
    # under load the runtime API can miss its 2 s timeout (the row then has no image/name yet):
    # wait for the state asserted below instead of reading the first snapshot
    found = wait_until(sleeps, timeout=30, what="a `sleep 600` row with its image")
    assert len(found) == 1, found
    r = found[0]
    assert r["container_id"] == cid and r["runtime"] == "podman"
    assert r["image"] == IMAGE and r["container_name"] == name
    assert r["cgroup_path"].endswith(cid) or cid in r["cgroup_path"]
    inspect_pid = podman("inspect", "-f", "{{.State.Pid}}", cid)
    assert r["pid"] == inspect_pid
    assert r["location_discovery"] == "0"
    # the same container in the unconstrained scan and in the inventory
    assert any(x["pid"] == inspect_pid for x in tables.generate_container_processes(src, None))
    inv = {x["id"]: x for x in tables.generate_container_inventory(src, None)}
    assert inv[cid]["source"] == "api" and inv[cid]["pid"] == inspect_pid
    assert inv[cid]["state"] == "running" and inv[cid]["network_mode"] in ("none", "")


def test_wget_loop_container_flagged_while_it_runs(service, cleanup):
    name = unique("wget")
    cleanup["containers"].append(name)
    cid = podman("run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c",
                 "while true; do wget -qO- http://ipinfo.io/; sleep 0.2; done")
    src = _sources(service)

    def flagged_rows() -> list[dict]:
        return [r for r in tables.generate_container_processes(src, _by_id(cid))
                if r["location_discovery"] == "1"]

    flagged = wait_until(flagged_rows, timeout=20, what="a location_discovery=1 row while wget loops")
    assert all(r["container_id"] == cid and r["image"] == IMAGE for r in flagged)
    assert any("ipinfo.io" in r["indicator"] for r in flagged)
    podman("rm", "-f", "-t", "0", name)
    # gone with the container
    wait_until(lambda: tables.generate_container_processes(src, _by_id(cid)) == [], timeout=20,
               what="no process rows after podman rm")


def test_short_lived_rm_container_through_thrift(service, cleanup):
    """A `--rm` container gone in about a second (a few under load): lifecycle and its classified
    `sh -c '...; wget ...'` exec, via osqueryd's path.

    The lookup runs behind `sh -c` with a one-second pause, the shape of `docker run --rm alpine
    sh -c "curl ipinfo.io"`. A bare `wget` here fails on DNS (no network) and exits within a
    millisecond of its exec; whether the capture reads its cmdline first is a race that a
    starved host, or a kernel that ignores the capture's real-time priority (gVisor), can lose,
    the blind spot docs/osquery.md names. The container still dies before any table poll."""
    d = Path(tempfile.mkdtemp(prefix="stw-em-"))
    manager = FakeOsqueryd(d).start()
    ext = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": f"podman={service}"})
    name = unique("oneshot")
    cleanup["containers"].append(name)
    client = None
    try:
        uuid_, _info, _reg = manager.wait_registered()
        client = manager.client(uuid_)
        wait_extension_sees_containers(client, IMAGE)
        t0 = int(time.time()) - 1
        run = subprocess.run(["podman", "run", "--rm", "--name", name, "--network", "none", IMAGE,
                              "sh", "-c", ONESHOT], capture_output=True, text=True, timeout=60)
        assert "ipinfo.io" in run.stderr  # busybox wget failed fast: no network, as intended
        def lifecycle() -> list[dict]:
            resp = client.generate("container_events", [constraint("time", GE, t0)])
            assert resp.status.code == 0
            rows = [r for r in resp.response if r["name"] == name]
            full = {"create", "start", "die", "destroy"} <= {r["action"] for r in rows}
            return rows if full else []

        ev_rows = wait_until(lifecycle, timeout=20, interval=0.2,
                             what="create, start, die and destroy of the one-shot")
        cid = ev_rows[0]["container_id"]
        assert len(cid) == 64 and all(r["container_id"] == cid for r in ev_rows)
        times = {r["action"]: int(r["time_nano"]) for r in ev_rows}
        lifetime = (times["destroy"] - times["create"]) / 1e9
        # Short-lived is the premise: it is gone before any table is read, so only the event
        # stream and the exec capture can report it. About 0.3 s when idle; podman's own
        # create/remove take longer on a loaded host, which does not change what is tested.
        assert lifetime < 5.0, f"container lived {lifetime:.2f}s; the test needs a short one"
        die = next(r for r in ev_rows if r["action"] == "die")
        assert die["exit_code"] == "1" and die["image"] == IMAGE

        def wget_events() -> list[dict]:
            pe = client.generate("container_process_events", [constraint("time", GE, t0)])
            assert pe.status.code == 0
            return [r for r in pe.response if r["container_id"] == cid
                    and r["cmdline"] == f"sh -c '{ONESHOT}'"]

        wgets = wait_until(wget_events, timeout=20, interval=0.2,
                           what="the sh -c '...; wget' exec event")
        w = wgets[0]
        assert w["location_discovery"] == "1" and w["tool"] == "wget"
        assert "ipinfo.io" in w["indicator"]
        assert w["container_name"] == name and w["image"] == IMAGE
        assert w["runtime"] == "podman" and int(w["pid"]) > 0
        # the constraint is honoured: nothing before t0 + 3600
        later = client.generate("container_process_events",
                                [constraint("time", GT, int(time.time()) + 3600)])
        assert later.response == []
    finally:
        if client:
            client.close()
        if ext.poll() is None:
            ext.terminate()
            ext.wait(10)
        manager.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_inventory_address_on_internal_network(service, cleanup):
    net = unique("net")
    name = unique("inet")
    cleanup["networks"].append(net)
    cleanup["containers"].append(name)
    podman("network", "create", "--internal", "--disable-dns", net)
    subnet = json.loads(podman("network", "inspect", net))[0]["subnets"][0]["subnet"]
    cid = podman("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "600")
    src = _sources(service)
    inv = {r["id"]: r for r in tables.generate_container_inventory(src, None)}
    row = inv[cid]
    assert row["networks"] == net and row["name"] == name and row["image"] == IMAGE
    import ipaddress
    ips = row["ip_addresses"].split(",")
    assert ips and all(ipaddress.ip_address(ip) in ipaddress.ip_network(subnet) for ip in ips)
    expected = podman("inspect", "-f",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid)
    assert ips == [expected]
    assert row["privileged"] == "0" and row["host_root_mounted"] == "0"


def test_listener_socket_of_a_container(service, cleanup):
    name = unique("sock")
    cleanup["containers"].append(name)
    cid = podman("run", "-d", "--name", name, "--network", "none", IMAGE, "nc", "-l", "-p", "8080")
    src = _sources(service)
    rows = wait_until(lambda: [r for r in tables.generate_container_sockets(src, _by_id(cid))
                               if r["state"] == "LISTEN"], timeout=20, what="nc's listening socket")
    r = rows[0]
    assert (r["protocol"], r["local_port"], r["container_id"]) == ("tcp", "8080", cid)
    host_netns = os.readlink("/proc/self/ns/net")[5:-1]
    assert r["netns"] != host_netns  # read inside the container's namespace, not the host's
