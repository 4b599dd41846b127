"""/proc readers: fake proc roots (containers, vanishing pids, odd cmdlines) and the real /proc."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from osquery_ext import procfs
from osquery_ext.procfs import (decode_address, decode_cmdline, format_cmdline, parse_proc_net,
                                parse_stat)

ID = "495f943fe08b913dd8f3ce6a1d830d014f825584f00787c624c671552c28a798"
BTIME = 1795800000


def _stat_line(pid: int, comm: str, ppid: int, ticks: int) -> str:
    # fields 3..22: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice threads itrealvalue starttime, then more.
    rest = ["S", str(ppid)] + ["0"] * 17 + [str(ticks)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def make_proc(root: Path, pid: int, *, cgroup: str, comm: str = "sh", ppid: int = 1,
              ticks: int = 12345, cmdline: bytes = b"sh\0", exe: str = "/bin/busybox",
              uid: int = 0, netns: int = 4026532000) -> Path:
    d = root / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(_stat_line(pid, comm, ppid, ticks))
    (d / "cmdline").write_bytes(cmdline)
    (d / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\n"
                              f"Tgid:\t{pid}\nPid:\t{pid}\nPPid:\t{ppid}\n"
                              f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
    os.symlink(exe, d / "exe")
    os.symlink(f"net:[{netns}]", d / "ns" / "net")
    return d


@pytest.fixture()
def fake_proc(tmp_path: Path) -> Path:
    procfs.boot_time.cache_clear()
    (tmp_path / "stat").write_text(f"cpu  1 2 3 4\nbtime {BTIME}\nprocesses 5\n")
    (tmp_path / "self").mkdir()  # non-numeric entries are ignored
    make_proc(tmp_path, 1, cgroup="0::/init.scope\n", comm="systemd", ppid=0,
              cmdline=b"/sbin/init\0")
    make_proc(tmp_path, 100, cgroup=f"0::/system.slice/docker-{ID}.scope\n", comm="wget",
              ppid=99, ticks=250, cmdline=b"wget\0-qO-\0http://ipinfo.io/\0", uid=1000)
    make_proc(tmp_path, 101, cgroup=f"4:memory:/libpod_parent/libpod-{ID}\n0::/\n",
              comm="my (odd) name", cmdline=b"sh\0-c\0echo \xff\xfe\nsleep 1\0")
    yield tmp_path
    procfs.boot_time.cache_clear()


def test_list_pids(fake_proc: Path) -> None:
    assert sorted(procfs.list_pids(str(fake_proc))) == [1, 100, 101]
    assert procfs.list_pids(str(fake_proc / "missing")) == []


def test_read_process_fields(fake_proc: Path) -> None:
    p = procfs.read_container_process(100, str(fake_proc))
    assert p is not None
    assert (p.pid, p.ppid, p.name, p.path, p.uid, p.netns) == (100, 99, "wget", "/bin/busybox",
                                                               1000, 4026532000)
    assert p.cmdline == ["wget", "-qO-", "http://ipinfo.io/"]
    assert p.start_time == BTIME + 250 // procfs.CLK_TCK
    assert p.container.container_id == ID and p.container.runtime == "docker"


def test_comm_with_parens_and_non_utf8_cmdline(fake_proc: Path) -> None:
    p = procfs.read_container_process(101, str(fake_proc))
    assert p is not None and p.name == "my (odd) name"
    assert p.cmdline == ["sh", "-c", "echo \\xff\\xfe\nsleep 1"]
    # the column renders the raw bytes: argv boundaries kept, 0xff 0xfe and the newline escaped
    raw = procfs.read_cmdline_raw(101, str(fake_proc))
    assert format_cmdline(raw) == "sh -c $'echo \\xff\\xfe\\nsleep 1'"
    assert p.container.runtime == "podman"


def test_host_process_is_skipped_after_one_read(fake_proc: Path) -> None:
    # Host pid 1: only its cgroup is needed; remove the rest to prove nothing else is read.
    for name in ("stat", "cmdline", "status"):
        (fake_proc / "1" / name).unlink()
    assert procfs.read_container_process(1, str(fake_proc)) is None
    assert [p.pid for p in procfs.scan_container_processes(str(fake_proc))] == [100, 101]


@pytest.mark.parametrize("missing", ["cgroup", "stat", "cmdline", "status", "whole"])
def test_vanished_mid_read_returns_none(fake_proc: Path, missing: str) -> None:
    d = fake_proc / "100"
    if missing == "whole":
        for f in d.rglob("*"):
            if f.is_symlink() or f.is_file():
                f.unlink()
        (d / "ns").rmdir()
        d.rmdir()
    else:
        (d / missing).unlink()
    assert procfs.read_container_process(100, str(fake_proc)) is None
    # The scan carries on with the others.
    assert [p.pid for p in procfs.scan_container_processes(str(fake_proc))] == [101]


def test_vanished_between_listing_and_read(fake_proc: Path, monkeypatch) -> None:
    """A pid listed, then gone when its files are opened: each reader returns None."""
    real_open = os.open

    def vanishing_open(path, *a, **k):
        if "/100/" in str(path) and not str(path).endswith("cgroup"):
            raise ProcessLookupError(3, "No such process")
        return real_open(path, *a, **k)

    monkeypatch.setattr(procfs.os, "open", vanishing_open)
    assert procfs.read_stat(100, str(fake_proc)) is None
    assert procfs.read_cmdline(100, str(fake_proc)) is None
    assert procfs.read_uid(100, str(fake_proc)) is None
    assert procfs.read_container_process(100, str(fake_proc)) is None


def test_unreadable_files_skip_the_pid_not_the_scan(fake_proc: Path, monkeypatch) -> None:
    real_open = os.open

    def denied(path, *a, **k):
        if "/101/" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(procfs.os, "open", denied)
    assert procfs.read_container_process(101, str(fake_proc)) is None
    assert [p.pid for p in procfs.scan_container_processes(str(fake_proc))] == [100]


def test_exe_of_gone_process_is_none_but_kernel_thread_is_empty(fake_proc: Path) -> None:
    (fake_proc / "100" / "exe").unlink()  # kernel thread: no exe link, dir still there
    assert procfs.read_exe(100, str(fake_proc)) == ""
    assert procfs.read_exe(999, str(fake_proc)) is None
    assert procfs.read_netns(999, str(fake_proc)) is None


def test_parse_stat_edge_cases() -> None:
    st = parse_stat(_stat_line(7, "a) (b", 3, 500), btime=1000.0, clk_tck=100)
    assert st.comm == "a) (b" and st.ppid == 3 and st.start_time == 1005
    assert parse_stat("garbage") is None
    assert parse_stat("7 (x) S") is None


def test_decode_cmdline() -> None:
    assert decode_cmdline(b"") == []
    assert decode_cmdline(b"a\0b\0") == ["a", "b"]
    assert decode_cmdline(b"a\0\0b\0") == ["a", "", "b"]  # empty argument kept
    assert decode_cmdline(b"\xc3\xa9\xff") == ["\xe9\\xff"]
    big = b"x" * (1 << 20) + b"\0"
    assert len(decode_cmdline(big)[0]) == 1 << 20


def test_one_mib_cmdline_read(tmp_path: Path) -> None:
    make_proc(tmp_path, 5, cgroup=f"0::/docker/{ID}\n",
              cmdline=b"sh\0-c\0" + b"y" * (1 << 20) + b"\0")
    argv = procfs.read_cmdline(5, str(tmp_path))
    assert argv[:2] == ["sh", "-c"] and len(argv[2]) == 1 << 20


def test_parse_ns_link() -> None:
    assert procfs.parse_ns_link("net:[4026531840]") == 4026531840
    assert procfs.parse_ns_link("garbage") is None


# ---------------------------------------------------------------------------------- /proc/net

# A real line of this machine's /proc/net/tcp (sshd-like listener on 0.0.0.0:2024).
REAL_TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode                                                     \n"
    "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
    "1156 1 00000000195d246b 100 0 0 10 0                      \n"
)
TCP_MORE = (
    "   1: 0100007F:0050 0300A8C0:D431 01 00000000:00000000 02:000A7B2C 00000000  1000        0 "
    "22222 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 030011AC:B9F2 513B7522:01BB 06 00000000:00000000 03:00001720 00000000     0        0 "
    "0 3 0000000000000000\n"
)
TCP6 = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0\n"
    "   1: 00000000000000000000000001000000:0035 00000000000000000000000001000000:A1B2 01 "
    "00000000:00000000 00:00000000 00000000   101        0 4444 1 0000000000000000 20 4 0 10 -1\n"
    "   2: B80D0120000000000000000001000000:0050 0000000000000000FFFF00000100007F:1234 08 "
    "00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 0 10 -1\n"
)
UDP = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode ref pointer drops\n"
    "  123: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
    "777 2 0000000000000000 0\n"
    "  456: 0500A8C0:9C40 0200000A:0035 01 00000000:00000000 00:00000000 00000000   100        0 "
    "778 2 0000000000000000 0\n"
)


def test_parse_real_tcp_line() -> None:
    rows = parse_proc_net(REAL_TCP, "tcp", 4)
    assert len(rows) == 1
    r = rows[0]
    assert (r.local_address, r.local_port, r.remote_address, r.remote_port, r.state, r.uid,
            r.inode) == ("0.0.0.0", 2024, "0.0.0.0", 0, "LISTEN", 0, 1156)


def test_parse_tcp_states_and_addresses() -> None:
    rows = parse_proc_net(REAL_TCP + TCP_MORE, "tcp", 4)
    assert [(r.local_address, r.local_port, r.remote_address, r.remote_port, r.state)
            for r in rows[1:]] == [
        ("127.0.0.1", 80, "192.168.0.3", 54321, "ESTABLISHED"),
        ("172.17.0.3", 47602, "34.117.59.81", 443, "TIME_WAIT"),
    ]
    assert rows[1].uid == 1000


def test_parse_tcp6() -> None:
    rows = parse_proc_net(TCP6, "tcp", 6)
    assert [(r.local_address, r.local_port, r.remote_address, r.remote_port, r.state)
            for r in rows] == [
        ("::", 8080, "::", 0, "LISTEN"),
        ("::1", 53, "::1", 41394, "ESTABLISHED"),
        ("2001:db8::1", 80, "::ffff:127.0.0.1", 4660, "CLOSE_WAIT"),
    ]
    assert all(r.family == 6 and r.protocol == "tcp" for r in rows)


def test_parse_udp() -> None:
    rows = parse_proc_net(UDP, "udp", 4)
    assert [(r.local_address, r.local_port, r.remote_address, r.remote_port, r.state)
            for r in rows] == [("0.0.0.0", 68, "0.0.0.0", 0, "UNCONN"),
                               ("192.168.0.5", 40000, "10.0.0.2", 53, "ESTABLISHED")]


def test_parse_proc_net_skips_malformed_lines() -> None:
    text = REAL_TCP + "   9: ZZZZ:0050 00000000:0000 0A\n   10: truncated\n" + TCP_MORE
    assert len(parse_proc_net(text, "tcp", 4)) == 3
    assert parse_proc_net("", "tcp", 4) == []
    with pytest.raises(ValueError):
        decode_address("0100:0050")


def test_read_proc_net_fake(tmp_path: Path) -> None:
    net = tmp_path / "7" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(REAL_TCP + TCP_MORE)
    (net / "udp").write_text(UDP)
    # tcp6/udp6 absent (IPv6 disabled): skipped, not an error.
    rows = procfs.read_proc_net(7, str(tmp_path))
    assert sorted({(r.protocol, r.family) for r in rows}) == [("tcp", 4), ("udp", 4)]
    assert len(rows) == 5
    assert procfs.read_proc_net(8, str(tmp_path)) is None  # vanished


def test_read_proc_net_real_sockets() -> None:
    """Our own listening TCP and bound UDP sockets show up in the real /proc/<pid>/net."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        rows = procfs.read_proc_net(os.getpid())
        assert rows is not None
        tport, uport = tcp.getsockname()[1], udp.getsockname()[1]
        assert any(r.protocol == "tcp" and r.local_port == tport and r.state == "LISTEN"
                   and r.local_address == "127.0.0.1" for r in rows)
        assert any(r.protocol == "udp" and r.local_port == uport and r.state == "UNCONN"
                   for r in rows)
    # Every line of the host's /proc/net/tcp parses.
    text = Path("/proc/net/tcp").read_text()
    assert len(parse_proc_net(text, "tcp", 4)) == len(text.splitlines()) - 1


def test_real_self_process() -> None:
    p = procfs.read_process(os.getpid())
    assert p is not None
    assert p.pid == os.getpid() and p.ppid == os.getppid()
    assert p.uid == os.getuid()
    assert p.path and os.path.exists(p.path)
    assert p.cmdline == Path(f"/proc/{os.getpid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    # Started at most a few minutes ago (the test run), not at boot or in the future.
    assert 0 <= time.time() - p.start_time < 3600
    assert p.netns is not None and p.netns > 0
    assert procfs.boot_time() > 1e9


# ------------------------------------------------------------------- a real podman container

_IMAGE = "localhost/stowaway-busybox:latest"


def _podman_skip_reason() -> str | None:
    import shutil
    import subprocess
    if shutil.which("podman") is None:
        return "podman is not installed"
    if os.geteuid() != 0:
        return "needs root (rootful podman)"
    if subprocess.run(["podman", "image", "exists", _IMAGE], timeout=60).returncode != 0:
        return f"image {_IMAGE} missing: run `make podman`"
    return None


@pytest.mark.podman
def test_real_container_process_scan_and_classify() -> None:
    """A real container's processes are found with the full id, their own netns and argv, and
    its wget of ipinfo.io classifies as location discovery (network none: the argv is what
    counts)."""
    import subprocess
    from osquery_ext.classifier import classify_command
    reason = _podman_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"stw-procfs-{os.getpid()}"
    script = "while true; do wget -qO- http://ipinfo.io/ >/dev/null 2>&1; sleep 0.2; done"
    cid = subprocess.run(["podman", "run", "-d", "--rm", "--network", "none", "--name", name,
                          _IMAGE, "sh", "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    try:
        mine = [p for p in procfs.scan_container_processes() if p.container.container_id == cid]
        assert mine, "container's processes not found in /proc"
        sh = [p for p in mine if p.cmdline[:2] == ["sh", "-c"]]
        assert sh and sh[0].cmdline[2] == script
        assert all(p.container.runtime == "podman" and len(cid) == 64 for p in mine)
        assert sh[0].netns is not None and sh[0].netns != procfs.read_netns(os.getpid())
        assert classify_command(sh[0].cmdline).indicator == "ipinfo.io"
        rows = procfs.read_proc_net(sh[0].pid)
        assert rows is not None  # network none: only loopback, maybe no sockets at all
        assert all(r.local_address in ("127.0.0.1", "::1", "0.0.0.0", "::") for r in rows)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)


def test_read_proc_net_reads_socket_tables_past_the_first_page():
    """/proc/<pid>/net/tcp is a seq_file: about a page per read(). A busy host's table runs to
    many pages, and a reader that stops at the first short read loses most sockets."""
    import socket as _socket

    from osquery_ext.procfs import read_proc_net

    socks = []
    try:
        for _ in range(200):
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            socks.append(s)
        ports = {s.getsockname()[1] for s in socks}
        rows = read_proc_net(os.getpid())
        assert rows is not None
        seen = {int(r.local_port) for r in rows if r.protocol == "tcp"}
        assert ports <= seen, f"{len(ports - seen)} of 200 listening sockets missing"
    finally:
        for s in socks:
            s.close()
