"""Play osqueryd over the SDK's real Thrift interface.

The extension runs as a subprocess started exactly as osqueryd starts it (`stowaway-osquery-extension
--socket <path> --timeout 3 --interval 3`); a stand-in ExtensionManager (tests/fake_osqueryd.py)
serves osquery's `ExtensionManager` Thrift service on a Unix socket. What osqueryd relies on is
checked: registration (name, the five table routes), `call('table', ...)` columns and generate with
constraint context JSON on `<socket>.<uuid>`, ping, a non-zero exit with a clear message when there
is no manager or registration is refused, and exiting when the manager goes away.

Stowaway's own settings reach the extension through the environment (as the autoload wrapper
sets them): a fake /proc and a fake Engine-API runtime, so the rows have known right answers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fake_hosts import (DOCKER_ID, wait_until, PODMAN_ID, FakeEngine, engine_event, make_proc,
                        podman_container)
from fake_osqueryd import FakeOsqueryd, constraint, start_extension
from test_tables_unit import CONTRACT_COLUMNS

EQ, GT, LE, LT, GE = 2, 4, 8, 16, 32


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(prefix="stw-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _stop(p: subprocess.Popen) -> tuple[int, str]:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    return p.returncode, err


def test_registers_and_serves_every_table(sockdir, tmp_path):
    proc = make_proc(tmp_path)
    engine_sock = str(sockdir / "podman.sock")
    eng = FakeEngine(engine_sock, [podman_container(PODMAN_ID, "web-1", ip="10.89.0.9")]).start()
    manager = FakeOsqueryd(sockdir).start()
    ext = start_extension(manager.path, env={
        "STOWAWAY_PROC": str(proc), "STOWAWAY_RUNTIME_SOCKETS": f"podman=unix://{engine_sock}",
        "STOWAWAY_NO_PROC_CONNECTOR": "1",
        "STOWAWAY_RUNTIME_TIMEOUT": "30"})     # the fake engine is a test thread: loaded CI can starve it
    client = None
    try:
        uuid, info, registry = manager.wait_registered()
        assert info.name == "stowaway"
        assert set(registry) == {"table"}
        assert set(registry["table"]) == set(CONTRACT_COLUMNS)
        for name, routes in registry["table"].items():
            assert [r["name"] for r in routes] == CONTRACT_COLUMNS[name].split()
        # the INDEX option (1) that makes osqueryd forward time / container_id constraints
        ops = {r["name"]: r["op"] for r in registry["table"]["container_events"]}
        assert ops["time"] == "1" and ops["action"] == "0"

        client = manager.client(uuid)
        assert client.client.ping().code == 0
        # the event stream is live: emit lifecycle events at known times
        wait_until(lambda: any(p.endswith("/events") for p in eng.requests))
        for i, action in enumerate(("create", "start", "died", "remove")):
            eng.emit(engine_event(action, DOCKER_ID, "oneshot", 1000 + i,
                                  exit_code="1" if action == "died" else None))

        for name in CONTRACT_COLUMNS:
            cols = client.columns(name)
            assert cols.status.code == 0
            assert [c["name"] for c in cols.response] == CONTRACT_COLUMNS[name].split()

        procs = client.generate("container_processes", [constraint("container_id", EQ, PODMAN_ID, "TEXT")])
        assert procs.status.code == 0
        rows = {r["pid"]: r for r in procs.response}
        assert set(rows) == {"100", "101"}
        assert rows["101"]["location_discovery"] == "1"
        assert rows["101"]["container_name"] == "web-1"
        assert rows["100"]["image"] == "localhost/stowaway-busybox:latest"
        allp = client.generate("container_processes")
        assert {r["pid"] for r in allp.response} == {"100", "101", "200", "300"}

        inv = client.generate("container_inventory").response
        by_id = {r["id"]: r for r in inv}
        assert by_id[PODMAN_ID]["ip_addresses"] == "10.89.0.9"
        assert by_id[PODMAN_ID]["source"] == "api" and by_id[DOCKER_ID]["source"] == "cgroup"

        ev = wait_until(lambda: len(client.generate("container_events").response) >= 4 and
                       client.generate("container_events").response)
        assert [r["action"] for r in ev] == ["create", "start", "die", "destroy"]
        assert ev[2]["exit_code"] == "1" and ev[0]["name"] == "oneshot"
        later = client.generate("container_events", [constraint("time", GT, 1001)]).response
        assert [r["action"] for r in later] == ["die", "destroy"]
        ge = client.generate("container_events", [constraint("time", GE, 1001)]).response
        assert len(ge) == 3
        eq = client.generate("container_events", [constraint("time", EQ, 1002)]).response
        assert [r["action"] for r in eq] == ["die"]
        lt = client.generate("container_events", [constraint("time", LT, 1001)]).response
        assert [r["action"] for r in lt] == ["create"]
        le = client.generate("container_events", [constraint("time", LE, 1001)]).response
        assert len(le) == 2

        pev = client.generate("container_process_events", [constraint("time", GT, 0)])
        assert pev.status.code == 0 and pev.response == []  # connector disabled here

        socks = client.generate("container_sockets",
                                [constraint("container_id", EQ, PODMAN_ID, "TEXT")]).response
        assert {(r["protocol"], r["local_port"]) for r in socks} == {
            ("tcp", "8080"), ("tcp", "50000"), ("udp", "53")}
        assert all(r["container_id"] == PODMAN_ID for r in socks)

        bad = client.client.call("table", "container_events", {"action": "nonsense"})
        assert bad.status.code != 0
        assert ext.poll() is None  # still serving
    finally:
        if client:
            client.close()
        rc, err = _stop(ext)
        manager.stop()
        eng.stop()
    assert "Traceback" not in err, err


def test_autoload_wrapper_registers(sockdir):
    """deploy/stowaway.ext started the way osqueryd autoloads it."""
    from fake_osqueryd import extension_command
    wrapper = Path(__file__).resolve().parents[1] / "osquery_ext" / "deploy" / "stowaway.ext"
    manager = FakeOsqueryd(sockdir).start()
    p = subprocess.Popen([str(wrapper), "--socket", manager.path, "--timeout", "3",
                          "--interval", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**__import__("os").environ, "STOWAWAY_BIN": extension_command()[0],
                              "STOWAWAY_RUNTIME_SOCKETS": "none",
                              "STOWAWAY_NO_PROC_CONNECTOR": "1"})
    try:
        _uuid, info, reg = manager.wait_registered()
        assert info.name == "stowaway" and set(reg["table"]) == set(CONTRACT_COLUMNS)
    finally:
        _stop(p)
        manager.stop()
    bad = subprocess.run([str(wrapper), "--socket", manager.path], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "STOWAWAY_BIN": "/nonexistent"})
    assert bad.returncode == 1 and "not found" in bad.stderr


def test_exits_nonzero_without_manager(sockdir):
    absent = str(sockdir / "osquery.em")
    t0 = time.monotonic()
    p = subprocess.run(
        [*__import__("fake_osqueryd").extension_command(), "--socket", absent, "--timeout", "1",
         "--interval", "1"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "cannot connect to the osquery extension manager" in p.stderr
    assert absent in p.stderr and "Traceback" not in p.stderr
    assert time.monotonic() - t0 < 15


def test_waits_for_a_manager_that_starts_late(sockdir):
    """osqueryd may start an autoloaded extension before its socket exists: wait --timeout."""
    manager = FakeOsqueryd(sockdir)
    ext = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": "none",
                                             "STOWAWAY_NO_PROC_CONNECTOR": "1"})
    try:
        time.sleep(1.0)
        assert ext.poll() is None
        manager.start()
        _uuid, info, _reg = manager.wait_registered(10)
        assert info.name == "stowaway"
    finally:
        _stop(ext)
        manager.stop()


def test_refused_registration_is_reported(sockdir):
    manager = FakeOsqueryd(sockdir).start()
    first = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": "none",
                                               "STOWAWAY_NO_PROC_CONNECTOR": "1"})
    try:
        manager.wait_registered()
        second = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": "none",
                                                    "STOWAWAY_NO_PROC_CONNECTOR": "1"})
        second.wait(20)
        rc, err = _stop(second)
        assert rc == 1
        assert "refused to register" in err and "Duplicate" in err
    finally:
        _stop(first)
        manager.stop()


def test_exits_when_manager_goes_away(sockdir):
    manager = FakeOsqueryd(sockdir).start()
    ext = start_extension(manager.path, extra=["--verbose", "--unknown-future-flag", "x"],
                          env={"STOWAWAY_RUNTIME_SOCKETS": "none"})
    try:
        uuid, _info, _reg = manager.wait_registered()
        wait_until(lambda: manager.handler.pings > 0 or ext.poll() is not None, 10)
        assert ext.poll() is None
        manager.stop()
        ext.wait(15)  # --interval 3: noticed at the next ping
        rc, err = _stop(ext)
        assert "went away" in err
        assert not Path(f"{manager.path}.{uuid}").exists()  # its own socket removed
    finally:
        _stop(ext)
        manager.stop()


def test_shutdown_request_from_osquery(sockdir):
    manager = FakeOsqueryd(sockdir).start()
    ext = start_extension(manager.path, env={"STOWAWAY_RUNTIME_SOCKETS": "none",
                                             "STOWAWAY_NO_PROC_CONNECTOR": "1"})
    try:
        uuid, _i, _r = manager.wait_registered()
        c = manager.client(uuid)
        c.client.shutdown()
        ext.wait(10)
        assert ext.returncode == 0
    finally:
        _stop(ext)
        manager.stop()


def _podman_reason() -> str | None:
    from test_podman_ext import _REASON
    return _REASON


def _fifo_reader_pid(fifo: Path, pid: int) -> bool:
    """True once process `pid` has the trigger FIFO open (its `read` is then blocked on it)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd).endswith("/" + fifo.name) for fd in os.listdir(fd_dir))
    except OSError:
        return False


@pytest.mark.podman
def test_exec_right_after_registration_is_captured(sockdir, tmp_path):
    """Issue 10 item 4: once osqueryd sees the tables, no exec is missed.

    A `--rm` container waits on a FIFO; the fake osqueryd writes to it inside registerExtension,
    before the registration reply reaches the extension, so the container's wget is exec'd at the
    first moment osqueryd could query the tables. The exec capture must already be running and
    verified by then. (Before the fix the capture started only after registration and the wget
    was never in container_process_events.)"""
    reason = _podman_reason()
    if reason:
        pytest.skip(reason)
    from test_podman_ext import IMAGE, podman, unique
    name = unique("startup")
    trig = tmp_path / "trigger"
    trig.mkdir()
    fifo = trig / "go"
    os.mkfifo(fifo)
    # O_RDWR: the container's open of the FIFO for reading returns at once, and its `read`
    # blocks until the fake osqueryd writes.
    wfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    manager = FakeOsqueryd(sockdir).start()
    ext = None
    try:
        cid = podman("run", "-d", "--rm", "--name", name, "--network", "none",
                     "-v", f"{trig}:/t", IMAGE, "sh", "-c",
                     "read x < /t/go; exec wget -qO- http://ipinfo.io/")
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", cid))
        wait_until(lambda: _fifo_reader_pid(fifo, pid), 20, 0.05)
        fired: list[float] = []

        def trigger(_uuid: int) -> None:
            os.write(wfd, b"go\n")
            fired.append(time.monotonic())

        manager.handler.on_register = trigger
        ext = start_extension(manager.path, extra=["--verbose"],
                              env={"STOWAWAY_RUNTIME_SOCKETS": "none"})
        uuid, _info, _reg = manager.wait_registered(30)
        assert fired, "registration did not fire the trigger"
        client = manager.client(uuid)
        try:
            def wget_rows() -> list[dict]:
                rows = client.generate("container_process_events",
                                       [constraint("container_id", EQ, cid, "TEXT")]).response
                return [r for r in rows if "ipinfo.io" in r["cmdline"]]
            # the wget fails at once (no network) and the --rm container goes; its row is
            # buffered well before that
            wait_until(lambda: subprocess.run(["podman", "container", "exists", name]
                                              ).returncode != 0, 30, 0.2)
            try:
                rows = wait_until(wget_rows, 5, 0.1)
            except AssertionError:
                rows = []
        finally:
            client.close()
        assert rows, "the wget exec'd right after registration is not in container_process_events"
        r = rows[0]
        assert r["cmdline"] == "wget -qO- http://ipinfo.io/"
        assert r["location_discovery"] == "1" and r["indicator"] == "ipinfo.io"
        assert r["container_id"] == cid
    finally:
        os.close(wfd)
        podman("rm", "-f", "-t", "0", name, check=False)
        if ext is not None:
            _rc, err = _stop(ext)
            assert "Traceback" not in err, err
        manager.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private network namespace")
def test_registers_anyway_when_capture_cannot_work(sockdir):
    """Outside the initial network namespace the kernel refuses (or silently never delivers)
    process events: the extension must still register, after one clear warning."""
    from fake_osqueryd import extension_command
    manager = FakeOsqueryd(sockdir).start()
    t0 = time.monotonic()
    ext = subprocess.Popen(["unshare", "-n", *extension_command(), "--socket", manager.path,
                            "--timeout", "3", "--interval", "3"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "STOWAWAY_RUNTIME_SOCKETS": "none"})
    try:
        uuid, info, _reg = manager.wait_registered(20)
        assert info.name == "stowaway"
        c = manager.client(uuid)
        pev = c.generate("container_process_events")
        c.close()
        assert pev.status.code == 0 and pev.response == []
    finally:
        _rc, err = _stop(ext)
        manager.stop()
    assert err.count("process-event connector unavailable") == 1, err
    assert "Traceback" not in err


class _NeverReady:
    status = "starting"

    def wait_ready(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False


class _Ready:
    status = "running"

    def wait_ready(self, timeout: float) -> bool:
        return True


def test_capture_wait_is_bounded(caplog):
    from osquery_ext.extension import await_exec_capture
    with caplog.at_level("INFO", logger="stowaway.extension"):
        assert await_exec_capture(_NeverReady(), 0.05) == "unverified"
        assert await_exec_capture(_Ready(), 0.05) == "running"
        assert await_exec_capture(None, 5) == "off"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "not verified within 0.05s" in warnings[0].getMessage()
    assert any("exec capture verified" in r.getMessage() for r in caplog.records)
