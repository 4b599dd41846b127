"""Kernel process-event connector (netlink, root): every exec inside a container, when it happens.

Why: the T1614 commands (`wget -qO- http://ipinfo.io/` in a `--rm` container) live for a fraction
of a millisecond after their exec when the network is absent, and a few ms otherwise: far less than
any osquery schedule interval, so polling /proc misses them. The kernel announces every exec on the
proc connector (NETLINK_CONNECTOR, group CN_IDX_PROC) as it happens. We subscribe
(PROC_CN_MCAST_LISTEN) and on each PROC_EVENT_EXEC read the new process's cmdline first (it is the
first thing to vanish: the kernel drops it when the process releases its memory on exit), then its
cgroup (still readable on a zombie), stat, exe and owner.

Why a separate capture process: those reads race the process's exit, so they must start within
microseconds of the event. Inside the extension, any other Python thread (an osquery generate
walking /proc, the runtime event listener decoding JSON) holds the GIL for up to the 5 ms switch
interval, and the read loses the race about half the time on a busy host. The capture loop
therefore runs in its own small interpreter (`python -m osquery_ext.proc_connector`, stdlib only,
single-threaded), keeps only container processes (cgroup attribution) and writes one JSON line per
exec to the extension, which classifies, names and buffers them (`ProcConnector` thread).

Limits (see docs/osquery.md): needs root in the initial network namespace (the kernel broadcasts
only there), busybox applets run in-process without execve are invisible, and a process that exits
before its cmdline is read keeps only comm/pid/cgroup in its row. Where the connector is unavailable
the extension says so once in the log and the other tables keep working.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import IO, Any, Callable

from osquery_ext.capture_child import CaptureChild, child_main  # stdlib only: supervision
from osquery_ext import stdio_sockets  # stdlib-only like cgroup: fine in the capture process
from osquery_ext.cmdline import format_cmdline  # stdlib only, like everything the capture runs

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
SO_RCVBUFFORCE = 33

_NLMSGHDR = struct.Struct("=IHHII")        # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")          # idx, val, seq, ack, len, flags
_PROC_EV_HDR = struct.Struct("=IIQ")        # what, cpu, timestamp_ns
_EXEC = struct.Struct("=II")                # process_pid, process_tgid

#: (cgroup file text) -> attribution dict with container_id, runtime, ...; None for host processes.
Attribute = Callable[[str], "dict[str, str] | None"]
#: (argv list) -> classification dict with location_discovery (bool), indicator, tool.
Classify = Callable[[list[str]], "dict[str, Any]"]
#: container id -> (name, image) or None, without I/O.
Lookup = Callable[[str], "tuple[str, str] | None"]


# -- netlink messages (pure) ----------------------------------------------------------------------
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
    n = len(data)
    while off + _NLMSGHDR.size <= n:
        nl_len, nl_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if nl_len < _NLMSGHDR.size:
            break
        body = off + _NLMSGHDR.size
        if nl_type not in (NLMSG_ERROR, NLMSG_NOOP) and body + _CN_MSG.size + _PROC_EV_HDR.size <= n:
            idx, val, _s, _a, _ln, _f = _CN_MSG.unpack_from(data, body)
            if idx == CN_IDX_PROC and val == CN_VAL_PROC:
                ev = body + _CN_MSG.size
                what, _cpu, ts = _PROC_EV_HDR.unpack_from(data, ev)
                tgid = 0
                d = ev + _PROC_EV_HDR.size
                if what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and d + 8 <= n:
                    tgid = _EXEC.unpack_from(data, d)[1]
                elif what == PROC_EVENT_FORK and d + 16 <= n:
                    tgid = struct.unpack_from("=IIII", data, d)[3]
                out.append((what, tgid, ts))
        off += (nl_len + 3) & ~3
    return out


# -- /proc reads (raced against the process's exit: fastest first) --------------------------------
def _read_fast(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            b = os.read(fd, 131072)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


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
    return comm, int(fields[1]), int(fields[19])


def capture_exec(pid: int, attribute: Attribute, proc: str = "/proc",
                 now_ns: int | None = None) -> dict[str, Any] | None:
    """What /proc still tells about a just-exec'd process; None for host processes or when it
    was gone before its cgroup could be read. cmdline is read first: it vanishes first."""
    tns = now_ns if now_ns is not None else time.time_ns()
    base = f"{proc}/{pid}"
    cmd_raw = _read_fast(base + "/cmdline")
    cg = _read_fast(base + "/cgroup")
    if cg is None:
        return None
    att = attribute(cg.decode("utf-8", "replace"))
    if not att or not att.get("container_id"):
        return None
    stat_raw = _read_fast(base + "/stat")
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
    return {"t": tns, "pid": pid, "ppid": ppid, "uid": uid, "comm": comm,
            "argv": split_cmdline(cmd_raw or b""), "cmdline": format_cmdline(cmd_raw or b""),
            "exe": exe, "att": att,
            "sock": stdio_sockets.capture(pid, proc)}  # reverse shell / raw socket evidence


def build_row(rec: dict[str, Any], classify: Classify, lookup: Lookup | None) -> dict[str, str]:
    """A container_process_events row from a captured exec record. The cmdline column is the
    capture's rendering of the raw bytes (cmdline.format_cmdline, exact for non-UTF-8 bytes), or
    the same formatter over argv for records without it."""
    argv = list(rec.get("argv") or [])
    comm = rec.get("comm") or ""
    name = comm
    if argv and (not comm or comm == "exe"):  # busybox re-exec via /proc/self/exe
        name = os.path.basename(argv[0])[:15]
    cls = classify(argv) if argv else {}
    att = rec.get("att") or {}
    cid = att.get("container_id", "")
    cname, image = (lookup(cid) if lookup else None) or ("", "")
    tns = int(rec.get("t") or 0)
    return {
        "time": str(tns // 1_000_000_000), "time_nano": str(tns), "pid": str(rec.get("pid", "")),
        "ppid": str(rec.get("ppid", "")), "uid": str(rec.get("uid", "")), "name": name,
        "cmdline": rec["cmdline"] if "cmdline" in rec else format_cmdline(argv),
        "path": rec.get("exe") or "", "container_id": cid,
        "container_name": cname, "image": image, "runtime": att.get("runtime", ""),
        "location_discovery": "1" if cls.get("location_discovery") else "0",
        "indicator": str(cls.get("indicator") or ""), "tool": str(cls.get("tool") or ""),
        **{k: str((rec.get("sock") or {}).get(k, "")) for k in stdio_sockets.COLUMNS},
    }


def exec_row(pid: int, attribute: Attribute, classify: Classify, lookup: Lookup | None,
             proc: str = "/proc", now_ns: int | None = None) -> dict[str, str] | None:
    """capture_exec + build_row in one step (tests, and the in-process fallback)."""
    rec = capture_exec(pid, attribute, proc, now_ns)
    return None if rec is None else build_row(rec, classify, lookup)


# -- the capture process ---------------------------------------------------------------------------
def open_socket() -> socket.socket:
    """Create, bind and subscribe a proc-connector socket (raises OSError when not permitted)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # bursts of execs: a big buffer
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                break
            except OSError:
                continue
        sock.bind((0, CN_IDX_PROC))
        sock.send(subscribe_message(PROC_CN_MCAST_LISTEN, sock.getsockname()[0]))
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills us when the extension dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _raise_priority() -> None:
    """Run ahead of the processes we race: a short-lived exec's cmdline is gone within a
    millisecond of its exit. Real-time round-robin at the lowest RT priority when allowed (the
    loop sleeps in recv and does microseconds of work per exec, and the kernel's RT throttling
    bounds it), otherwise the highest nice level we may take."""
    try:
        # RESET_ON_FORK: the probe and anything else we start runs at normal priority.
        os.sched_setscheduler(0, os.SCHED_RR | getattr(os, "SCHED_RESET_ON_FORK", 0),
                              os.sched_param(1))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
    except OSError:
        pass


#: How long the capture waits for its probe's exec event before it reports "unavailable".
PROBE_TIMEOUT_S = 3.0


def start_probe() -> subprocess.Popen | None:
    """Exec one trivial process (`true`) whose exec event proves the subscription delivers.

    Popen returns only after the child's execve succeeded, so the event is already queued on the
    socket; `true` exits at once, so nothing blocks on it. None when no `true` can be run."""
    for cmd in (["true"], ["/bin/true"], [sys.executable, "-S", "-c", ""]):
        try:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        except OSError:
            continue
    return None


def capture_main(out: IO[str] | None = None, proc: str = "/proc", probe: bool = True) -> int:
    """The capture process: status line first, then one JSON line per container exec."""
    out = out or sys.stdout
    from osquery_ext import cgroup  # stdlib-only parser; imported here to keep start-up small

    attribute = cgroup.attribution_columns   # the same columns the tables attribute with

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    _die_with_parent()
    _raise_priority()
    parent = os.getppid()
    try:
        sock = open_socket()
    except OSError as exc:
        emit({"status": "unavailable",
              "reason": f"{exc.strerror or exc}; needs root in the initial network namespace"})
        return 2
    probe_pid = 0
    probe_proc = None
    if probe:  # silence is how the kernel says "not here" (e.g. another network namespace)
        probe_proc = start_probe()
        if probe_proc is None:
            emit({"status": "unavailable", "reason": "cannot run the exec probe (true)"})
            return 5
        probe_pid = probe_proc.pid
    probe_deadline = time.monotonic() + PROBE_TIMEOUT_S
    if not probe:
        emit({"status": "running"})
    overruns = 0
    while True:
        try:
            ready, _, _ = select.select([sock], [], [], 0.5)
        except InterruptedError:
            continue
        if probe_pid and time.monotonic() > probe_deadline:
            emit({"status": "unavailable", "reason": "subscribed but no exec events arrive "
                  "(not the initial network namespace?)"})
            return 3
        if probe_proc is not None and probe_proc.poll() is not None:
            probe_proc = None  # reaped; never waited on in the loop (the exit is immediate)
        if not ready:
            if os.getppid() != parent:
                return 0
            continue
        try:
            data = sock.recv(262144)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped events: we were too slow
                overruns += 1
                emit({"status": "overrun", "count": overruns})
                continue
            emit({"status": "unavailable", "reason": f"recv failed: {exc}"})
            return 4
        for what, tgid, _ts in parse_messages(data):
            if what != PROC_EVENT_EXEC:
                continue
            if probe_pid and tgid == probe_pid:
                probe_pid = 0  # proven: the kernel delivers our own exec, so it delivers all
                emit({"status": "running"})
                continue
            try:
                rec = capture_exec(tgid, attribute, proc)
            except Exception as exc:  # one odd process must not stop the capture
                rec = None
                emit({"status": "error", "reason": f"pid {tgid}: {exc}"})
            if rec is not None:
                try:
                    emit(rec)
                except BrokenPipeError:
                    return 0


# -- the extension side ------------------------------------------------------------------------
class ProcConnector(CaptureChild):
    """Runs the capture process and turns its records into buffered rows.

    `status`: starting / running / unavailable / stopped; `ready` is set once it is known:
    "running" only after the capture process saw the exec event of its own probe. Starting,
    restarting and stopping the process is capture_child.CaptureChild's; this class only reads
    what an exec record or a status line means.
    """

    label = "process-event capture"
    state_attr = "status"
    log = log

    def __init__(self, buffer: Any, classify: Classify, lookup: Lookup | None = None,
                 command: list[str] | None = None, max_restarts: int = 5) -> None:
        super().__init__("proc-connector", "osquery_ext.proc_connector", command, max_restarts)
        self.buffer = buffer
        self.classify = classify
        self.lookup = lookup
        self.status = "starting"
        self.execs = 0
        self.overruns = 0

    def wait_ready(self, timeout: float) -> bool:
        """Block until the capture proved it receives execs or gave up (True), or `timeout`
        passed first (False). The extension calls this before it registers its tables."""
        return self.ready.wait(max(timeout, 0.0))

    def unavailable(self, why: str) -> None:
        """Record that no exec events can be had, warning once: the other tables go on."""
        if self.status != "unavailable":
            log.warning("process-event connector unavailable (%s): container_process_events "
                        "stays empty; the other tables keep working", why)
        self.status = "unavailable"
        self.reason = why
        self.ready.set()

    # -- CaptureChild hooks -------------------------------------------------------------------
    def give_up(self, reason: str) -> None:
        self.unavailable(reason)

    def is_record(self, obj: dict[str, Any]) -> bool:
        """An exec record is any line without a status."""
        return obj.get("status") is None

    def on_record(self, obj: dict[str, Any]) -> None:
        self.execs += 1
        try:
            self.buffer.append(build_row(obj, self.classify, self.lookup))
        except Exception:  # a classifier bug must not stop the stream
            log.exception("process event could not be built")

    def on_status(self, obj: dict[str, Any]) -> None:
        status = obj.get("status")
        if status == "running":
            if self.status != "running":
                log.info("process-event connector running")
            self.status = "running"
            self.ready.set()
        elif status == "unavailable":
            self.unavailable(obj.get("reason", "unknown"))
        elif status == "overrun":
            self.overruns += 1
            if self.overruns == 1:
                log.warning("process-event connector overrun: the kernel dropped some execs")
        elif status == "error":
            log.debug("process-event capture: %s", obj.get("reason"))


if __name__ == "__main__":
    child_main(capture_main)
