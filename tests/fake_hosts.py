"""Fakes for the extension's inputs: a /proc tree and a Docker-Engine-API runtime on a Unix socket.

Why: the table logic (attribution, constraints, degraded runtimes, buffers) must be testable on a
machine without podman or Docker, with data whose right answer is known. The fake /proc holds the
files the tables read (cgroup, stat, cmdline, status, exe and ns/net links, net/tcp...), and the
fake engine answers `/containers/json`, `/containers/<id>/json` and a streaming `/events` the way
Podman's compat API does; in `hang` mode it accepts connections and never answers.
"""
from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

PODMAN_ID = "a" * 64
DOCKER_ID = "b" * 64
K8S_ID = "c" * 64


NET_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode\n")


def add_process(proc: Path, pid: int, cgroup: str, argv: list[bytes] | list[str], comm: str,
                ppid: int = 1, uid: int = 0, exe: str = "/bin/busybox", netns: int = 4026532001,
                start_ticks: int = 1000) -> Path:
    """One /proc/<pid> directory with the files and links the tables read."""
    d = proc / str(pid)
    (d / "ns").mkdir(parents=True, exist_ok=True)
    (d / "net").mkdir(exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    raw = b"".join((a if isinstance(a, bytes) else a.encode()) + b"\0" for a in argv)
    (d / "cmdline").write_bytes(raw)
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start_ticks)] + ["0"] * 30
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nPid:\t{pid}\nPPid:\t{ppid}\n"
                              f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
    os.symlink(exe, d / "exe")
    os.symlink(f"net:[{netns}]", d / "ns" / "net")
    for f in ("tcp", "tcp6", "udp", "udp6"):
        (d / "net" / f).write_text(NET_HEADER)
    return d


def make_proc(root: Path) -> Path:
    """A fake /proc: two podman processes (sleep, wget ipinfo.io), one docker (v2 systemd path),
    one kubernetes, one host process, and btime."""
    proc = root / "proc"
    proc.mkdir(parents=True)
    (proc / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")
    (proc / "uptime").write_text("100.0 100.0\n")
    (proc / "self").mkdir()  # not a pid: must be skipped
    pod = (f"12:pids:/libpod_parent/libpod-{PODMAN_ID}\n"
           f"1:name=systemd:/libpod_parent/libpod-{PODMAN_ID}\n0::/\n")
    d = add_process(proc, 100, pod, ["sleep", "3600"], "sleep", ppid=90, netns=4026532001)
    tail = " 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    (d / "net" / "tcp").write_text(
        NET_HEADER
        + "   0: 0100007F:1F90 00000000:0000 0A" + tail.format(inode=1001)
        + "   1: 0200580A:C350 51BB7522:0050 01" + tail.format(inode=1002))
    (d / "net" / "udp6").write_text(
        NET_HEADER
        + "   0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07"
        + tail.format(inode=1003))
    add_process(proc, 101, pod, ["wget", "-qO-", "http://ipinfo.io/"], "wget", ppid=100,
                netns=4026532001)
    add_process(proc, 200, f"0::/system.slice/docker-{DOCKER_ID}.scope\n",
                ["nginx", "-g", "daemon off;"], "nginx", uid=101, exe="/usr/sbin/nginx",
                netns=4026532002)
    add_process(proc, 300, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                 "12345678_1234_1234_1234_123456789abc.slice/cri-containerd-" + K8S_ID + ".scope\n",
                 [b"python3", b"-c", b"print('\xff\xfe')"], "python3", netns=4026532003)
    add_process(proc, 1, "0::/init.scope\n", ["/sbin/init"], "systemd", ppid=0, netns=4026531840)
    return proc


# -- fake Docker Engine API ---------------------------------------------------------------------
def podman_container(cid: str, name: str, ip: str = "10.89.0.5", network: str = "stw-net",
                     privileged: bool = False, mounts: list[dict] | None = None,
                     labels: dict | None = None) -> tuple[dict, dict]:
    """(list entry, inspect) shaped like Podman 4's compat API."""
    labels = labels or {}
    net = {network: {"IPAddress": ip, "IPPrefixLen": 24, "Gateway": "<nil>",
                     "MacAddress": "a2:00:00:00:00:01", "NetworkID": network}}
    listed = {"Id": cid, "Names": ["/" + name], "Image": "localhost/stowaway-busybox:latest",
              "ImageID": "sha256:" + "d" * 64, "Created": 1795800000, "State": "running",
              "Labels": labels, "NetworkSettings": {"Networks": net}, "Mounts": mounts or []}
    inspect = {"Id": cid, "Name": "/" + name, "Created": "2026-11-27T20:03:47.839213925Z",
               "Image": "sha256:" + "d" * 64,
               "State": {"Status": "running", "Pid": 100,
                         "StartedAt": "2026-11-27T20:03:47.927046714Z"},
               "HostConfig": {"Privileged": privileged, "NetworkMode": "bridge",
                              "PidMode": "private", "IpcMode": "shareable"},
               "Config": {"Image": "localhost/stowaway-busybox:latest", "Labels": labels},
               "NetworkSettings": {"Networks": net}, "Mounts": mounts or []}
    return listed, inspect


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeEngine:
    """A Docker-Engine-API server on a Unix socket (`hang=True`: accept, never answer).

    `inspect_errors` maps a container id to the (status, body) its inspect answers instead, e.g.
    Podman's 500 while it is removing a `--rm` container that `/containers/json` still lists.
    """

    def __init__(self, path: str, containers: list[tuple[dict, dict]] | None = None,
                 hang: bool = False,
                 inspect_errors: dict[str, tuple[int, dict]] | None = None) -> None:
        self.path = path
        self.containers = containers or []
        self.hang = hang
        self.inspect_errors = inspect_errors or {}
        self.requests: list[str] = []
        self._events: list[dict] = []
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._server: Any = None
        self._raw: socket.socket | None = None
        self._held: list[socket.socket] = []

    def emit(self, ev: dict) -> None:
        with self._cond:
            self._events.append(ev)
            self._cond.notify_all()

    def start(self) -> "FakeEngine":
        if self.hang:
            self._raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._raw.bind(self.path)
            self._raw.listen(16)
            threading.Thread(target=self._hang_loop, daemon=True).start()
            return self
        engine = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *a: Any) -> None:
                pass

            def _json(self, obj: Any, code: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                engine.requests.append(path)
                parts = [p for p in path.split("/") if p]
                if parts and parts[0].startswith("v1."):
                    parts = parts[1:]
                if parts == ["containers", "json"]:
                    return self._json([c[0] for c in engine.containers])
                if len(parts) == 3 and parts[0] == "containers" and parts[2] == "json":
                    if parts[1] in engine.inspect_errors:
                        code, body = engine.inspect_errors[parts[1]]
                        return self._json(body, code)
                    for listed, ins in engine.containers:
                        if listed["Id"] == parts[1]:
                            return self._json(ins)
                    return self._json({"message": "No such container"}, 404)
                if parts == ["events"]:
                    return self._stream_events()
                if parts in (["version"], ["_ping"]):
                    return self._json({"Version": "4.3.1", "ApiVersion": "1.41"})
                return self._json({"message": "not found"}, 404)

            def _stream_events(self) -> None:
                self.close_connection = True  # when the engine stops, the stream ends
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                sent = 0
                while not engine._stopped.is_set():
                    with engine._cond:
                        if sent >= len(engine._events):
                            engine._cond.wait(0.2)
                        batch = engine._events[sent:]
                    for ev in batch:
                        line = (json.dumps(ev) + "\n").encode()
                        try:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                            self.wfile.flush()
                        except OSError:
                            return
                    sent += len(batch)

        self._server = _UnixHTTPServer(self.path, H)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def _hang_loop(self) -> None:
        assert self._raw is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._raw.accept()
            except OSError:
                return
            self._held.append(conn)  # read nothing, answer nothing

    def stop(self) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for c in self._held:
            c.close()
        if self._raw is not None:
            self._raw.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def engine_event(action: str, cid: str, name: str, t: int, exit_code: str | None = None,
                 etype: str = "container") -> dict:
    """One event as Podman's compat API streams it."""
    attrs = {"containerExitCode": "0", "image": "localhost/stowaway-busybox:latest",
             "name": name, "podId": ""}
    if exit_code is not None:
        attrs["exitCode"] = exit_code
    return {"status": action, "id": cid, "from": "localhost/stowaway-busybox:latest",
            "Type": etype, "Action": action, "Actor": {"ID": cid, "Attributes": attrs},
            "scope": "local", "time": t, "timeNano": t * 1_000_000_000 + 123}


def wait_until(cond, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Poll `cond` until it returns something truthy and return that; fail the test on timeout.

    Listeners and the extension subprocess work in the background, so tests wait for an effect
    instead of sleeping a fixed time. `what` names the awaited state in the failure message.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")


def wait_extension_sees_containers(client: Any, image: str, timeout: float = 30.0) -> None:
    """Wait until a started extension reports a probe container's exec in both event tables.

    The extension's podman event stream connects and its exec capture starts in the background;
    a container started before that is missed, which is not what a test that runs containers next
    is about. Each poll runs a fresh `podman exec` in a probe container, so an exec that happened
    before the capture was up does not count and a slow start is still seen. `client` is a
    fake_osqueryd.ExtClient; the probe container is removed before returning (and on failure).
    """
    import subprocess
    import uuid

    def podman(*args: str) -> str:
        p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {p.stderr}")
        return p.stdout.strip()

    name = f"stw-probe-{uuid.uuid4().hex[:8]}"
    since = int(time.time()) - 1
    at_least_since = [{"op": 32, "expr": str(since)}]       # time >= since (SQLite's GE)
    ctx = [{"name": "time", "affinity": "BIGINT", "list": at_least_since}]
    try:
        cid = podman("run", "-d", "--name", name, "--network", "none", image, "sleep", "600")

        def seen() -> bool:
            podman("exec", cid, "true")
            ev = client.generate("container_events", ctx).response
            pe = client.generate("container_process_events", ctx).response
            return (any(r["container_id"] == cid for r in ev)
                    and any(r["container_id"] == cid and r["cmdline"] == "true" for r in pe))

        wait_until(seen, timeout=timeout, interval=0.2,
                   what="the extension reporting a probe container's exec")
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
