"""osquery_ext.stdio_sockets on real processes: a shell whose stdin/stdout is a TCP connection is
seen with its remote end; a shell on pipes is not; a packet socket holder is seen."""
from __future__ import annotations

import socket
import subprocess

import pytest

from osquery_ext import stdio_sockets as ss
from osquery_ext.procfs import SocketRow


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


def test_shell_with_socket_stdio_shows_remote_end() -> None:
    srv = _listener()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    proc = subprocess.Popen(["sh", "-c", "sleep 30"], stdin=cli.fileno(), stdout=cli.fileno())
    try:
        st = ss.read_stdio(proc.pid)
        assert st is not None
        assert st.fds == (0, 1)
        assert st.remote == f"tcp 127.0.0.1:{port}"
        cols = ss.Probe().columns(proc.pid)
        assert cols["stdio_socket"] == "0,1" and cols["stdio_remote"] == f"tcp 127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        for s in (cli, peer, srv):
            s.close()


def test_shell_on_pipes_has_no_stdio_socket() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert ss.read_stdio(proc.pid) is None
        assert ss.Probe().columns(proc.pid) == ss.EMPTY
    finally:
        proc.kill()
        proc.wait()


def test_gone_process_gives_empty_columns() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert ss.Probe().columns(proc.pid) == ss.EMPTY


def test_listener_on_stdin_is_not_a_remote_end() -> None:
    rows = [SocketRow("tcp", 4, "0.0.0.0", 4444, "0.0.0.0", 0, "LISTEN", 0, 11),
            SocketRow("udp", 6, "::", 53, "fd00::5", 5353, "ESTABLISHED", 0, 12)]
    assert ss.match_stdio({0: 11}, rows) is None
    st = ss.match_stdio({0: 11, 2: 12}, rows)
    assert st == ss.StdioSocket((2,), "udp [fd00::5]:5353")


@pytest.mark.skipif(not hasattr(socket, "AF_PACKET"), reason="Linux only")
def test_packet_socket_holder_is_seen() -> None:
    try:
        pk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        pytest.skip("needs CAP_NET_RAW")
    try:
        proc = subprocess.Popen(["sleep", "30"], pass_fds=(pk.fileno(),))
        try:
            assert "packet" in ss.Probe().columns(proc.pid)["raw_sockets"].split(",")
        finally:
            proc.kill()
            proc.wait()
    finally:
        pk.close()


def test_parse_inodes_skips_malformed_lines() -> None:
    text = ("sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n"
            "0000 3 3 0003 0 1 0 0 777\n"
            "garbage\n")
    assert ss.parse_inodes(text, "packet") == {777}
    assert ss.raw_socket_kinds({777, 5}, {"packet": {777}, "raw": {9}}) == "packet"


def test_exec_capture_row_carries_stdio_remote() -> None:
    """The exec-event path (proc_connector.exec_row) fills the same columns at exec time."""
    from osquery_ext import proc_connector

    srv = _listener()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    proc = subprocess.Popen(["sh", "-c", "sleep 30"], stdin=cli.fileno(), stdout=cli.fileno(),
                            stderr=cli.fileno())
    try:
        row = proc_connector.exec_row(proc.pid, lambda _cg: {"container_id": "c" * 64},
                                      lambda argv: {}, None)
        assert row is not None
        assert row["stdio_socket"] == "0,1,2"
        assert row["stdio_remote"] == f"tcp 127.0.0.1:{port}"
        assert row["raw_sockets"] == ""
    finally:
        proc.kill()
        proc.wait()
        for s in (cli, peer, srv):
            s.close()


def test_busy_namespace_tcp_table_is_read_whole() -> None:
    """/proc/net/tcp is a seq_file (about a page per read()): with 200 sockets open, the shell's
    socket may sit past the first page and must still be found."""
    srv = _listener()
    port = srv.getsockname()[1]
    extra, accepted = [], []
    for _ in range(100):
        extra.append(socket.create_connection(("127.0.0.1", port)))
        accepted.append(srv.accept()[0])
    cli = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    proc = subprocess.Popen(["sh", "-c", "sleep 30"], stdin=cli.fileno(), stdout=cli.fileno())
    try:
        st = ss.read_stdio(proc.pid)
        assert st is not None and st.remote == f"tcp 127.0.0.1:{port}"
        assert len(ss.read_proc_net(proc.pid)) > 200
    finally:
        proc.kill()
        proc.wait()
        for s in (cli, peer, srv, *extra, *accepted):
            s.close()
