"""container_nat_flows against real masqueraded podman containers, read over osquery's Thrift API.

The uplink lab (scheduler.emulate.uplink_lab) puts containers on a podman network whose traffic is
masqueraded out of a veth into a network namespace made for the test (TEST-NET-2 addresses, a
mangle FORWARD guard, no default route there): nothing leaves the machine. The extension runs as
osqueryd starts it, under tests/fake_osqueryd.py; a long-lived container and a `--rm` one-shot each
make one short HTTP request, and the table must show each flow with the container's address, the
host address the uplink sees, and the right container id and name.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from fake_hosts import wait_until
from fake_osqueryd import FakeOsqueryd, constraint, start_extension
from scheduler.emulate import uplink_lab

IMAGE = "localhost/stowaway-busybox:latest"
GT = 4


def _skip() -> str | None:
    why = uplink_lab.skip_reason()
    if why:
        return why
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        return f"image {IMAGE} missing: run `make podman`"
    return None


_REASON = _skip()
pytestmark = [pytest.mark.podman, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def podman(*args: str, check: bool = True) -> str:
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=90)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {p.stderr}")
    return p.stdout.strip()


@pytest.fixture(scope="module")
def lab():
    with uplink_lab.start() as lab:
        yield lab


@pytest.fixture(scope="module")
def service():
    """`podman system service` on a private socket (names and images for the rows)."""
    d = Path(tempfile.mkdtemp(prefix="stw-ctp-"))
    sock = d / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, timeout=20)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


class _Stderr(threading.Thread):
    """Drains the extension's stderr (so it never blocks) and keeps it for assertions."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []

    def run(self) -> None:
        for line in iter(self.stream.readline, b""):
            self.lines.append(line.decode(errors="replace"))


def test_masqueraded_flows_are_attributed_to_their_containers(lab, service):
    tag = uuid.uuid4().hex[:6]
    sockdir = Path(tempfile.mkdtemp(prefix="stw-"))
    manager = FakeOsqueryd(sockdir).start()
    ext = start_extension(manager.path, extra=["--verbose"], env={
        "STOWAWAY_RUNTIME_SOCKETS": f"podman={service}", "STOWAWAY_NO_PROC_CONNECTOR": "1",
        "STOWAWAY_RUNTIME_TIMEOUT": "30"})     # a loaded CI machine makes podman's API slow
    err = _Stderr(ext.stderr)
    err.start()
    names = [f"stw-ctp-web-{tag}", f"stw-ctp-once-{tag}"]
    client = None
    try:
        uuid_, _info, reg = manager.wait_registered()
        assert "container_nat_flows" in reg["table"]
        wait_until(lambda: any("conntrack event capture running" in ln for ln in err.lines),
                   timeout=15)
        client = manager.client(uuid_)
        t0 = int(time.time()) - 1
        web = podman("run", "-d", "--name", names[0], *lab.run_args(), IMAGE, "sh", "-c",
                     "wget -qO- http://ipinfo.io/ >/dev/null; sleep 120")
        web_ip = podman("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}"
                        "{{end}}", web)
        cidfile = sockdir / "once.cid"
        out = podman("run", "--rm", "--name", names[1], "--cidfile", str(cidfile),
                     *lab.run_args(), IMAGE, "wget", "-qO-", "http://ifconfig.me/")
        assert "203.0.113.45" in out  # the stand-in answered through the NAT
        once = cidfile.read_text().strip()
        services = lab.services

        def rows_to(addr: str) -> list[dict]:
            resp = client.generate("container_nat_flows", [constraint("time", GT, t0)])
            assert resp.status.code == 0
            return [r for r in resp.response if r["remote_address"] == addr
                    and r["remote_port"] == "80" and r["event"] == "new"]

        r_web = wait_until(lambda: rows_to(services["ipinfo.io"]), timeout=15)[0]
        assert r_web["container_id"] == web and r_web["container_address"] == web_ip
        assert r_web["container_name"] == names[0] and r_web["image"] == IMAGE
        assert r_web["nat_address"] == uplink_lab.HOST_ADDR and r_web["protocol"] == "tcp"
        assert r_web["nat_remote_address"] == services["ipinfo.io"]
        assert r_web["source"] == "event" and float(r_web["start_time"]) >= t0
        # the --rm one-shot is gone by now; its flow was attributed while it ran
        assert podman("container", "exists", once, check=False) == ""
        r_once = wait_until(lambda: rows_to(services["ifconfig.me"]), timeout=15)[0]
        assert r_once["container_id"] == once
        assert r_once["nat_address"] == uplink_lab.HOST_ADDR
        assert r_once["container_address"] != ""
        # the stand-in saw both requests coming from the host's uplink address only
        clients = {e.get("client") for e in lab.standin_events() if e.get("kind") == "http"}
        assert clients == {uplink_lab.HOST_ADDR}
        # WHERE time > N reaches the extension
        later = client.generate("container_nat_flows", [constraint("time", GT, int(time.time()) + 60)])
        assert later.status.code == 0 and later.response == []
    finally:
        if client:
            client.close()
        for n in names:
            podman("rm", "-f", "-t", "0", n, check=False)
        if ext.poll() is None:
            ext.terminate()
            try:
                ext.wait(10)
            except subprocess.TimeoutExpired:
                ext.kill()
        manager.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert not any("Traceback" in ln for ln in err.lines), "".join(err.lines)
