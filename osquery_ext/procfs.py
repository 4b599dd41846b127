"""Read processes and sockets from /proc robustly and cheaply.

Why: processes inside containers come and go within milliseconds, so any read may find the pid
gone (``FileNotFoundError``/``ProcessLookupError``, or ``ESRCH`` on an open file). Every reader
here returns None in that case instead of raising, and callers drop the row. Every function takes
``proc_root`` so tests can build a fake /proc in a temporary directory.

Speed matters because ``container_processes`` scans every pid on the host: files are read with
one ``os.open``/``os.read``, and :func:`read_container_process` reads ``cgroup`` first and stops
there for host processes, so a host pid costs one small read.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

from osquery_ext.cgroup import CgroupInfo, parse_cgroup
from osquery_ext.cmdline import format_cmdline as _format_cmdline

log = logging.getLogger(__name__)

PROC = "/proc"
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK",
    "0A": "LISTEN", "0B": "CLOSING", "0C": "NEW_SYN_RECV",
}
# UDP sockets reuse the TCP numbers: 01 = connected, 07 = unconnected (as `ss` shows them).
UDP_STATES = {"01": "ESTABLISHED", "07": "UNCONN"}


def _read(path: str, limit: int = 1 << 22, until_eof: bool = False) -> bytes | None:
    """Whole file as bytes (at most ``limit``); None when the file (i.e. the process) is gone,
    or cannot be read at all (``hidepid`` mounts, LSM denials): a scan skips such a pid rather
    than failing as a whole.

    ``until_eof``: keep reading until read() returns nothing. /proc/<pid>/net/* are seq_files
    that hand out about a page per read(), so a short read is not the end there (on a busy host
    the socket tables run to many pages); the small per-process files are read in one call."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except _GONE:
        return None
    except OSError as exc:
        log.debug("cannot open %s: %s", path, exc)
        return None
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536 or (until_eof and data):
            parts = [data]
            total = len(data)
            while total < limit:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            data = b"".join(parts)
        return data
    except OSError as exc:  # ESRCH from a task that exited between open and read, EACCES ...
        log.debug("cannot read %s: %s", path, exc)
        return None
    finally:
        os.close(fd)


def list_pids(proc_root: str = PROC) -> list[int]:
    """All numeric entries of /proc (processes, not threads)."""
    try:
        names = os.listdir(proc_root)
    except FileNotFoundError:
        return []
    return [int(n) for n in names if n.isdigit()]


@functools.lru_cache(maxsize=8)
def boot_time(proc_root: str = PROC) -> float:
    """Boot time as epoch seconds (``btime`` of /proc/stat); 0.0 if it cannot be read."""
    data = _read(f"{proc_root}/stat")
    if data:
        for line in data.split(b"\n"):
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this project uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int
    start_time: int  # epoch seconds (boot time + start ticks / CLK_TCK)


def parse_stat(text: bytes | str, btime: float = 0.0, clk_tck: int = CLK_TCK) -> ProcStat | None:
    """Parse /proc/<pid>/stat. ``comm`` may contain spaces and ')' so split at the last ')'."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    lp = text.find(b"(")
    rp = text.rfind(b")")
    if lp == -1 or rp == -1:
        return None
    try:
        pid = int(text[:lp])
        rest = text[rp + 2:].split()
        # rest[0] is field 3 (state); field 4 ppid; field 22 starttime
        state = rest[0].decode("ascii", "replace")
        ppid = int(rest[1])
        ticks = int(rest[19])
    except (ValueError, IndexError):
        return None
    comm = text[lp + 1:rp].decode("utf-8", "backslashreplace")
    return ProcStat(pid, comm, state, ppid, ticks, int(btime + ticks / clk_tck))


def read_stat(pid: int, proc_root: str = PROC) -> ProcStat | None:
    data = _read(f"{proc_root}/{pid}/stat")
    if not data:
        return None
    return parse_stat(data, boot_time(proc_root))


def decode_cmdline(raw: bytes) -> list[str]:
    """NUL-separated argv bytes to strings; bytes that are not UTF-8 become ``\\xNN``."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [a.decode("utf-8", "backslashreplace") for a in raw.split(b"\0")]


def read_cmdline_raw(pid: int, proc_root: str = PROC) -> bytes | None:
    """Raw /proc/<pid>/cmdline (empty for kernel threads and zombies; None when gone)."""
    return _read(f"{proc_root}/{pid}/cmdline")


def read_cmdline(pid: int, proc_root: str = PROC) -> list[str] | None:
    raw = read_cmdline_raw(pid, proc_root)
    return None if raw is None else decode_cmdline(raw)


# The cmdline rendering of every table lives in one place (osquery_ext.cmdline); re-exported here
# for the readers that import it from procfs.
format_cmdline = _format_cmdline


def read_exe(pid: int, proc_root: str = PROC) -> str | None:
    """Target of /proc/<pid>/exe: '' for kernel threads or when not permitted; None when gone."""
    try:
        return os.readlink(f"{proc_root}/{pid}/exe")
    except PermissionError:
        return ""
    except _GONE:
        return "" if os.path.isdir(f"{proc_root}/{pid}") else None
    except OSError:
        return ""


def parse_status_uid(text: bytes) -> int | None:
    """Real uid from the ``Uid:`` line of /proc/<pid>/status."""
    p = text.find(b"\nUid:")
    if p == -1:
        return None
    try:
        return int(text[p + 5:text.find(b"\n", p + 5)].split()[0])
    except (ValueError, IndexError):
        return None


def read_uid(pid: int, proc_root: str = PROC) -> int | None:
    data = _read(f"{proc_root}/{pid}/status")
    return None if data is None else parse_status_uid(data)


def parse_ns_link(link: str) -> int | None:
    """Inode of a namespace link such as ``net:[4026531840]``."""
    lb = link.find("[")
    if lb == -1 or not link.endswith("]"):
        return None
    try:
        return int(link[lb + 1:-1])
    except ValueError:
        return None


def read_netns(pid: int, proc_root: str = PROC) -> int | None:
    """Network-namespace inode of a process; None when gone or not permitted."""
    try:
        return parse_ns_link(os.readlink(f"{proc_root}/{pid}/ns/net"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as the container tables report it."""

    pid: int
    ppid: int
    name: str
    path: str
    cmdline: list[str]
    uid: int
    start_time: int
    netns: int | None
    container: CgroupInfo | None


def read_process(pid: int, proc_root: str = PROC,
                 cgroup: CgroupInfo | None = None) -> ProcessInfo | None:
    """Everything about one pid; None when it vanished during the reads."""
    st = read_stat(pid, proc_root)
    if st is None:
        return None
    raw = read_cmdline_raw(pid, proc_root)
    if raw is None:
        return None
    exe = read_exe(pid, proc_root)
    if exe is None:
        return None
    uid = read_uid(pid, proc_root)
    if uid is None:
        return None
    return ProcessInfo(pid, st.ppid, st.comm, exe, decode_cmdline(raw), uid, st.start_time,
                       read_netns(pid, proc_root), cgroup)


def read_container_process(pid: int, proc_root: str = PROC) -> ProcessInfo | None:
    """The process if it runs inside a container, else None (also None when it vanished).

    Reads ``cgroup`` first: for host processes that is the only read.
    """
    data = _read(f"{proc_root}/{pid}/cgroup")
    if not data:
        return None
    info = parse_cgroup(data.decode("utf-8", "replace"))
    if info is None:
        return None
    return read_process(pid, proc_root, info)


def scan_container_processes(proc_root: str = PROC) -> Iterator[ProcessInfo]:
    """Every process that runs in a container, in pid order of the listing."""
    for pid in list_pids(proc_root):
        proc = read_container_process(pid, proc_root)
        if proc is not None:
            yield proc


# --------------------------------------------------------------------------------------------
# /proc/<pid>/net/{tcp,tcp6,udp,udp6}

@dataclass(frozen=True, slots=True)
class SocketRow:
    protocol: str        # tcp | udp
    family: int          # 4 | 6
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: str
    uid: int
    inode: int


def decode_address(hexaddr: str) -> tuple[str, int]:
    """``0100007F:0050`` -> ('127.0.0.1', 80); IPv6 as four little-endian 32-bit words."""
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    elif len(raw) == 16:
        words = struct.unpack("<4I", raw)
        ip = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    else:
        raise ValueError(f"bad address {hexaddr!r}")
    return ip, int(port, 16)


def parse_proc_net(text: str, protocol: str, family: int) -> list[SocketRow]:
    """Rows of one /proc/net/{tcp,tcp6,udp,udp6} file (the header line is skipped; malformed
    lines are skipped too: the kernel writes whole lines, a truncated read may not)."""
    states = TCP_STATES if protocol == "tcp" else UDP_STATES
    rows: list[SocketRow] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            laddr, lport = decode_address(f[1])
            raddr, rport = decode_address(f[2])
            rows.append(SocketRow(protocol, family, laddr, lport, raddr, rport,
                                  states.get(f[3].upper(), f[3].upper()), int(f[7]), int(f[9])))
        except (ValueError, OSError):
            continue
    return rows


NET_FILES = (("tcp", "tcp", 4), ("tcp6", "tcp", 6), ("udp", "udp", 4), ("udp6", "udp", 6))


def read_proc_net(pid: int | str, proc_root: str = PROC) -> list[SocketRow] | None:
    """All TCP/UDP sockets of the network namespace ``pid`` lives in; None when it is gone.

    A missing tcp6/udp6 file (IPv6 disabled) is skipped; a missing tcp file means the pid went.
    """
    rows: list[SocketRow] = []
    for fname, proto, fam in NET_FILES:
        data = _read(f"{proc_root}/{pid}/net/{fname}", until_eof=True)
        if data is None:
            if fname == "tcp":
                return None
            continue
        rows.extend(parse_proc_net(data.decode("ascii", "replace"), proto, fam))
    return rows
