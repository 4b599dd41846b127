"""container_nat_flows: the host's connection tracking, read so an uplink sensor can see containers.

Why: a Zeek sensor on the host's uplink (a network tap) sees every container behind a masquerading
bridge as the host itself: `wget ipinfo.io` from a container is `host:41234 -> 34.117.59.81:80`.
Only the host knows which container that was: its netfilter connection tracking holds, per flow,
the original tuple (container address and port -> destination) and the reply tuple, whose
destination is the host address and port the uplink sees after SNAT/masquerade. This module turns
those entries into rows the scheduler can join uplink Zeek records against.

How, and why this way:
- Events, not polling: the kernel announces each confirmed flow and each flow's end on netlink
  (NETLINK_NETFILTER, multicast groups NFNLGRP_CONNTRACK_NEW / _DESTROY). A 100 ms flow is caught
  as it happens, the same way exec events are. The messages are nfnetlink/ctnetlink attribute
  trees; they are parsed here with `struct` (stdlib only, no libnetfilter_conntrack, no pyroute2:
  the extension stays light and the parser stays testable on recorded bytes).
- A thread, not a child process (unlike proc_connector): a conntrack event carries everything
  the row needs, so nothing races the flow's end except the container-address lookup, and the
  kernel queues events in the socket's receive buffer (raised to 8 MiB) while the thread waits
  for the GIL. An overrun (ENOBUFS) is counted and followed by a dump, so flows still in the table
  are recovered.
- Fallbacks: where events cannot be had (nf_conntrack_events=0) the table is dumped over netlink
  every second; where netlink is refused, /proc/net/nf_conntrack is read instead. Polling still
  catches TCP flows (an entry stays in TIME_WAIT for two minutes) but may miss short UDP ones.
  Where neither works (no root, no nf_conntrack) the extension logs ONE warning and the table
  stays empty; the other tables are unaffected.
- Which flows: those whose original source is a container address: in a container subnet
  (indicators.load_container_subnets, data/container_subnets.tsv) or an address a known container
  holds. The container id comes from an address book filled from the containers' own network
  namespaces (/proc/<pid>/net/fib_trie and if_inet6 of one process per container: works for any
  runtime and for a `--rm` container that is gone before osquery asks) and from the runtime
  inventory. A remembered address is checked against its process on every use, so an address a
  dead container held is not pinned on its successor.

Rows are immutable once buffered (osquery's differential logging sees each once): a `new` row when
the flow is confirmed (end_time empty) and a `destroy` row when the kernel drops it (for TCP that
is after TIME_WAIT, so end_time is late by up to two minutes; start_time is exact). start_time and
end_time are the kernel's when net.netfilter.nf_conntrack_timestamp=1, else the time the event
arrived (the flow's first packet, give or take a scheduling delay).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator

from osquery_ext.capture_child import CaptureChild, child_main  # stdlib only: supervision

log = logging.getLogger(__name__)

# -- kernel constants (include/uapi/linux/netlink.h, netfilter/nfnetlink*.h) -----------------------
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLA_TYPE_MASK = 0x3FFF      # strips NLA_F_NESTED (0x8000) and NLA_F_NET_BYTEORDER (0x4000)

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMPV6_ID = 7
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp", 136: "udplite",
               33: "dccp", 47: "gre"}

_NLMSGHDR = struct.Struct("=IHHII")   # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")     # family, version, res_id (big-endian, unused)
_NLATTR = struct.Struct("=HH")        # len, type

#: The table's columns (name, osquery type); tables.py builds its TableColumns from this.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "BIGINT"), ("time_nano", "BIGINT"), ("event", "TEXT"), ("source", "TEXT"),
    ("protocol", "TEXT"), ("family", "INTEGER"),
    ("container_address", "TEXT"), ("container_port", "INTEGER"),
    ("remote_address", "TEXT"), ("remote_port", "INTEGER"),
    ("nat_address", "TEXT"), ("nat_port", "INTEGER"),
    ("nat_remote_address", "TEXT"), ("nat_remote_port", "INTEGER"),
    ("start_time", "BIGINT"), ("end_time", "BIGINT"),
    ("container_id", "TEXT"), ("container_name", "TEXT"), ("image", "TEXT"),
    ("conntrack_id", "TEXT"),
)
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)


# -- parsed flows (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Flow:
    """One conntrack entry as an event or a dump line gives it.

    kind: "new" or "destroy" (events), "dump" (a table dump or /proc line: still tracked).
    The original tuple is what the container sent; the reply tuple is what comes back, so after
    SNAT its destination (reply_dst, reply_dport) is the address the uplink sees as the source.
    start_ns / stop_ns: the kernel's timestamps (0 unless nf_conntrack_timestamp is on).
    """

    kind: str
    family: int
    proto: int
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    ct_id: int = 0
    start_ns: int = 0
    stop_ns: int = 0

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def key(self) -> tuple:
        """Identity across events and polls (the kernel id is reused only after the entry dies)."""
        return (self.ct_id, self.proto, self.orig_src, self.orig_sport, self.orig_dst,
                self.orig_dport)


def iter_attrs(data: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each netlink attribute in [off, end).

    A truncated or zero-length attribute ends the walk (the rest of the buffer cannot be trusted).
    """
    while off + _NLATTR.size <= end:
        alen, atype = _NLATTR.unpack_from(data, off)
        if alen < _NLATTR.size or off + alen > end:
            return
        yield atype & NLA_TYPE_MASK, off + _NLATTR.size, off + alen
        off += (alen + 3) & ~3


def _addr(data: bytes, start: int, end: int) -> str:
    raw = data[start:end]
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def parse_tuple(data: bytes, start: int, end: int) -> tuple[str, str, int, int, int]:
    """(src, dst, proto, sport, dport) of a CTA_TUPLE_* nest; ICMP's id stands in as sport."""
    src = dst = ""
    proto = sport = dport = 0
    for atype, s, e in iter_attrs(data, start, end):
        if atype == CTA_TUPLE_IP:
            for t, s2, e2 in iter_attrs(data, s, e):
                if t in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = _addr(data, s2, e2)
                elif t in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = _addr(data, s2, e2)
        elif atype == CTA_TUPLE_PROTO:
            for t, s2, e2 in iter_attrs(data, s, e):
                if t == CTA_PROTO_NUM and e2 > s2:
                    proto = data[s2]
                elif t == CTA_PROTO_SRC_PORT and e2 - s2 >= 2:
                    sport = struct.unpack_from(">H", data, s2)[0]
                elif t == CTA_PROTO_DST_PORT and e2 - s2 >= 2:
                    dport = struct.unpack_from(">H", data, s2)[0]
                elif t in (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID) and e2 - s2 >= 2:
                    sport = struct.unpack_from(">H", data, s2)[0]
    return src, dst, proto, sport, dport


def parse_ct_message(data: bytes, off: int, end: int, kind: str, family: int) -> Flow | None:
    """A Flow from one ctnetlink message body (the attributes after nfgenmsg), None if it has
    no original tuple."""
    orig = reply = None
    ct_id = start_ns = stop_ns = 0
    for atype, s, e in iter_attrs(data, off, end):
        if atype == CTA_TUPLE_ORIG:
            orig = parse_tuple(data, s, e)
        elif atype == CTA_TUPLE_REPLY:
            reply = parse_tuple(data, s, e)
        elif atype == CTA_ID and e - s >= 4:
            ct_id = struct.unpack_from(">I", data, s)[0]
        elif atype == CTA_TIMESTAMP:
            for t, s2, e2 in iter_attrs(data, s, e):
                if t == CTA_TIMESTAMP_START and e2 - s2 >= 8:
                    start_ns = struct.unpack_from(">Q", data, s2)[0]
                elif t == CTA_TIMESTAMP_STOP and e2 - s2 >= 8:
                    stop_ns = struct.unpack_from(">Q", data, s2)[0]
    if orig is None or not orig[0]:
        return None
    reply = reply or ("", "", orig[2], 0, 0)
    return Flow(kind=kind, family=4 if ":" not in orig[0] else 6, proto=orig[2],
                orig_src=orig[0], orig_dst=orig[1], orig_sport=orig[3], orig_dport=orig[4],
                reply_src=reply[0], reply_dst=reply[1], reply_sport=reply[3],
                reply_dport=reply[4], ct_id=ct_id, start_ns=start_ns, stop_ns=stop_ns)


def message_kind(nl_type: int, nl_flags: int) -> str | None:
    """"new", "destroy" or "dump" for a ctnetlink message type; None for anything else.

    Events: IPCTNL_MSG_CT_NEW with NLM_F_CREATE is a new flow (without it, an update, which we
    do not subscribe to); IPCTNL_MSG_CT_DELETE is a destroy. Dump answers are CT_NEW with
    NLM_F_MULTI.
    """
    if nl_type >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    msg = nl_type & 0xFF
    if msg == IPCTNL_MSG_CT_DELETE:
        return "destroy"
    if msg == IPCTNL_MSG_CT_NEW:
        if nl_flags & NLM_F_MULTI:
            return "dump"
        return "new" if nl_flags & NLM_F_CREATE else None
    return None


@dataclass(slots=True)
class ParseResult:
    """What one netlink datagram held: flows, whether a dump ended, errors reported, and how
    many messages were malformed (counted, skipped)."""

    flows: list[Flow]
    done: bool = False
    errors: list[int] | None = None
    malformed: int = 0


def parse_datagram(data: bytes) -> ParseResult:
    """All conntrack flows in one netlink datagram (several messages may share one)."""
    res = ParseResult(flows=[])
    off, n = 0, len(data)
    while off + _NLMSGHDR.size <= n:
        nl_len, nl_type, nl_flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if nl_len < _NLMSGHDR.size or off + nl_len > n:
            res.malformed += 1
            break
        body = off + _NLMSGHDR.size
        end = off + nl_len
        if nl_type == NLMSG_DONE:
            res.done = True
        elif nl_type == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, body)[0] if end - body >= 4 else -1
            if code != 0:  # 0 is an ACK
                res.errors = (res.errors or []) + [-code]
        else:
            kind = message_kind(nl_type, nl_flags)
            if kind is not None:
                if end - body < _NFGENMSG.size:
                    res.malformed += 1
                else:
                    family = data[body]
                    flow = parse_ct_message(data, body + _NFGENMSG.size, end, kind, family)
                    if flow is None:
                        res.malformed += 1
                    else:
                        res.flows.append(flow)
        off += (nl_len + 3) & ~3
    return res


def dump_request(seq: int = 1, family: int = socket.AF_UNSPEC) -> bytes:
    """The netlink request for a dump of the whole conntrack table (IPCTNL_MSG_CT_GET + DUMP)."""
    body = _NFGENMSG.pack(family, 0, 0)
    hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return hdr + body


def parse_proc_line(line: str) -> Flow | None:
    """A Flow ("dump") from one /proc/net/nf_conntrack line; None for a malformed line.

    `ipv4 2 tcp 6 117 TIME_WAIT src=A dst=B sport=1 dport=2 [packets=.. bytes=..] src=B dst=C
    sport=2 dport=3 [ASSURED] mark=0 ... use=2` -- the first src/dst/sport/dport group is the
    original direction, the second the reply. ICMP has id= instead of ports.
    """
    parts = line.split()
    if len(parts) < 6 or parts[0] not in ("ipv4", "ipv6"):
        return None
    try:
        proto = int(parts[3])
    except ValueError:
        return None
    groups: list[dict[str, str]] = [{}, {}]
    g = 0
    for tok in parts[4:]:
        k, sep, v = tok.partition("=")
        if not sep:
            continue
        if k == "src" and "src" in groups[g]:
            g += 1
            if g > 1:
                break
        if k in ("src", "dst", "sport", "dport", "id") and k not in groups[g]:
            groups[g][k] = v
        elif k == "id" and g == 0:
            pass
    o, r = groups
    if not o.get("src") or not o.get("dst"):
        return None
    try:
        osrc = str(ipaddress.ip_address(o["src"]))
        odst = str(ipaddress.ip_address(o["dst"]))
        rsrc = str(ipaddress.ip_address(r["src"])) if r.get("src") else ""
        rdst = str(ipaddress.ip_address(r["dst"])) if r.get("dst") else ""
        osport = int(o.get("sport") or o.get("id") or 0)
        odport = int(o.get("dport") or 0)
        rsport = int(r.get("sport") or r.get("id") or 0)
        rdport = int(r.get("dport") or 0)
    except ValueError:
        return None
    return Flow(kind="dump", family=4 if parts[0] == "ipv4" else 6, proto=proto,
                orig_src=osrc, orig_dst=odst, orig_sport=osport, orig_dport=odport,
                reply_src=rsrc, reply_dst=rdst, reply_sport=rsport, reply_dport=rdport)


def parse_proc_table(text: str) -> tuple[list[Flow], int]:
    """(flows, malformed line count) of a whole /proc/net/nf_conntrack text."""
    flows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        f = parse_proc_line(line)
        if f is None:
            bad += 1
        else:
            flows.append(f)
    return flows, bad


# -- container addresses (pure parsers + a small cache) --------------------------------------------
def local_addresses_fib_trie(text: str) -> set[str]:
    """The IPv4 addresses a network namespace holds, from its /proc/<pid>/net/fib_trie.

    Each `|-- A` leaf is followed by its routes; `/32 host LOCAL` marks an address of this
    namespace. Loopback (127/8) is left out: every namespace has it.
    """
    out: set[str] = set()
    leaf = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|-- "):
            leaf = s[4:].strip()
        elif leaf and s.startswith("/32 host LOCAL") and not leaf.startswith("127."):
            out.add(leaf)
    return out


def local_addresses_if_inet6(text: str) -> set[str]:
    """The global/site IPv6 addresses of a namespace from /proc/<pid>/net/if_inet6 (loopback
    and link-local left out: they are never a conntrack source that leaves the host)."""
    out: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or len(parts[0]) != 32 or parts[5] == "lo":
            continue
        try:
            scope = int(parts[3], 16)
            addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
        except ValueError:
            continue
        if scope in (0x10, 0x20) or addr.is_link_local or addr.is_loopback:
            continue
        out.add(str(addr))
    return out


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an address: a container and one of its processes (for the liveness check)."""

    container_id: str
    pid: int = 0
    netns: str = ""


def is_container_source(addr: str, subnets: Iterable[Any], known: Callable[[str], bool],
                        host_local: Callable[[str], bool] = lambda a: False) -> bool:
    """True when `addr` is in a container subnet or is an address a known container holds; an
    address of the host itself (the bridge's gateway address) never is."""
    if known(addr):
        return True
    if host_local(addr):
        return False
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in subnets)


def flow_row(flow: Flow, t_ns: int, holder: Holder | None, source: str,
             started_ns: int | None = None) -> dict[str, str]:
    """A container_nat_flows row (all strings, as osquery carries them).

    `t_ns` is when we learnt of the event; `started_ns` what we remember of the flow's start
    (a destroy event does not carry it unless the kernel timestamps flows).
    """
    if flow.kind == "destroy":
        start = flow.start_ns or started_ns or 0
        end = flow.stop_ns or t_ns
    else:
        start = flow.start_ns or started_ns or t_ns
        end = 0
    return {
        "time": str(t_ns // 1_000_000_000), "time_nano": str(t_ns),
        "event": "destroy" if flow.kind == "destroy" else "new", "source": source,
        "protocol": flow.protocol, "family": str(flow.family),
        "container_address": flow.orig_src, "container_port": str(flow.orig_sport),
        "remote_address": flow.orig_dst, "remote_port": str(flow.orig_dport),
        "nat_address": flow.reply_dst, "nat_port": str(flow.reply_dport),
        "nat_remote_address": flow.reply_src, "nat_remote_port": str(flow.reply_sport),
        "start_time": f"{start / 1e9:.6f}" if start else "",
        "end_time": f"{end / 1e9:.6f}" if end else "",
        "container_id": holder.container_id if holder else "",
        "container_name": "", "image": "",
        "conntrack_id": str(flow.ct_id) if flow.ct_id else "",
    }


class AddressBook:
    """Container address -> Holder, learnt from the containers' own network namespaces and from
    the runtime inventory; every answer is checked against its process, because a `--rm`
    container's address is handed to the next container within seconds."""

    def __init__(self, proc: str = "/proc", attribute: Callable[[bytes], Any] | None = None,
                 inventory: Callable[[], Iterable[Any]] | None = None,
                 min_rescan: float = 0.05) -> None:
        self.proc = proc
        self.attribute = attribute or _default_attribute
        self.inventory = inventory
        self.min_rescan = min_rescan
        self._by_addr: dict[str, Holder] = {}
        self._misses: dict[str, float] = {}   # address -> when it last failed to resolve
        self._ns_seen: dict[str, tuple[Holder | None, frozenset[str]]] = {}
        #: set while exec events feed learn_pid: every container's addresses are then learnt at
        #: its first exec, so the newest holder of an address is always known and a holder whose
        #: process has already exited (a --rm one-shot) still answers for its flows.
        self.exec_learning = False
        self._last_scan = -1e9
        self._lock = threading.Lock()

    def known(self, addr: str) -> bool:
        with self._lock:
            return addr in self._by_addr

    def _alive(self, h: Holder) -> bool:
        if not h.pid:
            return True  # from the runtime inventory: no process to check
        try:
            link = os.readlink(f"{self.proc}/{h.pid}/ns/net")
        except OSError:
            return False
        return not h.netns or link == h.netns

    def resolve(self, addr: str) -> Holder | None:
        """Who holds `addr` now: the remembered holder if its process still lives in the same
        network namespace, else a rescan of /proc (at most every min_rescan; an unknown address
        seen again within a second is not rescanned for) and then the runtime inventory."""
        with self._lock:
            h = self._by_addr.get(addr)
        if h is not None and (self.exec_learning or self._alive(h)):
            return h
        now = time.monotonic()
        if h is None and now - self._misses.get(addr, -1e9) < 1.0:
            return None  # asked within the last second: a host address, or a container now gone
        wait = self.min_rescan - (now - self._last_scan)
        if wait > 0 and h is None:
            time.sleep(wait)   # at most min_rescan: the kernel queues events meanwhile
        self.scan()
        with self._lock:
            h = self._by_addr.get(addr)
        if h is not None:
            return h
        if self.inventory is not None:
            try:
                self.learn_inventory(self.inventory())
            except Exception:  # a runtime that is down: attribution degrades, capture goes on
                log.debug("runtime inventory for address %s failed", addr, exc_info=True)
            with self._lock:
                h = self._by_addr.get(addr)
        if h is None:
            if len(self._misses) > 4096:
                self._misses.clear()
            self._misses[addr] = now
        return h

    def scan(self) -> int:
        """Read the addresses of one process per container network namespace; returns how many
        addresses are known afterwards. Entries whose process died are dropped.

        Fast on a busy host: a network namespace already read in an earlier scan (the host's,
        shared by every host process, and each known container's) costs one readlink per process,
        so a scan that looks for one new container reads only that container's files."""
        self._last_scan = time.monotonic()
        found: dict[str, Holder] = {}
        ns_now: dict[str, tuple[Holder | None, frozenset[str]]] = {}
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return 0
        for pid in pids:
            base = f"{self.proc}/{pid}"
            try:
                ns = os.readlink(base + "/ns/net")
            except OSError:
                continue
            if ns in ns_now:
                continue
            prev = self._ns_seen.get(ns)
            if prev is not None and (prev[0] is None or self._alive(prev[0])):
                ns_now[ns] = prev
                continue
            cg = _read(base + "/cgroup")
            if not cg:
                continue
            att = self.attribute(cg)
            if not att or not att.get("container_id"):
                ns_now[ns] = (None, frozenset())   # a host (or unattributable) namespace
                continue
            addrs = local_addresses_fib_trie((_read(base + "/net/fib_trie") or b"").decode(
                "ascii", "replace"))
            addrs |= local_addresses_if_inet6((_read(base + "/net/if_inet6") or b"").decode(
                "ascii", "replace"))
            ns_now[ns] = (Holder(att["container_id"], int(pid), ns), frozenset(addrs))
        self._ns_seen = ns_now
        for holder, addrs in ns_now.values():
            if holder is not None:
                for a in addrs:
                    found[a] = holder
        with self._lock:
            if not self.exec_learning:
                for a, h in list(self._by_addr.items()):
                    if h.pid and a not in found:
                        del self._by_addr[a]
            self._by_addr.update(found)
            return len(self._by_addr)

    def learn_pid(self, pid: int) -> bool:
        """Learn the addresses of `pid`'s network namespace if it is a container's not seen yet
        (called on each exec: one readlink for a known namespace). True when it learnt some."""
        base = f"{self.proc}/{pid}"
        try:
            ns = os.readlink(base + "/ns/net")
        except OSError:
            return False
        prev = self._ns_seen.get(ns)
        if prev is not None and (prev[0] is None or prev[0].pid == pid or self._alive(prev[0])):
            return False
        cg = _read(base + "/cgroup")
        if not cg:
            return False
        att = self.attribute(cg)
        if not att or not att.get("container_id"):
            self._ns_seen[ns] = (None, frozenset())
            return False
        addrs = local_addresses_fib_trie((_read(base + "/net/fib_trie") or b"").decode(
            "ascii", "replace"))
        addrs |= local_addresses_if_inet6((_read(base + "/net/if_inet6") or b"").decode(
            "ascii", "replace"))
        holder = Holder(att["container_id"], int(pid), ns)
        self._ns_seen[ns] = (holder, frozenset(addrs))
        if len(self._ns_seen) > 20000:
            self._ns_seen.clear()
        with self._lock:
            for a in addrs:
                self._by_addr[a] = holder
        return bool(addrs)

    def learn_inventory(self, metas: Iterable[Any]) -> None:
        """Addresses the runtime reports (ContainerMeta.ip_addresses); a /proc-learnt holder wins
        because it was checked against a live process."""
        with self._lock:
            for m in metas:
                for a in getattr(m, "ip_addresses", None) or []:
                    cur = self._by_addr.get(a)
                    if cur is None or not cur.pid:
                        self._by_addr[a] = Holder(m.id)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _default_attribute(raw: bytes) -> dict[str, str] | None:
    from osquery_ext import cgroup  # stdlib-only; every runtime's cgroup layout
    return cgroup.attribution_columns(raw.decode("utf-8", "replace"))


def _default_subnets() -> list[Any]:
    try:
        from osquery_ext import indicators
        return list(indicators.load_container_subnets())
    except Exception as exc:  # a broken data file must not stop the capture
        log.warning("container subnets unavailable (%s): only known container addresses count", exc)
        return []


# -- the capture (netlink / proc I/O) --------------------------------------------------------------
def open_event_socket(groups: tuple[int, ...] = (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY),
                      rcvbuf: int = 8 * 1024 * 1024) -> socket.socket:
    """A NETLINK_NETFILTER socket subscribed to conntrack events (raises OSError if refused)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # bursts of flows: a big buffer
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                continue
        sock.bind((0, 0))
        for g in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
    except OSError:
        sock.close()
        raise
    return sock


def netlink_dump(timeout: float = 2.0) -> list[Flow]:
    """Every entry of the conntrack table, over a fresh netlink socket (raises OSError)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 * 1024 * 1024)
        except OSError:
            pass
        sock.bind((0, 0))
        sock.settimeout(timeout)
        sock.send(dump_request(seq=int(time.time()) & 0xFFFF))
        flows: list[Flow] = []
        while True:
            res = parse_datagram(sock.recv(1 << 20))
            flows.extend(res.flows)
            if res.errors:
                err = res.errors[0]
                raise OSError(err, f"conntrack dump refused: {os.strerror(err)}")
            if res.done:
                return flows
    finally:
        sock.close()


def read_proc_table(path: str = "/proc/net/nf_conntrack") -> list[Flow]:
    """Entries of the /proc conntrack table (raises OSError when absent or unreadable)."""
    with open(path, "r", encoding="ascii", errors="replace") as f:
        flows, bad = parse_proc_table(f.read())
    if bad:
        log.debug("%s: %d malformed lines skipped", path, bad)
    return flows


def events_enabled(proc: str = "/proc") -> bool:
    """False when the kernel is told not to send conntrack events (net.netfilter.
    nf_conntrack_events=0); 1 and 2 (on when someone listens) both deliver them."""
    raw = _read(f"{proc}/sys/net/netfilter/nf_conntrack_events")
    return raw is None or raw.strip() != b"0"


def log_mode(mode: str, reason: str, poll_interval: float = 1.0) -> None:
    """The one log line that says how container_nat_flows is filled (a warning unless events)."""
    if mode == "unavailable":
        log.warning("conntrack unavailable (%s): container_nat_flows stays empty; the other "
                    "tables keep working", reason)
    elif mode in ("netlink-poll", "proc-poll"):
        log.warning("conntrack events unavailable (%s); polling the table every %gs (%s): short "
                    "UDP flows may be missed", reason, poll_interval, mode)
    elif mode == "events":
        log.info("conntrack event capture running%s", f" ({reason})" if reason else "")


class HostAddresses:
    """The host's own addresses (refreshed every few seconds), so the bridge's gateway address,
    which sits inside the container subnet, is not taken for a container."""

    def __init__(self, proc: str = "/proc", ttl: float = 5.0) -> None:
        self.proc, self.ttl = proc, ttl
        self._addrs: set[str] = set()
        self._at = -1e9

    def __call__(self, addr: str) -> bool:
        now = time.monotonic()
        age = now - self._at
        # a bridge that just appeared (its gateway address) must not wait out the TTL
        if age > self.ttl or (addr not in self._addrs and age > 0.5):
            self._at = now
            text4 = (_read(f"{self.proc}/net/fib_trie") or b"").decode("ascii", "replace")
            text6 = (_read(f"{self.proc}/net/if_inet6") or b"").decode("ascii", "replace")
            self._addrs = local_addresses_fib_trie(text4) | local_addresses_if_inet6(text6)
        return addr in self._addrs


class ConntrackCapture(threading.Thread):
    """Keeps the container_nat_flows ring buffer filled from events, or from polls.

    `mode`: starting / events / netlink-poll / proc-poll / unavailable / stopped; `ready` is set
    once the mode is known. Counters (`flows`, `skipped`, `overruns`, `malformed`) are for the
    bench and the logs.
    """

    def __init__(self, buffer: Any, book: AddressBook | None = None,
                 subnets: list[Any] | None = None, proc: str = "/proc",
                 poll_interval: float = 1.0, force_mode: str | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 lookup: Callable[[str], "tuple[str, str] | None"] | None = None,
                 on_mode: Callable[[str, str], None] | None = None,
                 learn_execs: bool = False) -> None:
        super().__init__(name="conntrack", daemon=True)
        self.on_mode = on_mode
        self.learn_execs = learn_execs
        self.buffer = buffer
        self.book = book or AddressBook(proc)
        self.subnets = _default_subnets() if subnets is None else subnets
        self.proc = proc
        self.poll_interval = poll_interval
        self.force_mode = force_mode
        self.clock = clock
        self.lookup = lookup
        self.host_local = HostAddresses("/proc")
        self.mode = "starting"
        self.reason = ""
        self.ready = threading.Event()
        self.flows = self.skipped = self.overruns = self.malformed = 0
        self._starts: dict[tuple, int] = {}     # flow key -> start ns (for destroy rows)
        self._polled: dict[tuple, Flow] = {}    # polling: what the last poll saw
        self._stop_evt = threading.Event()
        self._sock: socket.socket | None = None
        self._exec_sock: socket.socket | None = None

    # -- flow handling (shared by every mode) --------------------------------------------------
    def handle(self, flow: Flow, source: str, t_ns: int | None = None) -> dict[str, str] | None:
        """Buffer the row for one flow if its source is a container address; returns the row."""
        if not is_container_source(flow.orig_src, self.subnets, self.book.known,
                                   self.host_local):
            self.skipped += 1
            return None
        t = t_ns if t_ns is not None else self.clock()
        key = flow.key
        if flow.kind == "destroy":
            started = self._starts.pop(key, None)
        else:
            started = self._starts.get(key)
            if started is None:
                started = flow.start_ns or t
                if len(self._starts) >= 200_000:  # bounded: a flood of never-ending flows
                    self._starts.clear()
                self._starts[key] = started
        holder = self.book.resolve(flow.orig_src)
        row = flow_row(flow, t, holder, source, started)
        if holder is not None and self.lookup is not None:
            named = self.lookup(holder.container_id)
            if named:
                row["container_name"], row["image"] = named
        self.buffer.append(row)
        self.flows += 1
        return row

    def handle_datagram(self, data: bytes, source: str = "event") -> None:
        res = parse_datagram(data)
        self.malformed += res.malformed
        t = self.clock()
        for flow in res.flows:
            self.handle(flow, source, t)

    def handle_poll(self, flows: list[Flow], source: str) -> None:
        """Rows from one poll: `new` for entries not seen last time, `destroy` for those gone."""
        t = self.clock()
        now = {f.key: f for f in flows}
        for key, f in now.items():
            if key not in self._polled:
                self.handle(replace(f, kind="new"), source, t)
        for key, f in self._polled.items():
            if key not in now:
                self.handle(replace(f, kind="destroy"), source, t)
        self._polled = now

    # -- modes ---------------------------------------------------------------------------------
    def _set_mode(self, mode: str, reason: str = "") -> None:
        self.mode, self.reason = mode, reason
        if self.on_mode is not None:
            self.on_mode(mode, reason)
        else:
            log_mode(mode, reason, self.poll_interval)
        self.ready.set()

    def _open_exec_socket(self) -> None:
        """Learn container addresses at each exec (the process connector), so a flow of a
        container that exits right after it is still attributed. Best effort."""
        if not self.learn_execs:
            return
        try:
            from osquery_ext import proc_connector
            self._exec_sock = proc_connector.open_socket()
            self.book.exec_learning = True
        except (OSError, ImportError) as exc:
            log.debug("no exec events for address learning: %s", exc)

    def _on_exec_data(self, data: bytes) -> None:
        from osquery_ext import proc_connector
        for what, tgid, _ts in proc_connector.parse_messages(data):
            if what == proc_connector.PROC_EVENT_EXEC and tgid:
                try:
                    self.book.learn_pid(tgid)
                except Exception:  # one odd process must not stop the capture
                    log.debug("address learning for pid %s failed", tgid, exc_info=True)

    def run(self) -> None:
        try:
            self.book.scan()
        except Exception:  # attribution is best effort; the flows still count
            log.debug("initial container address scan failed", exc_info=True)
        why = ""
        if self.force_mode in (None, "events"):
            if not events_enabled(self.proc):
                why = "net.netfilter.nf_conntrack_events=0"
            else:
                try:
                    self._sock = open_event_socket()
                except OSError as exc:
                    why = f"netlink subscribe: {exc.strerror or exc}"
            if self._sock is not None:
                self._open_exec_socket()
                self._set_mode("events", "exec learning" if self._exec_sock else "")
                self._resync("dump")  # flows that were already there when we started
                self._event_loop(self._sock)
                return
        if self.force_mode in (None, "events", "netlink-poll"):
            try:
                netlink_dump()
                self._set_mode("netlink-poll", why or "forced")
                self._poll_loop(netlink_dump, "dump")
                return
            except OSError as exc:
                why = (why + "; " if why else "") + f"netlink dump: {exc.strerror or exc}"
        path = f"{self.proc}/net/nf_conntrack"
        try:
            read_proc_table(path)
            self._set_mode("proc-poll", why or "forced")
            self._poll_loop(lambda: read_proc_table(path), "proc")
            return
        except OSError as exc:
            why = (why + "; " if why else "") + f"{path}: {exc.strerror or exc}"
        self._set_mode("unavailable", why + " (needs root and the nf_conntrack module)")

    def _resync(self, source: str) -> None:
        """After start or an overrun: rows for tracked flows not yet seen (kind "new")."""
        try:
            flows = netlink_dump()
        except OSError as exc:
            log.debug("conntrack dump failed: %s", exc)
            return
        t = self.clock()
        for f in flows:
            if f.key not in self._starts:
                self.handle(replace(f, kind="new"), source, t)

    def _event_loop(self, sock: socket.socket) -> None:
        socks = [sock] + ([self._exec_sock] if self._exec_sock is not None else [])
        while not self._stop_evt.is_set():
            try:
                ready, _, _ = select.select(socks, [], [], 0.5)
            except (InterruptedError, ValueError):
                if self._stop_evt.is_set():
                    break
                continue
            if not ready:
                continue
            if self._exec_sock is not None and self._exec_sock in ready:
                # execs first: a container's address is learnt before its flows are handled
                while True:   # drain: every exec queued so far comes before this flow
                    try:
                        self._on_exec_data(self._exec_sock.recv(262144, socket.MSG_DONTWAIT))
                    except BlockingIOError:
                        break
                    except OSError:
                        break  # an exec overrun: the /proc rescan on an unknown address covers it
                if sock not in ready:
                    continue
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:
                if self._stop_evt.is_set():
                    break
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: we were too slow
                    self.overruns += 1
                    if self.overruns == 1:
                        log.warning("conntrack event overrun: the kernel dropped events; "
                                    "recovering flows still tracked from a dump")
                    self._resync("dump")
                    continue
                self._set_mode("unavailable", f"recv failed: {exc}")
                return
            try:
                self.handle_datagram(data)
            except Exception:  # one odd message must not stop the capture
                log.exception("conntrack event could not be handled")
        self.mode = "stopped"

    def _poll_loop(self, read: Callable[[], list[Flow]], source: str) -> None:
        while not self._stop_evt.is_set():
            try:
                self.handle_poll(read(), source)
            except OSError as exc:
                log.debug("conntrack poll failed: %s", exc)
            except Exception:
                log.exception("conntrack poll could not be handled")
            self._stop_evt.wait(self.poll_interval)
        self.mode = "stopped"

    def stop(self) -> None:
        self._stop_evt.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass



# -- the capture process and the extension side -----------------------------------------------------
def capture_main(out: Any = None) -> int:
    """The capture process (`python -m osquery_ext.conntrack`): one JSON line per status change
    and per row. Why a process of its own: learning a container's address races the container's
    exit (a `--rm` one-shot lives a few ms after its exec), and inside the extension another
    Python thread may hold the GIL for 5 ms; a small single-threaded interpreter at raised
    priority wins that race (the same reasoning as proc_connector's exec capture)."""
    import json
    import sys

    from osquery_ext.proc_connector import _die_with_parent, _raise_priority

    out = out or sys.stdout
    logging.basicConfig(level=logging.ERROR)

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    class _Rows:
        def append(self, row: dict[str, str]) -> None:
            emit({"row": row})

    _die_with_parent()
    _raise_priority()
    cap = ConntrackCapture(_Rows(), on_mode=lambda m, r: emit({"status": m, "reason": r}),
                           learn_execs=True)
    try:
        cap.run()
    except BrokenPipeError:
        return 0
    return 0 if cap.mode != "unavailable" else 2


class ConntrackReader(CaptureChild):
    """Runs the capture process and buffers its rows, naming containers from the runtime cache
    (and, for a row the process could not attribute, from the runtime inventory's addresses).

    Same interface as ConntrackCapture for the extension: `mode`, `reason`, `ready`, `stop()`.
    Starting, restarting and stopping the process is capture_child.CaptureChild's; this class
    only reads what a row or a status line means."""

    label = "conntrack capture"
    state_attr = "mode"
    log = log

    def __init__(self, buffer: Any, lookup: Callable[[str], "tuple[str, str] | None"] | None = None,
                 by_address: Callable[[str], str] | None = None,
                 command: list[str] | None = None, max_restarts: int = 5) -> None:
        super().__init__("conntrack-reader", "osquery_ext.conntrack", command, max_restarts)
        self.buffer = buffer
        self.lookup = lookup
        self.by_address = by_address
        self.mode = "starting"
        self.rows = 0

    def _mode(self, mode: str, reason: str) -> None:
        """Take the capture's mode (logged once per change, as ConntrackCapture does)."""
        if mode != self.mode:
            log_mode(mode, reason)
        self.mode, self.reason = mode, reason
        self.ready.set()

    # -- CaptureChild hooks -------------------------------------------------------------------
    def give_up(self, reason: str) -> None:
        self._mode("unavailable", reason)

    def is_record(self, obj: dict[str, Any]) -> bool:
        """A flow line carries its row as a dict under "row"."""
        return isinstance(obj.get("row"), dict)

    def on_record(self, obj: dict[str, Any]) -> None:
        self.buffer.append(self.complete(obj["row"]))
        self.rows += 1

    def on_status(self, obj: dict[str, Any]) -> None:
        self._mode(str(obj["status"]), str(obj.get("reason", "")))

    def complete(self, row: dict[str, str]) -> dict[str, str]:
        """Fill what the capture process cannot know: names, and a container id from the
        runtime's addresses when /proc had none."""
        if not row.get("container_id") and self.by_address is not None:
            try:
                row["container_id"] = self.by_address(row.get("container_address", "")) or ""
            except Exception:  # a runtime that is down: the row stays unattributed
                log.debug("runtime address lookup failed", exc_info=True)
        cid = row.get("container_id")
        if cid and self.lookup is not None and not row.get("container_name"):
            named = self.lookup(cid)
            if named:
                row["container_name"], row["image"] = named
        return row


def start_capture(src: Any, **kwargs: Any) -> ConntrackReader:
    """Start the capture process for a tables.Sources: rows into its nat_flows buffer, names
    from its runtime cache, addresses the process could not attribute from its runtime
    inventory. Returns the started reader thread (`.stop()` ends it and the process)."""
    runtimes = getattr(src, "runtimes", None)

    def lookup(cid: str) -> tuple[str, str] | None:
        name, image = src.name_image(cid)
        return (name, image) if name or image else None

    def by_address(addr: str) -> str:
        if runtimes is None or not addr:
            return ""
        for m in runtimes.inventory():
            if addr in (m.ip_addresses or []):
                return m.id
        return ""

    reader = ConntrackReader(src.nat_flows, lookup, by_address, **kwargs)
    reader.start()
    return reader


if __name__ == "__main__":
    child_main(capture_main)
