"""osquery_ext.conntrack: parsing of real ctnetlink bytes, the /proc fallback, rows and filtering.

The netlink vectors in tests/data/conntrack/ were captured on the development VM from a real
masqueraded podman container (tests/data/conntrack/capture_vectors.py says how); the /proc table
saved at the same moment is a second, independently formatted view the netlink parse must agree
with.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from osquery_ext import conntrack as ct
from osquery_ext import tables
from osquery_ext.events import RingBuffer

DATA = Path(__file__).resolve().parent / "data" / "conntrack"
META = json.loads((DATA / "meta.json").read_text())
CIP = META["container_address"]
HOST = META["host_address"]


def _datagrams(name: str) -> list[tuple[int, bytes]]:
    out = []
    for line in (DATA / name).read_text().splitlines():
        d = json.loads(line)
        out.append((int(d.get("t_ns", 0)), bytes.fromhex(d["hex"])))
    return out


def _event_flows() -> list[ct.Flow]:
    flows = []
    for _t, b in _datagrams("events.jsonl"):
        res = ct.parse_datagram(b)
        assert res.malformed == 0
        flows += res.flows
    return flows


def _tuple(f: ct.Flow) -> tuple:
    return (f.proto, f.orig_src, f.orig_sport, f.orig_dst, f.orig_dport,
            f.reply_src, f.reply_sport, f.reply_dst, f.reply_dport)


# -- real netlink bytes ----------------------------------------------------------------------------
def test_new_events_give_the_container_tuple_and_the_masqueraded_tuple():
    news = [f for f in _event_flows() if f.kind == "new"]
    by_port = {f.orig_dport: f for f in news}
    web = META["services"]["ipinfo.io"]
    http = by_port[80]
    assert http.protocol == "tcp" and http.family == 4
    assert (http.orig_src, http.orig_dst) == (CIP, web)
    # after masquerade the reply goes to the host's uplink address, port kept by the NAT
    assert (http.reply_src, http.reply_sport, http.reply_dst) == (web, 80, HOST)
    assert http.reply_dport == http.orig_sport and 1024 <= http.orig_sport <= 65535
    assert http.ct_id > 0
    dns = by_port[53]
    assert dns.protocol == "udp" and dns.orig_dst == META["resolver"] and dns.reply_dst == HOST


def test_destroy_event_carries_the_kernel_timestamps():
    destroys = [f for f in _event_flows() if f.kind == "destroy"]
    assert destroys, "capture_vectors.py waits for the DNS flow's destroy"
    news = {f.ct_id: f for f in _event_flows() if f.kind == "new"}
    for f in destroys:
        assert f.orig_src == CIP and f.reply_dst == HOST
        assert f.start_ns > 1_600_000_000 * 10**9 and f.stop_ns >= f.start_ns
        assert _tuple(f) == _tuple(news[f.ct_id])  # the same flow as its new event
    udp = [f for f in destroys if f.protocol == "udp"]
    # a UDP entry is reaped 30 s after its last packet (nf_conntrack_udp_timeout)
    assert udp and 29 <= (udp[0].stop_ns - udp[0].start_ns) / 1e9 <= 60


def test_dump_agrees_with_the_proc_table_taken_at_the_same_moment():
    flows, done = [], False
    for _t, b in _datagrams("dump.jsonl"):
        res = ct.parse_datagram(b)
        assert res.malformed == 0 and not res.errors
        flows += res.flows
        done = done or res.done
    assert done, "the dump ends with NLMSG_DONE"
    assert all(f.kind == "dump" for f in flows)
    proc_flows, bad = ct.parse_proc_table((DATA / "proc_nf_conntrack.txt").read_text())
    assert bad == 0
    # two independent encodings of the same table: same set of tuples
    assert {_tuple(f) for f in flows} == {_tuple(f) for f in proc_flows}
    mine = [f for f in flows if f.orig_src == CIP]
    assert {f.orig_dport for f in mine} >= {80, 53}
    assert all(f.start_ns for f in mine)  # nf_conntrack_timestamp was on during the capture


def test_truncated_and_random_bytes_are_counted_never_raised():
    _t, b = _datagrams("events.jsonl")[0]
    for cut in range(1, len(b)):
        res = ct.parse_datagram(b[:cut])
        assert res.flows == [] or cut >= len(b) - 3
    assert ct.parse_datagram(b[:40]).malformed == 1
    rng = random.Random(7)
    for _ in range(2000):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        ct.parse_datagram(junk)
        ct.parse_datagram(b[:16] + junk)  # a valid header over garbage attributes


def test_error_message_and_dump_request():
    req = ct.dump_request(seq=9)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", req)
    assert length == len(req) == 20 and mtype == (1 << 8) | 1 and seq == 9
    assert flags == ct.NLM_F_REQUEST | ct.NLM_F_DUMP
    err = struct.pack("=IHHII", 36, ct.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + req[:16]
    res = ct.parse_datagram(err)
    assert res.errors == [1] and res.flows == []


def test_update_messages_are_ignored():
    _t, b = _datagrams("events.jsonl")[0]
    flags_off = 6
    no_create = b[:flags_off] + struct.pack("=H", 0) + b[flags_off + 2:]
    assert ct.parse_datagram(no_create).flows == []


# -- /proc fallback ------------------------------------------------------------------------------
def test_proc_lines():
    f = ct.parse_proc_line("ipv4     2 tcp      6 116 TIME_WAIT src=10.89.0.2 dst=198.51.100.201 "
                           "sport=37944 dport=80 src=198.51.100.201 dst=198.51.100.1 sport=80 "
                           "dport=37944 [ASSURED] mark=0 zone=0 use=2")
    assert f and f.protocol == "tcp" and (f.orig_src, f.orig_sport) == ("10.89.0.2", 37944)
    assert (f.reply_dst, f.reply_dport) == ("198.51.100.1", 37944)
    icmp = ct.parse_proc_line("ipv4 2 icmp 1 29 src=10.89.0.2 dst=198.51.100.201 type=8 code=0 "
                              "id=7 src=198.51.100.201 dst=198.51.100.1 type=0 code=0 id=7 use=1")
    assert icmp and icmp.protocol == "icmp" and icmp.orig_sport == 7 and icmp.reply_dst == HOST
    v6 = ct.parse_proc_line("ipv6 10 udp 17 29 src=fd00:0:0:0:0:0:0:5 dst=2001:db8:0:0:0:0:0:1 "
                            "sport=5000 dport=53 src=2001:db8::1 dst=fd00::5 sport=53 "
                            "dport=5000 mark=0 use=2")
    assert v6 and v6.family == 6 and v6.orig_src == "fd00::5" and v6.reply_dst == "fd00::5"
    for bad in ("", "garbage", "ipv4 2 tcp x 1 src=1.2.3.4", "ipv4 2 tcp 6 1 src=1.2.3 dst=4.5.6.7",
                "ipv4 2 tcp 6 1 CLOSE dport=80"):
        assert ct.parse_proc_line(bad) is None, bad
    flows, bad = ct.parse_proc_table("junk line\n\n" + (DATA / "proc_nf_conntrack.txt").read_text())
    assert bad == 1 and len(flows) > 0


# -- namespace addresses -------------------------------------------------------------------------
def test_fib_trie_gives_exactly_what_ip_addr_says():
    text = Path("/proc/self/net/fib_trie").read_text()
    got = ct.local_addresses_fib_trie(text)
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    want = {line.split()[3].split("/")[0] for line in out.splitlines()}
    assert got == {a for a in want if not a.startswith("127.")}


def test_if_inet6_keeps_global_addresses_only():
    text = ("fe80000000000000b82927fffeaa2edb 3c 40 20 c0    veth0\n"
            "fd000000000000000000000000000002 04 40 00 82     eth0\n"
            "00000000000000000000000000000001 01 80 10 80       lo\n"
            "short line\n")
    assert ct.local_addresses_if_inet6(text) == {"fd00::2"}


# -- rows and the capture logic --------------------------------------------------------------------
def _capture(subnets=("10.89.0.0/16",), holders=None, clock=None):
    import ipaddress

    class Book:
        def __init__(self):
            self.asked = []

        def known(self, a):
            return a in (holders or {})

        def resolve(self, a):
            self.asked.append(a)
            h = (holders or {}).get(a)
            return ct.Holder(h) if h else None

        def scan(self):
            return 0

    buf = RingBuffer(100)
    cap = ct.ConntrackCapture(buf, Book(), [ipaddress.ip_network(s) for s in subnets],
                              clock=clock or (lambda: 1_700_000_000_500_000_000),
                              lookup=lambda cid: ("web-1", "img:1") if cid == "c1" else None)
    cap.host_local = lambda a: a == "10.89.0.1"
    return cap, buf


def test_rows_for_container_sources_only_and_destroy_keeps_the_start():
    news = [f for f in _event_flows() if f.kind == "new"]
    times = iter([1_700_000_000_500_000_000, 1_700_000_000_600_000_000,
                  1_700_000_030_000_000_000, 1_700_000_031_000_000_000])
    cap, buf = _capture(holders={CIP: "c1"}, clock=lambda: next(times))
    for b in _datagrams("events.jsonl"):
        cap.handle_datagram(b[1])
    host = ct.Flow("new", 4, 6, "192.0.2.2", "198.51.100.9", 1, 2, "198.51.100.9", "192.0.2.2", 2, 1)
    gw = ct.Flow("new", 4, 2, "10.89.0.1", "224.0.0.22", 0, 0, "224.0.0.22", "10.89.0.1", 0, 0)
    assert cap.handle(host, "event") is None and cap.handle(gw, "event") is None
    rows = buf.snapshot()
    assert len(rows) == len(_event_flows()) and cap.skipped == 2
    assert [c for c in rows[0]] == list(ct.COLUMN_NAMES)
    new80 = next(r for r in rows if r["remote_port"] == "80" and r["event"] == "new")
    assert new80["container_id"] == "c1" and new80["container_name"] == "web-1"
    assert new80["image"] == "img:1" and new80["nat_address"] == HOST
    assert new80["nat_port"] == new80["container_port"] and new80["end_time"] == ""
    assert new80["start_time"] == "1700000000.500000" and new80["time"] == "1700000000"
    assert new80["source"] == "event" and new80["conntrack_id"] == str(news[0].ct_id)
    # a destroy for a flow we saw start keeps that start; its end is when the kernel says
    d = ct.Flow("destroy", 4, 6, CIP, new80["remote_address"], int(new80["container_port"]), 80,
                new80["remote_address"], HOST, 80, int(new80["nat_port"]),
                ct_id=int(new80["conntrack_id"]))
    row = cap.handle(d, "event", t_ns=1_700_000_200_000_000_000)
    assert row["event"] == "destroy" and row["start_time"] == "1700000000.500000"
    assert row["end_time"] == "1700000200.000000"


def test_poll_mode_reports_appearing_and_vanishing_entries():
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000_000))
    cap, buf = _capture(holders={CIP: "c1"}, clock=lambda: next(clock))
    flows, _ = ct.parse_proc_table((DATA / "proc_nf_conntrack.txt").read_text())
    cap.handle_poll(flows, "proc")
    first = buf.snapshot()
    assert {r["event"] for r in first} == {"new"} and all(r["source"] == "proc" for r in first)
    assert {r["container_address"] for r in first} == {CIP}  # host and gateway flows skipped
    cap.handle_poll(flows, "proc")
    assert len(buf) == len(first)  # nothing new
    cap.handle_poll([f for f in flows if f.orig_dport != 80], "proc")
    last = buf.snapshot()[-1]
    assert last["event"] == "destroy" and last["remote_port"] == "80"
    assert last["start_time"] == first[[r["remote_port"] for r in first].index("80")]["start_time"]


def test_table_honours_time_and_container_constraints():
    src = tables.Sources(runtimes=None)
    for i, cid in enumerate(("a", "b", "a")):
        f = ct.Flow("new", 4, 6, CIP, "198.51.100.201", 40000 + i, 80, "198.51.100.201", HOST,
                    80, 40000 + i)
        src.nat_flows.append(ct.flow_row(f, (1000 + i) * 10**9, ct.Holder(cid), "event"))
    ctx = {"constraints": [{"name": "time", "list": [{"op": 4, "expr": "1000"}]}]}
    assert [r["container_port"] for r in tables.generate_container_nat_flows(src, ctx)] == [
        "40001", "40002"]
    ctx = {"constraints": [{"name": "container_id", "list": [{"op": 2, "expr": "a"}]}]}
    assert len(tables.generate_container_nat_flows(src, json.dumps(ctx))) == 2
    assert [c.name for c in tables.COLUMNS["container_nat_flows"]] == list(ct.COLUMN_NAMES)


def test_address_book_drops_an_address_whose_process_is_gone(tmp_path):
    proc = tmp_path / "proc"
    (proc / "4242" / "net").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text("0::/machine.slice/libpod-" + "ab" * 32 + ".scope\n")
    (proc / "4242" / "net" / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.89.0.7\n        /32 host LOCAL\n"
        "     |-- 127.0.0.1\n        /32 host LOCAL\n")
    (proc / "4242" / "ns").mkdir()
    os.symlink("net:[4026532999]", proc / "4242" / "ns" / "net")
    book = ct.AddressBook(str(proc), attribute=lambda raw: {"container_id": "ab" * 32},
                          min_rescan=0)
    assert book.scan() == 1
    h = book.resolve("10.89.0.7")
    assert h and h.container_id == "ab" * 32 and h.pid == 4242
    assert book.resolve("127.0.0.1") is None
    os.unlink(proc / "4242" / "ns" / "net")  # the process exits
    os.symlink("net:[4026533000]", proc / "4242" / "ns" / "net")  # its pid reused elsewhere
    (proc / "4242" / "cgroup").write_text("0::/user.slice\n")
    book.attribute = lambda raw: None
    assert book.resolve("10.89.0.7") is None


def test_no_conntrack_anywhere_degrades_with_one_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="osquery_ext.conntrack")
    buf = RingBuffer(10)
    cap = ct.ConntrackCapture(buf, ct.AddressBook(str(tmp_path)), [], proc=str(tmp_path),
                              force_mode="proc-poll")
    cap.start()
    assert cap.ready.wait(5)
    cap.join(5)
    assert cap.mode == "unavailable" and "nf_conntrack" in cap.reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "container_nat_flows stays empty" in warnings[0].getMessage()


@pytest.mark.skipif(os.geteuid() != 0, reason="conntrack netlink needs root")
def test_live_dump_and_subscription_open_as_root():
    sock = ct.open_event_socket()
    try:
        assert sock.getsockname()[0] > 0
    finally:
        sock.close()
    flows = ct.netlink_dump()
    assert isinstance(flows, list)
    text = Path("/proc/net/nf_conntrack").read_text() if Path("/proc/net/nf_conntrack").exists() else ""
    proc_flows, _ = ct.parse_proc_table(text)
    # entries come and go between the two reads; most of the table is the same
    if proc_flows:
        common = {_tuple(f) for f in flows} & {_tuple(f) for f in proc_flows}
        assert len(common) >= len(proc_flows) // 2
