"""Kernel process-event connector (netlink, root): every exec inside a container, when it happens.

Why: the T1614 commands (`wget -qO- http://ipinfo.io/` in a `--rm` container) live for a few
milliseconds, far less than any osquery schedule interval, so polling /proc misses them. The kernel
announces every exec on the proc connector (NETLINK_CONNECTOR, group CN_IDX_PROC) as soon as it
happens. This listener subscribes (PROC_CN_MCAST_LISTEN), and on each PROC_EVENT_EXEC reads the new
process's cgroup first (to drop host processes cheaply) and then its cmdline, stat and exe right
away, attributes it to a container, classifies it and appends a container_process_events row to a
bounded ring buffer.

Limits (see docs/osquery.md): needs root in the initial network namespace (the kernel only
broadcasts there), busybox applets run in-process without execve are invisible, and a process that
exits before we read /proc still loses its cmdline (the row keeps what could be read).
Where the connector is unavailable, this says so once in the log and the other tables keep working.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from typing import Any, Callable

from osquery_ext.events import RingBuffer

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLMSG_NOOP = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")        # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")          # idx, val, seq, ack, len, flags
_PROC_EV_HDR = struct.Struct("=IIQ")        # what, cpu, timestamp_ns
_EXEC = struct.Struct("=II")                # process_pid, process_tgid

#: (cgroup file text) -> attribution dict with container_id, runtime, cgroup_path, pod_uid; or None.
Attribute = Callable[[str], "dict[str, str] | None"]
#: (argv list) -> classification dict with location_discovery (bool), indicator, tool.
Classify = Callable[[list[str]], dict[str, Any]]
#: container id -> (name, image) or None, without I/O.
Lookup = Callable[[str], "tuple[str, str] | None"]


def subscribe_message(op: int = PROC_CN_MCAST_LISTEN, pid: int | None = None) -> bytes:
    """The netlink datagram that (un)subscribes this socket to process events."""
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0,
                         os.getpid() if pid is None else pid)
    return hdr + cn


def parse_messages(data: bytes) -> list[tuple[int, int, int]]:
    """(what, tgid, timestamp_ns) for each proc event in one netlink datagram.

    For EXEC and EXIT the tgid is the process; for FORK it is the child. Others give tgid 0.
    """
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        nl_len, nl_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if nl_len < _NLMSGHDR.size:
            break
        body = off + _NLMSGHDR.size
        end = off + nl_len
        if nl_type not in (NLMSG_ERROR, NLMSG_NOOP) and body + _CN_MSG.size + _PROC_EV_HDR.size <= len(data):
            idx, val, _s, _a, _ln, _f = _CN_MSG.unpack_from(data, body)
            if idx == CN_IDX_PROC and val == CN_VAL_PROC:
                ev = body + _CN_MSG.size
                what, _cpu, ts = _PROC_EV_HDR.unpack_from(data, ev)
                tgid = 0
                d = ev + _PROC_EV_HDR.size
                if what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and d + 8 <= len(data):
                    tgid = _EXEC.unpack_from(data, d)[1]
                elif what == PROC_EVENT_FORK and d + 16 <= len(data):
                    tgid = struct.unpack_from("=IIII", data, d)[3]
                out.append((what, tgid, ts))
        off += (nl_len + 3) & ~3
        if end > len(data):
            break
    return out


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def split_cmdline(raw: bytes) -> list[str]:
    """argv from /proc/<pid>/cmdline bytes (NUL separated; undecodable bytes kept as escapes)."""
    parts = raw.rstrip(b"\0").split(b"\0") if raw else []
    return [p.decode("utf-8", "backslashreplace") for p in parts]


def parse_stat(raw: bytes) -> tuple[str, int, int]:
    """(comm, ppid, starttime ticks) from /proc/<pid>/stat; comm may hold spaces and ')'."""
    lpar = raw.find(b"(")
    rpar = raw.rfind(b")")
    comm = raw[lpar + 1:rpar].decode("utf-8", "backslashreplace")
    fields = raw[rpar + 2:].split()
    # fields[0] is state (field 3); ppid is field 4, starttime field 22.
    return comm, int(fields[1]), int(fields[19])


def exec_row(pid: int, attribute: Attribute, classify: Classify, lookup: Lookup | None,
             proc: str = "/proc", now_ns: int | None = None) -> dict[str, str] | None:
    """Read one just-exec'd process and build its row; None when it is not in a container or
    was gone before its cgroup could be read."""
    base = f"{proc}/{pid}"
    cg = _read(base + "/cgroup")
    if cg is None:
        return None
    att = attribute(cg.decode("utf-8", "replace"))
    if not att or not att.get("container_id"):
        return None
    cmd_raw = _read(base + "/cmdline") or b""
    stat_raw = _read(base + "/stat")
    try:
        exe = os.readlink(base + "/exe")
    except OSError:
        exe = ""
    try:
        uid = os.stat(base).st_uid
    except OSError:
        uid = -1
    comm, ppid = "", 0
    if stat_raw:
        try:
            comm, ppid, _ = parse_stat(stat_raw)
        except (ValueError, IndexError):
            pass
    argv = split_cmdline(cmd_raw)
    name = comm
    if argv and (not comm or comm == "exe"):  # busybox re-exec via /proc/self/exe
        name = os.path.basename(argv[0])[:15]
    cls = classify(argv) if argv else {}
    cid = att["container_id"]
    cname, image = (lookup(cid) if lookup else None) or ("", "")
    tns = now_ns if now_ns is not None else time.time_ns()
    return {
        "time": str(tns // 1_000_000_000), "time_nano": str(tns), "pid": str(pid),
        "ppid": str(ppid), "uid": str(uid), "name": name, "cmdline": " ".join(argv),
        "path": exe, "container_id": cid, "container_name": cname, "image": image,
        "runtime": att.get("runtime", ""),
        "location_discovery": "1" if cls.get("location_discovery") else "0",
        "indicator": str(cls.get("indicator") or ""), "tool": str(cls.get("tool") or ""),
    }


class ProcConnector(threading.Thread):
    """The listener thread. `status` is one of starting / running / unavailable / stopped."""

    def __init__(self, buffer: RingBuffer, attribute: Attribute, classify: Classify,
                 lookup: Lookup | None = None, self_test: bool = True) -> None:
        super().__init__(name="proc-connector", daemon=True)
        self.buffer = buffer
        self.attribute = attribute
        self.classify = classify
        self.lookup = lookup
        self.self_test = self_test
        self.status = "starting"
        self.reason = ""
        self.ready = threading.Event()
        self.execs = 0
        self.overruns = 0
        self._sock: socket.socket | None = None
        self._stop_evt = threading.Event()
        self._probe_pid = 0
        self._probe_seen = threading.Event()

    def open(self) -> None:
        """Create, bind and subscribe the socket (raises OSError when not permitted)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root) first: bursts of execs
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                    break
                except OSError:
                    continue
            sock.bind((0, CN_IDX_PROC))
            sock.send(subscribe_message(PROC_CN_MCAST_LISTEN, sock.getsockname()[0]))
            sock.settimeout(0.5)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def unavailable(self, why: str) -> None:
        self.status = "unavailable"
        self.reason = why
        log.warning("process-event connector unavailable (%s): container_process_events stays "
                    "empty; the other tables keep working", why)
        self.ready.set()

    def run(self) -> None:
        try:
            self.open()
        except OSError as exc:
            self.unavailable(f"{exc.strerror or exc} - needs root in the initial network namespace")
            return
        self.status = "running"
        if self.self_test:
            threading.Thread(target=self._probe, name="proc-connector-probe", daemon=True).start()
        else:
            self.ready.set()
        assert self._sock is not None
        while not self._stop_evt.is_set():
            try:
                data = self._sock.recv(262144)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: we were too slow
                    self.overruns += 1
                    if self.overruns == 1:
                        log.warning("process-event connector overrun: some execs were dropped")
                    continue
                if self._stop_evt.is_set():
                    break
                self.unavailable(f"recv failed: {exc}")
                return
            for what, tgid, _ts in parse_messages(data):
                if what != PROC_EVENT_EXEC:
                    continue
                if tgid == self._probe_pid:
                    self._probe_seen.set()
                    continue
                self.execs += 1
                try:
                    row = exec_row(tgid, self.attribute, self.classify, self.lookup)
                except Exception:  # one odd process must not kill the listener
                    log.debug("exec of %d could not be read", tgid, exc_info=True)
                    continue
                if row is not None:
                    self.buffer.append(row)
        self.status = "stopped"

    def _probe(self) -> None:
        """Exec one harmless process and check its event arrives: the kernel delivers nothing
        (without error) outside the initial network namespace, so silence must be detected."""
        try:
            p = subprocess.Popen(["/bin/sh", "-c", "exec sleep 0.2"])  # noqa: S603
            self._probe_pid = p.pid
            seen = self._probe_seen.wait(3.0)
            p.wait()
        except OSError as exc:
            log.debug("proc connector probe could not run: %s", exc)
            self.ready.set()
            return
        if not seen:
            self.unavailable("subscribed but no exec events arrive (not the initial network "
                             "namespace?)")
            return
        log.info("process-event connector running")
        self.ready.set()

    def stop(self) -> None:
        self._stop_evt.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.send(subscribe_message(PROC_CN_MCAST_IGNORE, sock.getsockname()[0]))
            except OSError:
                pass
            sock.close()
