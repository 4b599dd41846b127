"""The NAT join: Zeek records from a sensor on the uplink -> the container behind the host's NAT.

Why: on the uplink, a masqueraded container's flow carries the host's address and a port the NAT
chose (`198.51.100.1:41234 -> 34.117.59.81:80`); the address join (Inventory.lookup of the
originator) finds no container there. The host's conntrack, reported by the extension's
container_nat_flows table, holds the mapping: for each container flow, the container's address
and port and the host address and port the uplink sees. This module indexes those rows and answers
"which container flow was this uplink record?" on (host address, port, protocol, the far end,
time), for the daemon and for replays alike (scheduler.detect.join.Joiner calls it).

Matching rules:
- key: (nat_address, nat_port, protocol) = the uplink record's (orig_h, orig_p, proto); the far end
  (resp_h, resp_p) must be the flow's nat_remote_address/port when the record has one (a
  masquerade may reuse one source port towards different destinations at the same time);
- time: the record's ts within [start - skew, end + skew] (an open flow has no end yet; a flow
  without a `destroy` row yet is open); the candidate whose start is nearest wins; `skew` covers
  the sensor's and the host's clocks disagreeing (default 2 s, see docs/zeek.md);
- the sensor's host name is preferred when it is one of osquery's host identifiers, but a sensor
  may call the host something else, so any host's flow matches when the host's is absent.

DNS through the host's resolver: a container that asks the resolver on its bridge gateway (or any
resolver on the host) makes a flow to the host itself (port 53, not NATed), and the host's
resolver then asks upstream from its own address; the uplink sees only the second query. Where
exactly one container made a DNS flow to the host within `dns_window` seconds before the upstream
query, that query is tied to it (join "host_resolver"); with several candidates it is left alone
(counted as ambiguous) rather than guessed.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any, Iterable

log = logging.getLogger(__name__)

TABLE = "container_nat_flows"
#: NetRecord.attribution values (what the alert's evidence calls the join that was used).
JOIN_ADDRESS = "bridge_address"
JOIN_NAT = "nat_flow"
JOIN_RESOLVER = "host_resolver"


@dataclass(slots=True)
class NatFlow:
    """One container flow as the host's conntrack saw it (container_nat_flows rows merged)."""

    host: str
    proto: str
    container_addr: str
    container_port: int
    remote_addr: str
    remote_port: int
    nat_addr: str
    nat_port: int
    nat_remote_addr: str
    nat_remote_port: int
    start: float
    end: float | None
    container_id: str
    container_name: str = ""
    image: str = ""
    conntrack_id: str = ""
    #: found by a table dump (extension start, after an overrun): the flow began at some unknown
    #: time before `start`, so any earlier record time matches
    open_start: bool = False

    @property
    def natted(self) -> bool:
        return (self.nat_addr, self.nat_port) != (self.container_addr, self.container_port)


@dataclass(slots=True)
class NatStats:
    rows: int = 0
    malformed: int = 0
    matched: int = 0
    resolver_matched: int = 0
    resolver_ambiguous: int = 0


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x == x and x > 0 else None


def _i(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def flow_from_columns(c: dict[str, str], host: str) -> NatFlow | None:
    """A NatFlow from one container_nat_flows row's columns; None when a field it needs is
    missing or not a number (the caller counts it as malformed)."""
    start = _f(c.get("start_time")) or _f(c.get("time"))
    cport, nport = _i(c.get("container_port")), _i(c.get("nat_port"))
    rport, nrport = _i(c.get("remote_port")), _i(c.get("nat_remote_port") or c.get("remote_port"))
    caddr, naddr = c.get("container_address") or "", c.get("nat_address") or ""
    if start is None or None in (cport, nport, rport, nrport) or not caddr or not naddr:
        return None
    end = _f(c.get("end_time")) if c.get("event") == "destroy" else None
    return NatFlow(host=host, proto=(c.get("protocol") or "").lower(), container_addr=caddr,
                   container_port=cport, remote_addr=c.get("remote_address") or "",
                   remote_port=rport, nat_addr=naddr, nat_port=nport,
                   nat_remote_addr=c.get("nat_remote_address") or c.get("remote_address") or "",
                   nat_remote_port=nrport, start=start, end=end,
                   container_id=c.get("container_id") or "",
                   container_name=c.get("container_name") or "", image=c.get("image") or "",
                   conntrack_id=c.get("conntrack_id") or "",
                   open_start=c.get("source") == "dump")


class NatFlows:
    """Index of container flows by the tuple the uplink sees; bounded, pruned by time."""

    def __init__(self, skew_s: float = 2.0, dns_window_s: float = 2.0,
                 max_flows: int = 500_000) -> None:
        self.skew_s = skew_s
        self.dns_window_s = dns_window_s
        self.max_flows = max_flows
        self.stats = NatStats()
        # (nat_addr, nat_port, proto) -> flows sorted by start
        self._by_nat: dict[tuple[str, int, str], list[NatFlow]] = {}
        # identity of a flow across its new/destroy rows
        self._by_id: dict[tuple[str, str, str, int, str, int], NatFlow] = {}
        # flows to a resolver on the host (not NATed, port 53), sorted by start
        self._dns: list[tuple[float, int, NatFlow]] = []
        self._nat_addrs: dict[str, int] = {}
        self._n = 0
        self._seq = 0
        self.latest = 0.0   # the latest flow start seen (how far the host's reports have come)

    def __len__(self) -> int:
        return self._n

    # -- input ------------------------------------------------------------------------------------
    def observe(self, columns: dict[str, str], host: str) -> NatFlow | None:
        """Add (or complete, for a `destroy` row) one container_nat_flows row."""
        self.stats.rows += 1
        f = flow_from_columns(columns, host)
        if f is None:
            self.stats.malformed += 1
            return None
        # new and destroy rows of one flow: the kernel's id, or (proc polling) the start time
        ident = (host, f.conntrack_id or f"{f.start:.3f}", f.container_addr, f.container_port,
                 f.remote_addr, f.remote_port)
        known = self._by_id.get(ident)
        if known is not None:
            if f.end is not None:
                known.end = f.end
            known.container_id = known.container_id or f.container_id
            known.container_name = known.container_name or f.container_name
            known.image = known.image or f.image
            return known
        self._by_id[ident] = f
        self.latest = max(self.latest, f.start)
        key = (f.nat_addr, f.nat_port, f.proto)
        lst = self._by_nat.setdefault(key, [])
        starts = [x.start for x in lst]
        lst.insert(bisect.bisect_right(starts, f.start), f)
        self._nat_addrs[f.nat_addr] = self._nat_addrs.get(f.nat_addr, 0) + 1
        if f.remote_port == 53 and not f.natted:
            self._seq += 1
            bisect.insort(self._dns, (f.start, self._seq, f))
        self._n += 1
        if self._n > self.max_flows:
            self.prune(keep_last=self.max_flows // 2)
        return f

    def observe_rows(self, rows: Iterable[Any]) -> int:
        """Observe every container_nat_flows OsqueryRow of `rows`; returns how many were."""
        n = 0
        for r in rows:
            if getattr(r, "table", "") == TABLE and getattr(r, "action", "") != "removed":
                self.observe(r.columns, r.host)
                n += 1
        return n

    def prune(self, before: float | None = None, keep_last: int | None = None) -> int:
        """Forget flows that ended (or started, if open) before `before`, or all but the newest
        `keep_last`; returns how many were dropped."""
        flows = sorted(self._by_id.values(), key=lambda f: f.start)
        if keep_last is not None:
            cut = flows[:max(0, len(flows) - keep_last)]
        elif before is not None:
            cut = [f for f in flows if (f.end if f.end is not None else f.start) < before]
        else:
            return 0
        if not cut:
            return 0
        gone = {id(f) for f in cut}
        self._by_id = {k: f for k, f in self._by_id.items() if id(f) not in gone}
        for key in list(self._by_nat):
            lst = [f for f in self._by_nat[key] if id(f) not in gone]
            if lst:
                self._by_nat[key] = lst
            else:
                del self._by_nat[key]
        self._dns = [t for t in self._dns if id(t[2]) not in gone]
        self._nat_addrs = {}
        for f in self._by_id.values():
            self._nat_addrs[f.nat_addr] = self._nat_addrs.get(f.nat_addr, 0) + 1
        self._n = len(self._by_id)
        return len(cut)

    # -- queries ----------------------------------------------------------------------------------
    def is_nat_address(self, addr: str) -> bool:
        """Has any container flow left through `addr` (a host's uplink address)?"""
        return addr in self._nat_addrs

    def match(self, host: str, orig_h: str, orig_p: int, proto: str, ts: float,
              resp_h: str = "", resp_p: int = 0) -> NatFlow | None:
        """The container flow an uplink record (orig_h:orig_p -> resp_h:resp_p at ts) was."""
        lst = self._by_nat.get((orig_h, orig_p, (proto or "").lower()))
        if not lst and not proto:
            for p in ("tcp", "udp"):
                lst = self._by_nat.get((orig_h, orig_p, p))
                if lst:
                    break
        if not lst:
            return None
        skew = self.skew_s
        best: NatFlow | None = None
        best_key: tuple[int, float] | None = None
        for f in lst:
            if f.start - skew > ts and not f.open_start:
                continue  # starts after the record (later ones too, unless found by a dump)
            if f.end is not None and ts > f.end + skew:
                continue
            if resp_h and f.nat_remote_addr and resp_h != f.nat_remote_addr:
                continue
            if resp_p and f.nat_remote_port and resp_p != f.nat_remote_port:
                continue
            k = (0 if f.host == host else 1, abs(ts - f.start))
            if best_key is None or k < best_key:
                best, best_key = f, k
        if best is not None:
            self.stats.matched += 1
        return best

    def resolver_flow(self, host: str, ts: float) -> NatFlow | None:
        """The one container flow to a resolver on the host in [ts - dns_window, ts + skew]
        (an upstream query the host's resolver made for it); None when none or several
        containers asked then."""
        lo = bisect.bisect_left(self._dns, (ts - self.dns_window_s, -1))
        cands: dict[str, NatFlow] = {}
        for start, _seq, f in self._dns[lo:]:
            if start > ts + self.skew_s:
                break
            if f.container_id and (f.host == host or not host):
                cands.setdefault(f.container_id, f)
        if not cands and host:
            return self.resolver_flow("", ts)
        if len(cands) == 1:
            self.stats.resolver_matched += 1
            return next(iter(cands.values()))
        if len(cands) > 1:
            self.stats.resolver_ambiguous += 1
        return None
