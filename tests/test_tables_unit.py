"""Table logic with fake runtimes and a fake /proc: no podman, no osqueryd needed.

Covers what osqueryd relies on and what breaks silently in production: osquery constraint
handling, exact columns, attribution of every runtime's processes, degraded runtimes (socket absent,
socket that accepts and never answers) bounded by the timeout and logged once, bounded buffers,
event normalisation and listener reconnects, and the proc-connector message parsing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pytest

from fake_hosts import (DOCKER_ID, wait_until, K8S_ID, PODMAN_ID, FakeEngine, add_process, engine_event,
                        make_proc, podman_container)
from osquery_ext import events, proc_connector, tables
from osquery_ext.runtimes import (ContainerMeta, Runtimes, meta_from_api, mounts_flags,
                                  parse_socket_spec, parse_time)

CONTRACT_COLUMNS = {
    "container_processes": "pid ppid name path cmdline uid start_time container_id runtime pod_uid "
                           "netns container_name image cgroup_path location_discovery indicator tool "
                           "stdio_socket stdio_remote raw_sockets",
    "container_inventory": "id name image image_id state created started ip_addresses networks "
                           "privileged network_mode pid_mode ipc_mode runtime_socket_mounted "
                           "host_root_mounted labels pod_name pod_namespace pid runtime source cap_add",
    "container_events": "time time_nano action container_id name image exit_code runtime",
    "container_process_events": "time time_nano pid ppid uid name cmdline path container_id "
                                "container_name image runtime location_discovery indicator tool "
                                "stdio_socket stdio_remote raw_sockets",
    "container_sockets": "container_id pid netns protocol family local_address local_port "
                         "remote_address remote_port state",
    "container_nat_flows": "time time_nano event source protocol family container_address "
                           "container_port remote_address remote_port nat_address nat_port "
                           "nat_remote_address nat_remote_port start_time end_time container_id "
                           "container_name image conntrack_id",
}


@pytest.fixture
def sockdir():
    """A short directory for Unix sockets (pytest's tmp_path can exceed the 108-byte limit)."""
    d = Path(tempfile.mkdtemp(prefix="stw-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def proc(tmp_path):
    return make_proc(tmp_path)


def ctx(*constraints):
    return json.dumps({"constraints": [
        {"name": n, "affinity": "BIGINT", "list": [{"op": op, "expr": str(e)}]}
        for n, op, e in constraints]})


# -- columns and plugins -------------------------------------------------------------------------
def test_columns_are_the_contract():
    assert set(tables.COLUMNS) == set(CONTRACT_COLUMNS)
    for name, cols in CONTRACT_COLUMNS.items():
        assert [c.name for c in tables.COLUMNS[name]] == cols.split(), name
    names = [p().name() for p in tables.PLUGINS]
    assert names == list(CONTRACT_COLUMNS)
    for p in tables.PLUGINS:
        routes = p().routes()
        assert all(r["id"] == "column" and r["type"] in ("TEXT", "INTEGER", "BIGINT")
                   for r in routes)
        # osqueryd forwards constraints only on INDEX/REQUIRED/ADDITIONAL columns
        indexed = {r["name"] for r in routes if int(r["op"]) & 1}
        assert indexed == set(tables.INDEXED[p().name()])
    assert "time" in tables.INDEXED["container_events"]
    assert "time" in tables.INDEXED["container_process_events"]
    assert "container_id" in tables.INDEXED["container_processes"]


def test_plugin_call_through_sdk_routing(proc):
    buf = events.RingBuffer(10)
    buf.append({"time": "100", "time_nano": "1", "action": "start", "container_id": PODMAN_ID,
                "name": "x", "image": "i", "exit_code": "", "runtime": "podman"})
    tables.bind(tables.Sources(proc=str(proc), runtimes=None, events=buf))
    try:
        resp = tables.ContainerEventsTable().call({"action": "generate",
                                                   "context": ctx(("time", 4, 99))})
        assert resp.status.code == 0 and len(resp.response) == 1
        assert all(isinstance(v, str) for v in resp.response[0].values())
        resp = tables.ContainerEventsTable().call({"action": "generate",
                                                   "context": ctx(("time", 4, 100))})
        assert resp.response == []
    finally:
        tables.bind(tables.Sources(proc=str(proc), runtimes=None))


# -- constraints ---------------------------------------------------------------------------------
def test_parse_constraints_formats():
    assert tables.parse_constraints(ctx(("time", 4, 5))) == [("time", 4, "5")]
    assert tables.parse_constraints({"constraints": [{"name": "time", "list": []}]}) == []
    assert tables.parse_constraints("") == []
    assert tables.parse_constraints("not json") == []
    assert tables.parse_constraints({"constraints": [{"name": "a", "list": [{"op": "x"}]}]}) == []
    two = {"constraints": [{"name": "time", "affinity": "BIGINT",
                            "list": [{"op": 32, "expr": "10"}, {"op": 16, "expr": "20"}]}]}
    assert tables.parse_constraints(two) == [("time", 32, "10"), ("time", 16, "20")]


@pytest.mark.parametrize("op,ref,expected", [
    (tables.OP_EQUALS, 200, [200]),
    (tables.OP_GREATER_THAN, 200, [300]),
    (tables.OP_GREATER_THAN_OR_EQUALS, 200, [200, 300]),
    (tables.OP_LESS_THAN, 200, [100]),
    (tables.OP_LESS_THAN_OR_EQUALS, 200, [100, 200]),
    (64, 200, [100, 200, 300]),  # LIKE: left to osquery
])
def test_time_constraints_on_event_buffer(op, ref, expected):
    buf = events.RingBuffer(10)
    for t in (100, 200, 300):
        buf.append({"time": str(t), "container_id": "x"})
    rows = tables.generate_buffered(buf, ctx(("time", op, ref)))
    assert [int(r["time"]) for r in rows] == expected


def test_time_range_and_container_id_together():
    buf = events.RingBuffer(10)
    for t in range(10):
        buf.append({"time": str(t), "container_id": "a" if t % 2 else "b"})
    rows = tables.generate_buffered(buf, ctx(("time", 4, 2), ("time", 16, 8), ("container_id", 2, "a")))
    assert [r["time"] for r in rows] == ["3", "5", "7"]
    rows = tables.generate_buffered(buf, ctx(("time", 4, "not-a-number")))
    assert len(rows) == 10


def test_event_rows_are_copies():
    buf = events.RingBuffer(3)
    buf.append({"time": "1"})
    rows = tables.generate_buffered(buf, None)
    rows[0]["time"] = "999"
    assert buf.snapshot()[0]["time"] == "1"


# -- buffers -------------------------------------------------------------------------------------
def test_ring_buffer_is_bounded_and_keeps_newest():
    buf = events.RingBuffer(5)
    for i in range(12):
        buf.append({"time": str(i)})
    assert len(buf) == 5
    assert [r["time"] for r in buf.snapshot()] == ["7", "8", "9", "10", "11"]
    assert buf.dropped == 7


# -- container_processes ---------------------------------------------------------------------------
def test_container_processes_attribution(proc):
    src = tables.Sources(proc=str(proc), runtimes=None)
    rows = {r["pid"]: r for r in tables.generate_container_processes(src, None)}
    assert set(rows) == {"100", "101", "200", "300"}  # host pid 1 and /proc/self excluded
    assert rows["100"]["container_id"] == PODMAN_ID and rows["100"]["runtime"] == "podman"
    assert rows["200"]["container_id"] == DOCKER_ID and rows["200"]["runtime"] == "docker"
    assert rows["200"]["uid"] == "101" and rows["200"]["path"] == "/usr/sbin/nginx"
    assert rows["300"]["container_id"] == K8S_ID
    assert rows["300"]["pod_uid"] == "12345678-1234-1234-1234-123456789abc"
    # non-UTF-8 bytes kept as \xNN, and the argument with quotes in it ANSI-C quoted
    assert rows["300"]["cmdline"] == "python3 -c $'print(\\'\\xff\\xfe\\')'"
    assert rows["100"]["ppid"] == "90" and rows["100"]["netns"] == "4026532001"
    tick = os.sysconf("SC_CLK_TCK")
    assert rows["100"]["start_time"] == str(int(1700000000 + 1000 / tick))
    assert rows["101"]["location_discovery"] == "1" and "ipinfo.io" in rows["101"]["indicator"]
    assert rows["101"]["tool"] == "wget"
    assert rows["100"]["location_discovery"] == "0"
    for r in rows.values():
        assert set(r) == set(CONTRACT_COLUMNS["container_processes"].split())


def test_container_id_constraint_reads_only_cgroup_of_others(proc, monkeypatch):
    opened: list[str] = []
    real = tables._read

    def spy(path):
        opened.append(path)
        return real(path)
    monkeypatch.setattr(tables, "_read", spy)
    src = tables.Sources(proc=str(proc), runtimes=None)
    rows = tables.generate_container_processes(src, ctx(("container_id", 2, DOCKER_ID)))
    assert [r["pid"] for r in rows] == ["200"]
    non_cgroup = [p for p in opened if not p.endswith("/cgroup") and p != f"{proc}/stat"]
    assert non_cgroup and all("/200/" in p for p in non_cgroup)


def test_process_vanishing_mid_read(proc):
    (proc / "101" / "stat").unlink()          # exited after its cgroup was read
    shutil.rmtree(proc / "200")               # exited before the scan reached it
    (proc / "300" / "cmdline").write_bytes(b"")  # zombie: empty cmdline
    src = tables.Sources(proc=str(proc), runtimes=None)
    rows = {r["pid"]: r for r in tables.generate_container_processes(src, None)}
    assert set(rows) == {"100", "300"}
    assert rows["300"]["cmdline"] == "" and rows["300"]["location_discovery"] == "0"


def test_very_long_command_line(proc):
    # The whole command line is carried and classified: a lookup after 200 KB of padding too.
    argv = ["sh", "-c", ": " + "x" * 200000 + "; wget -qO- https://api.ipify.org"]
    add_process(proc, 400, f"0::/machine.slice/libpod-{PODMAN_ID}.scope\n", argv, "sh")
    calls = []

    def counting(a: list[str]) -> dict:
        calls.append(sum(map(len, a)))
        return tables.default_classify(a)
    src = tables.Sources(proc=str(proc), runtimes=None, classify=counting)
    for _ in range(3):
        row = next(r for r in tables.generate_container_processes(src, None) if r["pid"] == "400")
        assert len(row["cmdline"]) > 200000
        assert row["location_discovery"] == "1" and row["indicator"] == "api.ipify.org"
    assert len([n for n in calls if n > 200000]) == 1 and len(calls) == 5  # each argv once


# -- sockets -------------------------------------------------------------------------------------
def test_container_sockets_once_per_netns(proc):
    src = tables.Sources(proc=str(proc), runtimes=None)
    rows = tables.generate_container_sockets(src, None)
    podman = [r for r in rows if r["container_id"] == PODMAN_ID]
    # pids 100 and 101 share one netns: its three sockets appear once
    assert len(podman) == 3
    listen = next(r for r in podman if r["state"] == "LISTEN")
    assert (listen["local_address"], listen["local_port"], listen["family"]) == ("127.0.0.1", "8080", "4")
    est = next(r for r in podman if r["state"] == "ESTABLISHED")
    assert (est["remote_address"], est["remote_port"]) == ("34.117.187.81", "80")
    udp = next(r for r in podman if r["protocol"] == "udp")
    assert (udp["local_address"], udp["family"], udp["local_port"]) == ("::1", "6", "53")
    assert udp["state"] == "UNCONN"
    only = tables.generate_container_sockets(src, ctx(("container_id", 2, DOCKER_ID)))
    assert only == []  # the docker container has no sockets in its netns


# -- runtimes: inventory, degraded, hung -------------------------------------------------------------
def test_inventory_from_fake_podman_and_cgroup_only(proc, sockdir):
    cont = podman_container(PODMAN_ID, "web-1", ip="10.89.0.7", network="stw-int",
                            privileged=True,
                            mounts=[{"Type": "bind", "Source": "/var/run/docker.sock",
                                     "Destination": "/var/run/docker.sock"},
                                    {"Type": "bind", "Source": "/", "Destination": "/host"}],
                            labels={"io.kubernetes.pod.name": "web",
                                    "io.kubernetes.pod.namespace": "prod"})
    eng = FakeEngine(str(sockdir / "p.sock"), [cont]).start()
    try:
        rt = Runtimes({"podman": f"unix://{sockdir}/p.sock"}, timeout=2)
        src = tables.Sources(proc=str(proc), runtimes=rt)
        rows = {r["id"]: r for r in tables.generate_container_inventory(src, None)}
        api = rows[PODMAN_ID]
        assert api["source"] == "api" and api["name"] == "web-1"
        assert api["ip_addresses"] == "10.89.0.7" and api["networks"] == "stw-int"
        assert api["privileged"] == "1" and api["runtime_socket_mounted"] == "1"
        assert api["host_root_mounted"] == "1"
        assert (api["pod_name"], api["pod_namespace"]) == ("web", "prod")
        assert json.loads(api["labels"])["io.kubernetes.pod.namespace"] == "prod"
        assert api["started"] == str(parse_time("2026-11-27T20:03:47.927046714Z"))
        assert rows[DOCKER_ID]["source"] == "cgroup" and rows[DOCKER_ID]["pid"] == "200"
        assert rows[K8S_ID]["source"] == "cgroup" and rows[K8S_ID]["runtime"] == "containerd"
        # names reach container_processes from the same runtime
        procs = tables.generate_container_processes(src, ctx(("container_id", 2, PODMAN_ID)))
        assert {r["container_name"] for r in procs} == {"web-1"}
        assert {r["image"] for r in procs} == {"localhost/stowaway-busybox:latest"}
        only = tables.generate_container_inventory(src, ctx(("id", 2, DOCKER_ID)))
        assert [r["id"] for r in only] == [DOCKER_ID]
    finally:
        eng.stop()


def test_runtime_down_degrades_and_logs_once(proc, sockdir, caplog):
    rt = Runtimes({"docker": f"unix://{sockdir}/absent.sock"}, timeout=1)
    src = tables.Sources(proc=str(proc), runtimes=rt)
    caplog.set_level(logging.WARNING, logger="osquery_ext.runtimes")
    for _ in range(3):
        inv = tables.generate_container_inventory(src, None)
        assert {r["source"] for r in inv} == {"cgroup"} and len(inv) == 3
        procs = tables.generate_container_processes(src, None)
        assert len(procs) == 4 and all(r["container_name"] == "" for r in procs)
    downs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(downs) == 1 and "absent" in downs[0].getMessage()


def test_hung_runtime_socket_bounded_by_timeout(proc, sockdir, caplog):
    eng = FakeEngine(str(sockdir / "h.sock"), hang=True).start()
    caplog.set_level(logging.WARNING, logger="osquery_ext.runtimes")
    try:
        rt = Runtimes({"docker": f"unix://{sockdir}/h.sock"}, timeout=0.5, cache_ttl=0)
        src = tables.Sources(proc=str(proc), runtimes=rt)
        for gen in (tables.generate_container_inventory, tables.generate_container_processes,
                    tables.generate_container_inventory):
            t0 = time.monotonic()
            rows = gen(src, None)
            elapsed = time.monotonic() - t0
            assert elapsed < 0.5 + 0.4, f"{gen.__name__} blocked {elapsed:.2f}s"
            assert rows  # degraded, not empty: /proc still answers
        downs = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(downs) == 1
    finally:
        eng.stop()


def test_runtime_comes_back(proc, sockdir, caplog):
    caplog.set_level(logging.INFO, logger="osquery_ext.runtimes")
    path = sockdir / "p.sock"
    rt = Runtimes({"podman": f"unix://{path}"}, timeout=1, cache_ttl=0)
    assert rt.inventory() == []
    eng = FakeEngine(str(path), [podman_container(PODMAN_ID, "web-1")]).start()
    try:
        assert [m.name for m in rt.inventory()] == ["web-1"]
        msgs = [r.getMessage() for r in caplog.records]
        assert sum("unavailable" in m for m in msgs) == 1
        assert sum("answers again" in m for m in msgs) == 1
    finally:
        eng.stop()


def test_inspect_failure_skips_that_container_not_the_runtime(sockdir, caplog):
    """Podman answers 500 to the inspect of a `--rm` container it is removing (the list call still
    names it): that container is gone, the runtime is up, its other containers keep their rows."""
    gone = "e" * 64
    path = sockdir / "p.sock"
    removing = {"cause": "container has already been removed",
                "message": f"container {gone}: container has already been removed", "response": 500}
    eng = FakeEngine(str(path), [podman_container(gone, "oneshot"), podman_container(PODMAN_ID, "web-1")],
                     inspect_errors={gone: (500, removing)}).start()
    caplog.set_level(logging.INFO, logger="osquery_ext.runtimes")
    try:
        rt = Runtimes({"podman": f"unix://{path}"}, timeout=2, cache_ttl=0)
        for _ in range(3):
            assert [m.name for m in rt.inventory()] == ["web-1"]
        assert not rt.health.is_down("podman")
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert f"/containers/{gone}/json" in " ".join(eng.requests)  # it was asked, and skipped
        eng.inspect_errors[gone] = (404, {"message": "No such container"})
        assert [m.name for m in rt.inventory()] == ["web-1"]
    finally:
        eng.stop()


def test_connection_failure_during_inspect_is_runtime_down():
    """Only an answer from the runtime is about one container; a broken connection is the runtime's."""
    import requests

    from osquery_ext.runtimes import RuntimeClient

    class Broken(RuntimeClient):
        def list_raw(self):
            return [podman_container(PODMAN_ID, "web-1")[0]]

        def inspect(self, cid):
            raise requests.exceptions.ConnectionError("Connection aborted")

    with pytest.raises(requests.exceptions.ConnectionError):
        Broken("podman", "unix:///nonexistent.sock").inventory()


def test_meta_helpers():
    assert parse_time("0001-01-01T00:00:00Z") == 0
    assert parse_time("2026-11-27T20:03:47.927046714Z") == parse_time("2026-11-27T20:03:47Z")
    assert parse_time(1795809827) == 1795809827
    assert parse_time("garbage") == 0
    assert mounts_flags([{"Source": "/run/podman/podman.sock"}]) == (True, False)
    assert mounts_flags([{"Source": "/"}, {"Source": "/home/x"}]) == (False, True)
    assert mounts_flags([{"Source": "/srv/data"}]) == (False, False)
    assert parse_socket_spec("docker,podman=/tmp/p.sock") == {
        "docker": "unix:///var/run/docker.sock", "podman": "/tmp/p.sock"}
    assert parse_socket_spec("none") == {}
    listed, ins = podman_container(PODMAN_ID, "n")
    ins["HostConfig"].update(NetworkMode="host", PidMode="host", IpcMode="host")
    m = meta_from_api("podman", listed, ins)
    assert (m.network_mode, m.pid_mode, m.ipc_mode) == ("host", "host", "host")
    assert isinstance(m, ContainerMeta) and m.to_row()["pid"] == "100"


# -- events --------------------------------------------------------------------------------------
def test_event_rows_normalised():
    assert events.normalise_action("remove") == "destroy"
    assert events.normalise_action("died") == "die"
    assert events.normalise_action("exec_start: sh -c wget") == "exec"
    row = events.event_row("podman", engine_event("die", PODMAN_ID, "x", 100, exit_code="1"))
    assert row["action"] == "die" and row["exit_code"] == "1" and row["time"] == "100"
    assert row["time_nano"] == str(100 * 10**9 + 123) and row["image"].endswith("busybox:latest")
    pull = {"status": "pull", "Type": "image", "Action": "pull", "time": 5, "timeNano": 5 * 10**9,
            "Actor": {"ID": "", "Attributes": {"name": "docker.io/library/alpine:3"}}}
    row = events.event_row("docker", pull)
    assert row["action"] == "pull" and row["image"] == "docker.io/library/alpine:3"
    assert events.event_row("docker", {"Type": "network", "Action": "connect"}) is None


def test_listener_buffers_dedups_and_reconnects(sockdir):
    path = str(sockdir / "p.sock")
    eng = FakeEngine(path).start()
    rt = Runtimes({"podman": f"unix://{path}"}, timeout=1)
    buf = events.RingBuffer(100)
    lst = events.EventListener(rt.clients[0], buf, rt, max_backoff=0.3)
    lst.start()
    try:
        assert lst.connected.wait(5)
        for a in ("create", "start", "died", "remove"):
            eng.emit(engine_event(a, PODMAN_ID, "short-lived", 100))
        eng.emit(engine_event("create", PODMAN_ID, "short-lived", 100))  # duplicate: dropped
        wait_until(lambda: len(buf) >= 4, 5.0, 0.05)
        time.sleep(0.2)
        assert [r["action"] for r in buf.snapshot()] == ["create", "start", "die", "destroy"]
        assert rt.lookup(PODMAN_ID).name == "short-lived"
        eng.stop()  # runtime restarts
        eng = FakeEngine(path).start()
        eng.emit(engine_event("create", DOCKER_ID, "after-restart", 101))
        wait_until(lambda: len(buf) >= 5, 10, 0.05)
        assert buf.snapshot()[-1]["container_id"] == DOCKER_ID
    finally:
        lst.stop()
        eng.stop()


# -- proc connector ------------------------------------------------------------------------------
def _exec_datagram(tgid: int, what: int = proc_connector.PROC_EVENT_EXEC) -> bytes:
    ev = struct.pack("=IIQ", what, 0, 123) + struct.pack("=II", tgid, tgid) + b"\0" * 16
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(ev), 0) + ev
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_connector_message_parsing():
    data = _exec_datagram(4242) + _exec_datagram(77, proc_connector.PROC_EVENT_EXIT)
    assert [(w, t) for w, t, _ in proc_connector.parse_messages(data)] == [
        (proc_connector.PROC_EVENT_EXEC, 4242), (proc_connector.PROC_EVENT_EXIT, 77)]
    assert proc_connector.parse_messages(b"\x01\x02") == []
    msg = proc_connector.subscribe_message(pid=9)
    assert len(msg) == 40 and struct.unpack_from("=I", msg, 36)[0] == 1


def test_connector_exec_row(proc):
    src = tables.Sources(proc=str(proc), runtimes=None)
    row = proc_connector.exec_row(101, src.attribute_raw_text, src.classify_list,
                                  lambda c: ("web-1", "img"), proc=str(proc), now_ns=5 * 10**9)
    assert row["container_id"] == PODMAN_ID and row["location_discovery"] == "1"
    assert row["cmdline"] == "wget -qO- http://ipinfo.io/" and row["time"] == "5"
    assert (row["container_name"], row["image"], row["ppid"]) == ("web-1", "img", "100")
    assert proc_connector.exec_row(1, src.attribute_raw_text, src.classify_list, None,
                                   proc=str(proc)) is None  # host process
    assert proc_connector.exec_row(999, src.attribute_raw_text, src.classify_list, None,
                                   proc=str(proc)) is None  # already gone
    assert set(row) == set(CONTRACT_COLUMNS["container_process_events"].split())


def test_connector_thread_consumes_capture_records(tmp_path):
    """The extension side of the connector: status lines, records -> classified rows."""
    import sys
    rec = {"t": 7 * 10**9, "pid": 5, "ppid": 4, "uid": 0, "comm": "exe",
           "argv": ["wget", "-qO-", "http://ipinfo.io/"], "exe": "/bin/busybox",
           "att": {"container_id": PODMAN_ID, "runtime": "podman"}}
    script = tmp_path / "cap.py"
    script.write_text("import json\n"
                      "print(json.dumps({'status': 'running'}))\n"
                      f"print(json.dumps({rec!r}))\n"
                      "print('not json')\n"
                      "print(json.dumps({'status': 'overrun', 'count': 1}))\n")
    src = tables.Sources(runtimes=None)
    buf = events.RingBuffer(10)
    pc = proc_connector.ProcConnector(buf, src.classify_list, lambda c: ("n", "i"),
                                      command=[sys.executable, str(script)], max_restarts=0)
    pc.start()
    pc.join(10)
    rows = buf.snapshot()
    assert len(rows) == 1 and rows[0]["name"] == "wget" and rows[0]["location_discovery"] == "1"
    assert rows[0]["time"] == "7" and rows[0]["container_name"] == "n"
    assert pc.overruns == 1 and pc.status == "unavailable"  # the capture exited for good


def test_connector_unavailable_is_reported_once(caplog):
    import sys
    caplog.set_level(logging.WARNING, logger="osquery_ext.proc_connector")
    buf = events.RingBuffer(10)
    cmd = [sys.executable, "-c",
           "import json; print(json.dumps({'status': 'unavailable', 'reason': 'EPERM'}))"]
    pc = proc_connector.ProcConnector(buf, lambda a: {}, None, command=cmd)
    pc.start()
    pc.join(10)
    assert pc.status == "unavailable" and pc.ready.is_set() and not pc.is_alive()
    msgs = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(msgs) == 1 and "EPERM" in msgs[0]


def test_process_events_names_filled_at_query_time(proc):
    """An exec seen before the runtime told the container's name gets it when queried."""
    rt = Runtimes({}, timeout=1)
    rt.remember("podman", PODMAN_ID, "late-name", "img:1")
    buf = events.RingBuffer(10)
    buf.append({"time": "1", "container_id": PODMAN_ID, "container_name": "", "image": ""})
    src = tables.Sources(proc=str(proc), runtimes=rt, process_events=buf)
    rows = tables.generate_container_process_events(src, None)
    assert (rows[0]["container_name"], rows[0]["image"]) == ("late-name", "img:1")


# -- deployment files --------------------------------------------------------------------------------
DEPLOY = Path(__file__).resolve().parents[1] / "osquery_ext" / "deploy"


def test_pack_has_the_five_tables_for_linux():
    pack = json.loads((DEPLOY / "stowaway.pack.conf").read_text())
    assert pack["platform"] == "linux"
    assert set(pack["queries"]) == {f"stowaway_{t}" for t in CONTRACT_COLUMNS}
    for name, q in pack["queries"].items():
        table = name[len("stowaway_"):]
        assert f"FROM {table}" in q["query"] and q["query"].rstrip().endswith(";")
        assert isinstance(q["interval"], int) and 0 < q["interval"] <= 3600
        assert "snapshot" in q and q["description"]
    for t in ("container_events", "container_process_events"):
        q = pack["queries"][f"stowaway_{t}"]
        assert "WHERE time >" in q["query"] and q["removed"] is False


def test_autoload_files():
    ext = DEPLOY / "stowaway.ext"
    assert ext.name.endswith(".ext") and os.access(ext, os.X_OK)
    assert ext.read_text().startswith("#!/bin/sh")
    lines = [ln.strip() for ln in (DEPLOY / "extensions.load").read_text().splitlines()]
    paths = [ln for ln in lines if ln and not ln.startswith(("#", ";"))]
    assert paths and all(p.endswith(".ext") for p in paths)


# -- extension flags ---------------------------------------------------------------------------------
def test_extension_flags_ignore_unknown():
    from osquery_ext import extension
    args = extension.parse_args(["--socket", "/x.em", "--timeout", "3", "--interval", "5",
                                 "--verbose", "--extensions_require=foo", "--some-new-flag"])
    assert (args.socket, args.timeout, args.interval, args.verbose) == ("/x.em", 3, 5, True)
    assert "--some-new-flag" in args.unknown


def test_handler_unknown_action_and_missing_table():
    from osquery_ext import extension
    h = extension.Handler(lambda *a: None)
    assert h.ping().code == 0
    assert h.call("table", "container_events", {"action": "drop"}).status.code == 1
    assert h.call("table", "no_such_table", {"action": "columns"}).status.code == 1
    from osquery import ExtensionManager
    for p in tables.PLUGINS:
        ExtensionManager().add_plugin(p)
    tables.bind(tables.Sources(runtimes=None, events=events.RingBuffer(3)))
    resp = h.call("table", "container_events", {"action": "generate", "context": ""})
    assert resp.status.code == 0 and resp.response == []
    resp = h.call("table", "container_events", {"action": "columns"})
    assert [r["name"] for r in resp.response] == CONTRACT_COLUMNS["container_events"].split()


def test_extension_stays_light():
    """The extension runs on every host: no model, scheduler or heavy libraries get imported."""
    import subprocess
    import sys
    code = ("import sys, osquery_ext.extension, osquery_ext.tables, osquery_ext.runtimes, "
            "osquery_ext.events, osquery_ext.proc_connector\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('model', 'scheduler', 'sklearn', 'numpy', 'pandas', 'dask', 'joblib')]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[1]), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# -- the one cmdline formatter (issue 9 item 6) ----------------------------------------------------
HOSTILE_ARGV = [
    b"sh", b"-c",
    b"echo \x1b]0;owned\x07\x1b[2J\x1b[1;1Hall clear",   # OSC title + clear screen + cursor home
    b"progress 50%\rdone",                                # CR overwrites the line
    b"it's \"quoted\" \\ back",                           # quotes and a backslash
    b"", b"two words", b"caf\xc3\xa9", b"\xff\xfe",        # empty, space, UTF-8, not UTF-8
    b"\xe2\x80\xaeexe.txt",                               # U+202E RIGHT-TO-LEFT OVERRIDE
    b"\xc2\x9b31m",                                       # U+009B, the one-character CSI
]


def _no_terminal_controls(text: str) -> bool:
    """Only printable characters and plain spaces: nothing a terminal would act on."""
    import unicodedata
    return all(ch == " " or unicodedata.category(ch)[0] not in "CZ" for ch in text)


def test_cmdline_formatter_escapes_controls_and_keeps_boundaries():
    from osquery_ext.cmdline import format_cmdline
    shown = format_cmdline(b"\0".join(HOSTILE_ARGV) + b"\0")
    assert shown == ("sh -c $'echo \\x1b]0;owned\\x07\\x1b[2J\\x1b[1;1Hall clear' "
                     "$'progress 50%\\rdone' $'it\\'s \"quoted\" \\\\ back' '' 'two words' café "
                     "$'\\xff\\xfe' $'\\u202eexe.txt' $'\\u009b31m'")
    assert _no_terminal_controls(shown)
    # str arguments: the same rendering; a NUL (impossible in /proc, possible in a list) shows
    assert format_cmdline(["a\x00b", "ok"]) == "$'a\\x00b' ok"
    assert format_cmdline(["wget", "-qO-", "http://ipinfo.io/"]) == "wget -qO- http://ipinfo.io/"
    # boundaries: one argument with a space and two arguments differ
    assert format_cmdline(["sh", "-c", "a b"]) != format_cmdline(["sh", "-c", "a", "b"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_cmdline_formatter_round_trips_through_a_shell():
    """Unambiguous: bash reads every rendering back into exactly the original argv bytes."""
    import subprocess
    from osquery_ext.cmdline import format_cmdline
    cases = [HOSTILE_ARGV, [b"x", b"*", b"~", b"#c", b"$(id)", b"`id`", b"a=b", b"-n", b"!x"],
             [b"'", b"''", b"\\", b"\\x41", b"\n", b"\t", b"\x7f", b"\xc3"]]
    for argv in cases:
        shown = format_cmdline(b"\0".join(argv) + b"\0")
        out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", shown],
                             capture_output=True, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
                             check=True).stdout
        assert out.split(b"\0")[:-1] == argv, shown


def test_both_process_tables_render_cmdline_the_same(tmp_path):
    """container_processes and container_process_events carry the same cmdline for a process
    (the scheduler joins the two on it), through the same formatter."""
    proc = make_proc(tmp_path)
    pod = f"0::/machine.slice/libpod-{PODMAN_ID}.scope\n"
    add_process(proc, 400, pod, HOSTILE_ARGV, "sh", ppid=100)
    src = tables.Sources(proc=str(proc), runtimes=None)
    polled = {r["pid"]: r for r in tables.generate_container_processes(src, None)}["400"]
    event = proc_connector.exec_row(400, src.attribute_raw_text, src.classify_list, None,
                                    proc=str(proc))
    assert event is not None and polled["cmdline"] == event["cmdline"]
    assert polled["cmdline"].startswith("sh -c $'echo \\x1b]0;owned")
    assert _no_terminal_controls(event["cmdline"])
    # a capture record without the rendered column (older capture) gets the same formatter
    rec = {"t": 1, "pid": 1, "argv": ["sh", "-c", "a\x1bb"], "att": {"container_id": PODMAN_ID}}
    assert proc_connector.build_row(rec, lambda a: {}, None)["cmdline"] == "sh -c $'a\\x1bb'"
