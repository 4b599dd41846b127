"""Which sockets a process holds on stdin/stdout/stderr, and whether it holds raw/packet sockets.

Why: a reverse shell is a shell whose standard streams are a network connection, whatever tool
set it up (`nc -e sh`, `sh -i <&3 >&3` after `exec 3<>/dev/tcp/...`, socat, python's pty.spawn
over a socket). The kernel tells this directly: /proc/<pid>/fd/{0,1,2} link to `socket:[inode]`,
and the inode appears in the process's network namespace's /proc/<pid>/net/{tcp,tcp6,udp,udp6}
with its remote endpoint. This is host evidence independent of the command line.

Raw and packet sockets (/proc/<pid>/net/raw, raw6, packet) are what a process needs to forge
source addresses or sniff; a container process holding one is the host side of the spoofing rule.

Stdlib only (the exec-capture process imports it). Every reader returns empty values when the
process is gone or unreadable: a racing exit must never fail a table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from osquery_ext.procfs import NET_FILES, SocketRow, parse_proc_net

STDIO_FDS = (0, 1, 2)


def read_all(path: str) -> bytes | None:
    """A /proc file read to its end. /proc/net/* are seq_files: each read() returns at most about
    a page however large the buffer, so one read of a busy namespace's tcp table misses rows;
    read until the kernel returns nothing. None when the file (the process) is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        parts = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_proc_net(pid: int | str, proc: str = "/proc") -> list[SocketRow] | None:
    """All TCP/UDP sockets of `pid`'s network namespace, every row (see read_all); None when the
    pid is gone. Same rows as procfs.read_proc_net on small tables."""
    rows: list[SocketRow] = []
    for fname, proto, fam in NET_FILES:
        data = read_all(f"{proc}/{pid}/net/{fname}")
        if data is None:
            if fname == "tcp":
                return None
            continue
        rows.extend(parse_proc_net(data.decode("ascii", "replace"), proto, fam))
    return rows
#: Column names added to container_processes and container_process_events.
COLUMNS = ("stdio_socket", "stdio_remote", "raw_sockets")
EMPTY = {c: "" for c in COLUMNS}


def socket_inode(link: str) -> int | None:
    """`socket:[12345]` -> 12345; anything else (files, pipes, ttys) -> None."""
    if link.startswith("socket:[") and link.endswith("]"):
        try:
            return int(link[8:-1])
        except ValueError:
            return None
    return None


def stdio_socket_inodes(pid: int | str, proc: str = "/proc") -> dict[int, int]:
    """{fd: socket inode} for the standard streams of `pid` that are sockets."""
    out: dict[int, int] = {}
    for fd in STDIO_FDS:
        try:
            link = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except OSError:
            continue
        ino = socket_inode(link)
        if ino is not None:
            out[fd] = ino
    return out


@dataclass(frozen=True)
class StdioSocket:
    """The standard streams of one process that are network sockets."""

    fds: tuple[int, ...]
    remote: str                 # "tcp 10.0.0.5:4444" ("" when only local/unix sockets)

    def columns(self) -> dict[str, str]:
        return {"stdio_socket": ",".join(map(str, self.fds)), "stdio_remote": self.remote}


def match_stdio(inodes: dict[int, int], sockets: list[SocketRow]) -> StdioSocket | None:
    """Pure: the stdio fds whose inode is a TCP/UDP socket with a remote end (not a listener).

    A unix socket (journald, a runtime's log pipe) is not in /proc/net/{tcp,udp}, so a service
    whose stdout goes to a log socket does not match."""
    by_inode = {s.inode: s for s in sockets if s.inode}
    fds, remote = [], ""
    for fd, ino in sorted(inodes.items()):
        s = by_inode.get(ino)
        if s is None or s.remote_port == 0 or s.state == "LISTEN":
            continue
        fds.append(fd)
        if not remote:
            addr = f"[{s.remote_address}]" if ":" in s.remote_address else s.remote_address
            remote = f"{s.protocol} {addr}:{s.remote_port}"
    return StdioSocket(tuple(fds), remote) if fds else None


def read_stdio(pid: int | str, proc: str = "/proc",
               sockets: list[SocketRow] | None = None) -> StdioSocket | None:
    """The network sockets on `pid`'s standard streams (None: none, or the pid is gone).

    /proc/<pid>/net is read only when a standard stream is a socket at all, so the common case
    costs three readlinks. `sockets` lets a caller pass its per-namespace read."""
    inodes = stdio_socket_inodes(pid, proc)
    if not inodes:
        return None
    if sockets is None:
        sockets = read_proc_net(pid, proc) or []
    return match_stdio(inodes, sockets)


RAW_FILES = (("packet", "packet"), ("raw", "raw"), ("raw6", "raw6"))


def parse_inodes(text: str, kind: str) -> set[int]:
    """Socket inodes listed in /proc/net/packet (inode is the last column) or raw/raw6 (the
    tenth, as in tcp). Malformed lines are skipped."""
    out: set[int] = set()
    for line in text.splitlines()[1:]:
        f = line.split()
        try:
            out.add(int(f[-1] if kind == "packet" else f[9]))
        except (IndexError, ValueError):
            continue
    return out


def namespace_raw_inodes(pid: int | str, proc: str = "/proc") -> dict[str, set[int]]:
    """{kind: inodes} of the raw/packet sockets open in `pid`'s network namespace."""
    out: dict[str, set[int]] = {}
    for fname, kind in RAW_FILES:
        data = read_all(f"{proc}/{pid}/net/{fname}")
        if data is None:
            continue
        inodes = parse_inodes(data.decode("ascii", "replace"), kind)
        if inodes:
            out[kind] = inodes
    return out


def process_socket_inodes(pid: int | str, proc: str = "/proc") -> set[int]:
    """Every socket inode `pid` holds (all its fds)."""
    base = f"{proc}/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return set()
    out = set()
    for fd in fds:
        try:
            ino = socket_inode(os.readlink(f"{base}/{fd}"))
        except OSError:
            continue
        if ino is not None:
            out.add(ino)
    return out


def raw_socket_kinds(held: set[int], ns_raw: dict[str, set[int]]) -> str:
    """Pure: comma list of the raw/packet socket kinds among the inodes a process holds."""
    return ",".join(kind for _, kind in RAW_FILES if held & ns_raw.get(kind, set()))


class Probe:
    """Per-query helper: reads each network namespace's socket tables once, however many
    processes live in it (a container's processes share one namespace)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._net: dict[str, list[SocketRow]] = {}
        self._raw: dict[str, dict[str, set[int]]] = {}

    def columns(self, pid: int | str, netns: str = "") -> dict[str, str]:
        """stdio_socket, stdio_remote and raw_sockets for one process ("" when nothing)."""
        out = dict(EMPTY)
        inodes = stdio_socket_inodes(pid, self.proc)
        if inodes:
            key = netns or f"pid:{pid}"
            if key not in self._net:
                self._net[key] = read_proc_net(pid, self.proc) or []
            st = match_stdio(inodes, self._net[key])
            if st is not None:
                out.update(st.columns())
        key = netns or f"pid:{pid}"
        if key not in self._raw:
            self._raw[key] = namespace_raw_inodes(pid, self.proc)
        if self._raw[key]:
            out["raw_sockets"] = raw_socket_kinds(process_socket_inodes(pid, self.proc),
                                                  self._raw[key])
        return out


def capture(pid: int, proc: str = "/proc") -> dict[str, str]:
    """The columns for a just-exec'd process. The exec capture races short-lived processes, so
    this costs three readlinks unless a standard stream is a socket; raw sockets are not read
    (a process opens those after its exec: container_processes reports them)."""
    out = dict(EMPTY)
    st = read_stdio(pid, proc)
    if st is not None:
        out.update(st.columns())
    return out
