"""Named misuse rules beyond T1614: reverse shells, tunnels, DNS tunnelling, beaconing,
cryptomining, container escape, unexpected images, raw sockets and spoofed sources.

Why a detector of its own: an anomaly score says "different", an analyst needs "a shell whose
stdin is a TCP connection to 10.0.0.5:4444". Each rule here names its ATT&CK technique and puts
host evidence (osquery rows) and network evidence (Zeek records) of one container into one
`Candidate`, so the AlertAggregator merges them into the same per-container alert as the T1614
rule. The recognisers are pure (misuse_patterns); this class keeps only the small state some
rules need: recent connections and processes per container (to attach the other side's
evidence), connection times per (container, destination) for beaconing, DNS names per
(container, parent domain) for tunnelling, and the destinations each image is known to contact.

The pipeline calls `process`, `net`, `lifecycle` and `learn`; everything returns candidates.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import logging
import statistics
from collections import deque
from itertools import repeat
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Any, Callable, Iterable

import numpy as np

from model.codes import constant, distinct_codes, distinct_keys
from model.records import LifecycleRecord, NetRecord, ProcessRecord

from scheduler.detect.attack import techniques
from scheduler.detect.join import factorize, groups, per_unique
from scheduler.detect.candidate import Candidate, ContainerRef
from scheduler.detect import misuse_patterns as pat
from scheduler.detect.misuse_config import (
    MISUSE_RULES, RULE_BEACON, RULE_DNS_TUNNEL, RULE_ESCAPE, RULE_MINER, RULE_NEW_IMAGE,
    RULE_RAW_SOCKET, RULE_REVERSE_SHELL, RULE_SPOOFED_SOURCE, RULE_TUNNEL, MisuseConfig)

log = logging.getLogger(__name__)

__all__ = ["MisuseDetector", "MISUSE_MITRE", "MISUSE_RULES", "beacon_stats"]

#: ATT&CK mapping of each named rule (merged into alerts.MITRE).
MISUSE_MITRE: dict[str, list[dict[str, str]]] = {
    RULE_REVERSE_SHELL: techniques("T1059.004"),
    RULE_TUNNEL: techniques("T1572", "T1090"),
    RULE_DNS_TUNNEL: techniques("T1572", "T1071.004"),
    RULE_BEACON: techniques("T1071"),
    RULE_MINER: techniques("T1496"),
    RULE_ESCAPE: techniques("T1611", "T1610"),
    RULE_NEW_IMAGE: techniques("T1610"),
    RULE_RAW_SOCKET: techniques("T1599", "T1040"),
    RULE_SPOOFED_SOURCE: techniques("T1599"),
}

_SEVERITY = {RULE_REVERSE_SHELL: "high", RULE_TUNNEL: "medium", RULE_DNS_TUNNEL: "high",
             RULE_BEACON: "medium", RULE_MINER: "high", RULE_ESCAPE: "high",
             RULE_NEW_IMAGE: "low", RULE_RAW_SOCKET: "medium", RULE_SPOOFED_SOURCE: "medium"}
_TITLE = {RULE_REVERSE_SHELL: "Network-redirected shell (T1059.004)",
          RULE_TUNNEL: "Tunnel or redirector (T1572/T1090)",
          RULE_DNS_TUNNEL: "DNS tunnelling (T1572)",
          RULE_BEACON: "Beaconing (T1071)",
          RULE_MINER: "Cryptomining (T1496)",
          RULE_ESCAPE: "Container escape / runtime manipulation (T1611)",
          RULE_NEW_IMAGE: "Unexpected image (T1610)",
          RULE_RAW_SOCKET: "Raw/packet socket (T1599)",
          RULE_SPOOFED_SOURCE: "Spoofed source address (T1599)"}

RECENT_S = 120.0          # how long recent processes/connections are kept to join the sides
RECENT_MAX = 200          # per container
_TS = attrgetter("ts")     # a queued record's time
TUNNEL_CONNS = 5          # relayed connections shown per tunnel
RAW_CAPS = frozenset({"NET_RAW", "NET_ADMIN", "ALL"})
STRATUM_STREAMS = ("stratum",)
_SEEN_MAX = 100_000


def _who(c: ContainerRef) -> str:
    return c.name or c.id[:12] or f"container unknown at {c.address or '?'}"


def process_evidence(rec: ProcessRecord, **extra: Any) -> dict[str, Any]:
    ev = {"side": "host", "kind": "process", "time": round(rec.ts, 6), "pid": rec.pid,
          "ppid": rec.ppid, "name": rec.name, "path": rec.path, "cmdline": rec.cmdline}
    ev.update({k: v for k, v in extra.items() if v not in ("", None)})
    ev["summary"] = (extra.get("summary") or rec.cmdline or rec.name)[:160]
    return ev


def net_evidence(rec: NetRecord, summary: str = "", **extra: Any) -> dict[str, Any]:
    ev = {"side": "network", "kind": rec.kind, "time": round(rec.ts, 6), "uid": rec.uid,
          "source.ip": rec.orig_h, "source.port": rec.orig_p, "destination.ip": rec.resp_h,
          "destination.port": rec.resp_p, "network.transport": rec.proto}
    if rec.domain:
        ev["domain"] = rec.domain
    if rec.kind == "conn" and rec.conn_state:
        ev["conn_state"] = rec.conn_state
    ev.update({k: v for k, v in extra.items() if v not in ("", None)})
    ev["summary"] = (summary or f"{rec.kind} {rec.proto} {rec.resp_h}:{rec.resp_p}")[:160]
    return ev


# -- beaconing maths (pure) ---------------------------------------------------------------------

@dataclass(frozen=True)
class BeaconStats:
    count: int          # connections
    period: float       # seconds
    spread: float       # standard deviation of the per-beat interval
    cv: float
    missed: int         # intervals that spanned more than one beat


def beacon_stats(times: Iterable[float]) -> BeaconStats | None:
    """Period and regularity of connection start times. Each interval is divided by the number
    of beats it spans (round(interval / median)), so one missed beat does not break the series;
    intervals under half the median (a retry, a second connection of the same beat) are folded
    into their beat. None with fewer than 3 usable times."""
    ts = sorted(times)
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b - a > 0]
    if len(gaps) < 2:
        return None
    med = statistics.median(gaps)
    if med <= 0:
        return None
    per_beat, missed = [], 0
    carry = 0.0
    for g in gaps:
        g += carry
        if g < 0.5 * med:
            carry = g
            continue
        carry = 0.0
        k = max(1, round(g / med))
        missed += k > 1
        per_beat.extend([g / k] * k)
    if len(per_beat) < 2:
        return None
    mean = statistics.fmean(per_beat)
    sd = statistics.pstdev(per_beat)
    return BeaconStats(len(ts), mean, sd, sd / mean if mean else 1.0, missed)


# -- destinations -------------------------------------------------------------------------------

def _ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def destination_keys(resp_h: str, resp_p: int, domain: str, internal: bool) -> set[str]:
    """The names a destination is known by in a baseline: ip, ip:port, the domain, and for a
    peer inside the container subnets `internal:<port>` (peers change addresses on redeploy)."""
    keys = {resp_h, f"{resp_h}:{resp_p}"}
    if domain:
        keys.add(domain.lower())
    if internal:
        keys.add(f"internal:{resp_p}")
    return keys


def allow_entry_matches(entry: str, resp_h: str, resp_p: int, domain: str) -> bool:
    """One beacon_allow entry: domain (and its subdomains), IP, ip:port, *:port or CIDR."""
    e = entry.strip().lower()
    if not e:
        return False
    if e.startswith("*:"):
        return e[2:] == str(resp_p)
    if "/" in e:
        ip = _ip(resp_h)
        try:
            return ip is not None and ip in ipaddress.ip_network(e, strict=False)
        except ValueError:
            return False
    if e in (resp_h, f"{resp_h}:{resp_p}"):
        return True
    d = domain.lower()
    return bool(d) and (d == e or d.endswith("." + e))


def image_matches(pattern: str, image: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(image, pattern) or image == pattern


# -- state --------------------------------------------------------------------------------------

@dataclass
class _Series:
    times: deque
    domain: str = ""
    flagged_at: float = -1.0


@dataclass
class _DnsGroup:
    items: deque = field(default_factory=deque)       # (ts, name, qtype, encoded)


class MisuseDetector:
    """See module docstring. `baseline`: image -> destination keys the image contacted in
    training (beacon exclusions); `internal`: is an address inside the container subnets;
    `known_address`: did any container ever hold this address (spoofing)."""

    def __init__(self, config: MisuseConfig | None = None,
                 baseline: dict[str, Iterable[str]] | None = None,
                 internal: Callable[[str], bool] | None = None,
                 known_address: Callable[[str], bool] | None = None,
                 baseline_images: Iterable[str] | None = None) -> None:
        self.cfg = config or MisuseConfig()
        self.baseline: dict[str, set[str]] = {k: set(v) for k, v in (baseline or {}).items()}
        self.baseline_images = set(baseline_images or ())
        self.internal = internal or (lambda _a: False)
        self.known_address = known_address or (lambda _a: True)
        self._procs: dict[str, deque] = {}          # cid -> recent ProcessRecord
        self._conns: dict[str, deque] = {}          # cid -> recent conn NetRecord
        self._shell_remotes: dict[str, dict[tuple[str, int], ProcessRecord]] = {}
        self._tunnels: dict[str, tuple[ProcessRecord, int]] = {}   # cid -> (tool, conns shown)
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._names: dict[tuple[str, str], str] = {}    # (cid, ip) -> domain seen for it
        self._dns: dict[tuple[str, str], _DnsGroup] = {}
        self._unknown: dict[str, deque] = {}        # source address -> times
        self._seen: set[tuple] = set()
        self.learning = False
        self.learned: dict[str, set[str]] = {}

    # -- helpers --------------------------------------------------------------------------------
    def _on(self, rule: str, image: str) -> bool:
        if not self.cfg.enabled(rule):
            return False
        return not any(rule in rules and image_matches(pat_, image or "")
                       for pat_, rules in self.cfg.allow.items())

    def _once(self, key: tuple) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) > _SEEN_MAX:
            self._seen.clear()
        self._seen.add(key)
        return True

    def _cand(self, rule: str, ts: float, host: str, container: ContainerRef, what: str,
              evidence: list[dict[str, Any]], signature: str = "",
              details: dict[str, Any] | None = None) -> Candidate:
        if callable(container):      # the pipeline passes a builder: resolved only for a hit
            container = container()
        return Candidate(rule=rule, ts=ts, host=host, container=container,
                         severity=_SEVERITY[rule],
                         title=f"{_TITLE[rule]} in {_who(container)}: {what}"[:200],
                         evidence=evidence, signature=signature,
                         details={"misuse": {"rule": rule, "explanation": what,
                                             **(details or {})}})

    @staticmethod
    def _push(d: dict, key: Any, item: Any, ts: float) -> None:
        q = d.setdefault(key, deque())
        q.append(item)
        while q and (len(q) > RECENT_MAX or ts - q[0].ts > RECENT_S):
            q.popleft()

    # -- host side ------------------------------------------------------------------------------
    def process(self, cols: dict[str, str], rec: ProcessRecord,
                container: ContainerRef | Callable[[], ContainerRef]) -> list[Candidate]:
        """A container_processes / container_process_events row (`cols`) and its record;
        `container` may be a builder, called only when a rule fires."""
        if not rec.container_id:
            return []
        self._push(self._procs, rec.container_id, rec, rec.ts)
        out: list[Candidate] = []
        host, image, cid = rec.host, rec.image, rec.container_id
        cmd, name, path = rec.cmdline, rec.name, rec.path

        remote = pat.parse_remote(cols.get("stdio_remote", ""))
        if remote and pat.is_shell(name, path, cmd) and self._on(RULE_REVERSE_SHELL, image) \
                and self._once((RULE_REVERSE_SHELL, cid, rec.pid)):
            proto, addr, port = remote
            self._shell_remotes.setdefault(cid, {})[(addr, port)] = rec
            what = f"{name or pat.program(name, path, cmd)} has stdin/stdout on " \
                   f"{proto} {addr}:{port} (fds {cols.get('stdio_socket', '')})"
            ev = [process_evidence(rec, stdio_socket=cols.get("stdio_socket", ""),
                                   stdio_remote=cols.get("stdio_remote", ""),
                                   summary=f"{cmd or name} [stdio={proto} {addr}:{port}]")]
            ev += [net_evidence(c, f"conn {c.proto} {c.resp_h}:{c.resp_p} {c.conn_state}"
                                   " (the shell's connection)")
                   for c in self._conns.get(cid, ()) if (c.resp_h, c.resp_p) == (addr, port)
                   or (c.orig_h, c.orig_p) == (addr, port)]
            out.append(self._cand(RULE_REVERSE_SHELL, rec.ts, host, container, what, ev,
                                  signature=f"{addr}:{port}",
                                  details={"remote": f"{proto} {addr}:{port}"}))

        for rule, fn in ((RULE_TUNNEL, lambda: pat.tunnel_match(cmd)),
                         (RULE_MINER, lambda: pat.miner_match(name, path, cmd)),
                         (RULE_ESCAPE, lambda: pat.escape_match(name, path, cmd))):
            if not self._on(rule, image):
                continue
            why = fn()
            if why and self._once((rule, cid, rec.pid, cmd)):
                ev = [process_evidence(rec, reason=why, summary=f"{cmd or name} ({why})")]
                if rule == RULE_TUNNEL:     # the relayed connections, already seen or to come
                    self._tunnels[cid] = (rec, 0)
                    ev += [net_evidence(c, f"relayed conn {c.proto} {c.resp_h}:{c.resp_p} "
                                           f"{c.conn_state}")
                           for c in list(self._conns.get(cid, ()))[-TUNNEL_CONNS:]
                           if c.ts >= rec.ts - 1.0]
                out.append(self._cand(rule, rec.ts, host, container, why, ev))

        kinds = cols.get("raw_sockets", "")
        if kinds and self._on(RULE_RAW_SOCKET, image) \
                and self._once((RULE_RAW_SOCKET, cid, rec.pid)):
            why = f"{name or cmd} holds {kinds} socket(s): can forge source addresses or sniff"
            out.append(self._cand(RULE_RAW_SOCKET, rec.ts, host, container, why,
                                  [process_evidence(rec, raw_sockets=kinds,
                                                    summary=f"{cmd or name} [raw={kinds}]")]))
        return out

    # -- network side ---------------------------------------------------------------------------
    def net(self, stream: str, raw: dict[str, Any], rec: NetRecord,
            container: ContainerRef | Callable[[], ContainerRef]) -> list[Candidate]:
        """One attributed Zeek record (`raw`: the parsed log fields); `container` may be a
        builder, called only when a rule fires (most records fire nothing)."""
        if self.learning:
            self.learn(rec)
            return []
        cid = rec.container_id
        if not cid:
            return self._unknown_source(rec, container)
        if stream == "http" or stream == "ssl":
            # The hot path (a busy web tier logs millions of these): remember the name for the
            # beacon evidence, look for the API server, nothing else.
            d = rec.domain
            if not d:
                return []
            self._names[(cid, rec.resp_h)] = d
            if d[:10].lower() != "kubernetes" or not d.lower().startswith("kubernetes.default") \
                    or not self._on(RULE_ESCAPE, rec.image) \
                    or not self._once((RULE_ESCAPE, cid, "k8s")):
                return []
            return [self._cand(RULE_ESCAPE, rec.ts, rec.host, container,
                               f"contacts the Kubernetes API server ({d})",
                               [net_evidence(rec, f"{stream} {d}")])]
        out: list[Candidate] = []
        if stream == "conn":
            self._push(self._conns, cid, rec, rec.ts)
            out += self._shell_conn(rec, container)
            out += self._tunnel_conn(rec, container)
            out += self._beacon(rec, container)
        elif stream == "dns":
            for a in _answers(raw):
                self._names[(cid, a)] = rec.domain
            out += self._dns_tunnel(raw, rec, container)
        elif stream in STRATUM_STREAMS:
            out += self._stratum(raw, rec, container)
        return out

    def _shell_conn(self, rec: NetRecord, container: ContainerRef) -> list[Candidate]:
        """A connection whose far end is a known reverse shell's stdio remote (the network side
        of the shell rule when Zeek logs the connection after the process was seen)."""
        shells = self._shell_remotes.get(rec.container_id)
        if not shells:
            return []
        proc = shells.get((rec.resp_h, rec.resp_p)) or shells.get((rec.orig_h, rec.orig_p))
        if proc is None or not self._once((RULE_REVERSE_SHELL, "conn", rec.uid)):
            return []
        what = f"connection of the shell {proc.name} (pid {proc.pid}) to {rec.resp_h}:{rec.resp_p}"
        return [self._cand(RULE_REVERSE_SHELL, rec.ts, rec.host, container, what,
                           [net_evidence(rec, f"conn {rec.proto} {rec.resp_h}:{rec.resp_p} "
                                              f"{rec.conn_state} (the shell's connection)")],
                           signature=f"{rec.resp_h}:{rec.resp_p}"
                           if (rec.resp_h, rec.resp_p) in shells else f"{rec.orig_h}:{rec.orig_p}")]

    def _tunnel_conn(self, rec: NetRecord, container: Any) -> list[Candidate]:
        """Outbound connections of a container running a tunnel tool: the relayed traffic
        (the first TUNNEL_CONNS, merged into the tunnel alert while it is open)."""
        t = self._tunnels.get(rec.container_id)
        if t is None or t[1] >= TUNNEL_CONNS or rec.ts < t[0].ts - 1.0:
            return []
        proc, shown = t
        self._tunnels[rec.container_id] = (proc, shown + 1)
        what = f"connection of the tunnel {proc.name or 'tool'} to {rec.resp_h}:{rec.resp_p}"
        return [self._cand(RULE_TUNNEL, rec.ts, rec.host, container, what,
                           [net_evidence(rec, f"relayed conn {rec.proto} {rec.resp_h}:{rec.resp_p}"
                                              f" {rec.conn_state}")])]

    def _host_hint(self, cid: str, needles: Iterable[str]) -> list[dict[str, Any]]:
        """Recent processes of the container whose command line names the destination."""
        ns = [n for n in needles if n]
        hits = [p for p in self._procs.get(cid, ()) if any(n in p.cmdline for n in ns)]
        return [process_evidence(p) for p in hits[-3:]]

    def _beacon(self, rec: NetRecord, container: ContainerRef) -> list[Candidate]:
        cfg = self.cfg
        if rec.resp_p == 53 or not rec.resp_h or not self._on(RULE_BEACON, rec.image):
            return []
        s = self._beat(rec.container_id, rec.resp_h, rec.resp_p, rec.ts)
        if len(s.times) < cfg.beacon_min_conns:
            return []
        if s.flagged_at >= 0 and rec.ts - s.flagged_at < 300.0:
            return []
        if not cfg.beacon_cold_start and not self.baseline.get(rec.image):
            return []       # no training destinations for this image: see beacon_cold_start
        domain = self._names.get((rec.container_id, rec.resp_h), "").lower()
        if self._is_baseline(rec, domain):
            return []
        st = beacon_stats(s.times)
        if st is None or st.cv > cfg.beacon_max_cv \
                or not cfg.beacon_min_period_s <= st.period <= cfg.beacon_max_period_s \
                or st.missed > cfg.beacon_max_missed_share * (st.count - 1):
            return []
        s.flagged_at = rec.ts
        dest = f"{domain} ({rec.resp_h}:{rec.resp_p})" if domain else f"{rec.resp_h}:{rec.resp_p}"
        what = (f"{st.count} connections every {st.period:.1f} s ± {st.spread:.2f} to {dest}"
                + (f", {st.missed} missed beat(s)" if st.missed else ""))
        ev = [net_evidence(rec, what, period_s=round(st.period, 3), jitter_s=round(st.spread, 3),
                           cv=round(st.cv, 4), connections=st.count,
                           first=round(s.times[0], 6))]
        ev += self._host_hint(rec.container_id, (domain, rec.resp_h))
        return [self._cand(RULE_BEACON, rec.ts, rec.host, container, what, ev,
                           signature=f"{rec.resp_h}:{rec.resp_p}",
                           details={"period_s": round(st.period, 3), "cv": round(st.cv, 4),
                                    "connections": st.count, "destination": dest})]

    def _beat(self, cid: str, resp_h: str, resp_p: int, ts: float) -> _Series:
        """One connection time added to its destination's beacon series."""
        key = (cid, resp_h, resp_p)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(deque(maxlen=max(3, self.cfg.beacon_history)))
        s.times.append(ts)
        return s

    def _is_baseline(self, rec: NetRecord, domain: str) -> bool:
        return self._is_baseline_of(rec.image, rec.resp_h, rec.resp_p, domain)

    def _is_baseline_of(self, image: str, resp_h: str, resp_p: int, domain: str) -> bool:
        keys = destination_keys(resp_h, resp_p, domain, self.internal(resp_h))
        if keys & self.baseline.get(image, set()):
            return True
        return any(allow_entry_matches(e, resp_h, resp_p, domain)
                   for img, entries in self.cfg.beacon_allow.items()
                   if image_matches(img, image or "") for e in entries)

    def _dns_tunnel(self, raw: dict[str, Any], rec: NetRecord,
                    container: ContainerRef) -> list[Candidate]:
        cfg = self.cfg
        name = rec.domain
        if not name or not self._on(RULE_DNS_TUNNEL, rec.image):
            return []
        sub, parent = pat.split_name(name)
        if not sub:
            return []
        encoded, longest, h = pat.tunnel_label_score(name, cfg.dns_label_len, cfg.dns_entropy)
        qtype = str(raw.get("qtype_name") or "")
        g = self._dns_name(rec.container_id, parent, rec.ts, name, qtype, encoded)
        if not encoded:
            return []
        names = {n for _, n, _, e in g.items if e}
        if len(names) < cfg.dns_min_names \
                or not self._once((RULE_DNS_TUNNEL, rec.container_id, parent,
                                   int(rec.ts // max(1.0, cfg.dns_window_s)))):
            return []
        types = [q for _, _, q, _ in g.items]
        odd = sum(q in ("TXT", "NULL", "CNAME", "MX", "PRIVATE") for q in types)
        what = (f"{len(names)} distinct encoded-looking names under {parent} in "
                f"{cfg.dns_window_s:g} s (longest label {longest}, entropy {h:.2f} bits/char; "
                f"TXT/NULL/CNAME/MX share {odd / len(types):.0%})")
        ev = [net_evidence(rec, f"dns {name} {qtype} {rec.rcode}".strip(),
                           distinct_names=len(names), parent=parent,
                           odd_qtype_share=round(odd / len(types), 3))]
        ev += self._host_hint(rec.container_id, (parent,))
        return [self._cand(RULE_DNS_TUNNEL, rec.ts, rec.host, container, what, ev,
                           signature=parent, details={"parent": parent,
                                                      "distinct_names": len(names)})]

    def _dns_name(self, cid: str, parent: str, ts: float, name: str, qtype: str,
                  encoded: bool) -> _DnsGroup:
        """One query added to its (container, parent domain) group, which keeps
        `dns_window_s` of them."""
        return self._dns_names(((cid, parent, ts, name.lower(), qtype, encoded),))

    def _dns_names(self, queries: Iterable[tuple[str, str, float, str, str, bool]]
                   ) -> _DnsGroup | None:
        """Queries (container, parent, ts, name lowered, qtype, encoded) added to their groups
        in order (`_dns_name` of each, without a call per query: a dns.log's every row comes
        here); the last one's group."""
        groups, window, new = self._dns, self.cfg.dns_window_s, _DnsGroup
        g = None
        for cid, parent, t, name, q, encoded in queries:
            g = groups.get((cid, parent))
            if g is None:
                g = groups[(cid, parent)] = new()
            items = g.items
            items.append((t, name, q, encoded))
            while items and t - items[0][0] > window:
                items.popleft()
        return g

    def _dns_names_grouped(self, keys: Any, cids: Any, parents: Any, ts: Any, names: Any,
                           qtypes: Any) -> None:
        """`_dns_names` of queries given as columns in order (not encoded; `keys`: one int per
        (container, parent) group), a group at a time: the same groups, made in the same order,
        holding the same items. A group whose newest query comes last (a dns.log's order)
        takes its queries at once and drops from the left what is older than the window
        before its newest one: dropping after each query, with no earlier query newer than the
        last, drops exactly that. Otherwise its queries go one by one."""
        dns_groups, window = self._dns, self.cfg.dns_window_s
        uk, first, _ = distinct_keys(keys)
        seen = np.empty(uk.size, dtype=np.int64)      # each group's rank in first-seen order
        seen[np.argsort(first)] = np.arange(uk.size)
        for _, part in groups(seen[np.searchsorted(uk, keys)], uk.size):
            key = (cids[part[0]], parents[part[0]])
            times = ts[part].tolist()
            new = list(zip(times, names[part].tolist(), qtypes[part].tolist(), repeat(False)))
            last = times[-1]
            if last < max(times):
                self._dns_names((*key, *item) for item in new)
                continue
            g = dns_groups.get(key)
            if g is None:
                g = dns_groups[key] = _DnsGroup()
            items = g.items
            items.extend(new)
            while items and last - items[0][0] > window:
                items.popleft()

    def _stratum(self, raw: dict[str, Any], rec: NetRecord,
                 container: ContainerRef) -> list[Candidate]:
        if not self._on(RULE_MINER, rec.image):
            return []
        method = str(raw.get("method") or "")
        what = f"stratum {method or 'JSON-RPC'} to {rec.resp_h}:{rec.resp_p}"
        agent = str(raw.get("agent") or raw.get("user") or "")
        ev = [net_evidence(rec, what + (f" ({agent})" if agent else ""), method=method)]
        ev += self._host_hint(rec.container_id, (rec.resp_h, f":{rec.resp_p}"))
        return [self._cand(RULE_MINER, rec.ts, rec.host, container, what, ev)]

    def _unknown_source(self, rec: NetRecord, container: ContainerRef) -> list[Candidate]:
        """Traffic from a container-subnet address no container ever held (spoofing)."""
        addr = rec.orig_h
        if not addr or not self.internal(addr) or self.known_address(addr) \
                or not self._on(RULE_SPOOFED_SOURCE, ""):
            return []
        q = self._unknown.setdefault(addr, deque())
        q.append(rec)
        while q and rec.ts - q[0].ts > self.cfg.spoof_window_s:
            q.popleft()
        if len(q) < self.cfg.spoof_min_records:
            return []
        what = (f"{len(q)} records in {self.cfg.spoof_window_s:g} s from {addr}, an address in "
                f"a container subnet that no known container held")
        shown = list(q)[-5:] if len(q) == self.cfg.spoof_min_records else [rec]
        return [self._cand(RULE_SPOOFED_SOURCE, rec.ts, rec.host, container, what,
                           [net_evidence(r, f"{r.kind} {r.proto} from {addr} to "
                                            f"{r.resp_h}:{r.resp_p}") for r in shown])]

    # -- inventory ------------------------------------------------------------------------------
    def inventory(self, cols: dict[str, str], ts: float, host: str,
                  container: ContainerRef | Callable[[], ContainerRef]) -> list[Candidate]:
        """A container_inventory row: NET_RAW / NET_ADMIN / ALL added at create is what forging
        packets from a container needs (Docker grants NET_RAW by default; Podman 4 does not)."""
        caps = {c.strip().upper() for c in str(cols.get("cap_add") or "").split(",") if c.strip()}
        risky = sorted(caps & RAW_CAPS)
        cid, image = str(cols.get("id") or ""), str(cols.get("image") or "")
        if not risky or not cid or not self._on(RULE_RAW_SOCKET, image) \
                or not self._once((RULE_RAW_SOCKET, "caps", cid)):
            return []
        what = f"started with {', '.join(risky)} added: can open raw/packet sockets"
        ev = [{"side": "host", "kind": "inventory", "time": round(ts, 6), "cap_add": sorted(caps),
               "summary": f"config: cap_add {','.join(sorted(caps))}"}]
        return [self._cand(RULE_RAW_SOCKET, ts, host, container, what, ev)]

    # -- lifecycle ------------------------------------------------------------------------------
    def lifecycle(self, rec: LifecycleRecord) -> list[Candidate]:
        """Pull / create / start of an image: unexpected registry or image, summarised per
        host (one alert per host and suppression window, one evidence item per image)."""
        cfg = self.cfg
        if rec.action not in ("pull", "create", "start") or not rec.image \
                or not self._on(RULE_NEW_IMAGE, rec.image):
            return []
        reasons = []
        reg = pat.registry_of(rec.image)
        if cfg.allowed_registries and reg not in {r.lower() for r in cfg.allowed_registries}:
            reasons.append(f"registry {reg} is not on the allow-list")
        if cfg.known_images and not any(image_matches(p, rec.image) for p in cfg.known_images):
            reasons.append("image not in known_images")
        if cfg.flag_images_without_baseline and self.baseline_images \
                and rec.image not in self.baseline_images:
            reasons.append("image never seen in training")
        if not reasons or not self._once((RULE_NEW_IMAGE, rec.host, rec.image, rec.action)):
            return []
        what = f"{rec.action} of {rec.image}: " + "; ".join(reasons)
        ev = [{"side": "host", "kind": "lifecycle", "time": round(rec.ts, 6),
               "action": rec.action, "image": rec.image, "container_id": rec.container_id,
               "container_name": rec.name, "registry": reg, "reason": "; ".join(reasons),
               "summary": f"{rec.action} {rec.image} ({rec.name or rec.container_id[:12]}): "
                          f"{'; '.join(reasons)}"[:160]}]
        who = ContainerRef(id="", name=f"(host) {rec.host or 'host'}", image=rec.image)
        return [self._cand(RULE_NEW_IMAGE, rec.ts, rec.host, who, what, ev,
                           details={"registry": reg})]

    # -- batch forms (the batch engine's fast rows: verdicts equal to `net`/`learn` per row) ----
    def may_flag_source(self, addr: str) -> bool:
        """Could an unattributed record from `addr` act on the spoofed-source rule (or its
        memory)? False means `net` returns [] for it and keeps nothing."""
        return bool(not self.learning and addr and self.internal(addr)
                    and not self.known_address(addr) and self._on(RULE_SPOOFED_SOURCE, ""))

    @staticmethod
    def may_name_api_server(domain: str) -> bool:
        """Could an http/ssl name be the Kubernetes API server (checked by `net` per record)?"""
        return domain[:10].lower() == "kubernetes"

    def remember_names(self, cids: Any, resp_hs: Any, domains: Any, pos: Any = None,
                       names_out: list | None = None) -> None:
        """What `net` keeps of attributed http/ssl records whose name is no API server: the
        last name seen per (container, address), in row order (listed in `names_out` as
        (pos[i], key, name) instead when given, for a caller that keeps another order)."""
        keep = domains != ""
        if keep.any():
            self._learn_names(zip(zip(cids[keep].tolist(), resp_hs[keep].tolist()),
                                  domains[keep].tolist()),
                              None if names_out is None else pos[keep].tolist(), names_out)

    def _learn_names(self, pairs: Iterable[tuple[tuple[str, str], str]], places: Any,
                     names_out: list | None) -> None:
        """Keep (container, address) -> name pairs in their order, or list them in `names_out`
        with their `places` for a caller that keeps another order."""
        if names_out is None:
            self._names.update(pairs)
        else:
            names_out.extend((at, key, d) for at, (key, d) in zip(places, pairs))

    def keep_names(self, names: Iterable[tuple[tuple[str, str], str]]) -> None:
        """Learn (container, address) -> name pairs in the order given (the last one wins)."""
        self._names.update(names)

    # -- a batch of conn/dns rows at a time (the engine's Zeek batches) -------------------------
    def rows_of_interest(self, stream: str, cids: Any, images: Any, resp_hs: Any,
                         resp_ps: Any, domains: Any,
                         names_ahead: dict[tuple[str, str], set[str]] | None = None,
                         codes: dict[str, Any] | None = None) -> Any:
        """Which attributed conn/dns rows (columns of one run, in row order) `net` might raise
        a candidate on or needs whole: they take the per-record path, so each verdict has one
        implementation. The others only add to the state (`absorb`).

        conn: rows of a container with a known reverse shell or an open tunnel, and rows a
        beacon could be reported on (the rule on for the image, a destination outside the
        image's training destinations and allow-list, with a baseline or cold start on). Within
        one conn run the names `_is_baseline` reads do not change (only http/ssl/dns rows
        teach them), so each distinct destination is judged once; among other streams' rows
        (`names_ahead`: (container, address) -> names they may teach first), a destination is
        judged under its name now and under each of those, and taken when any verdict may
        report.
        dns: names whose subdomain looks encoded (the only rows `_dns_tunnel` reports on).
        `codes`: the (codes, values) the caller has of "cids", "images" or "domains" (values
        may repeat: verdicts are per value), so they are not hashed again."""
        n = len(cids)
        out = np.zeros(n, dtype=bool)
        if n == 0 or self.learning:
            return out
        known = codes or {}
        if stream == "conn":
            hot = {c for c, s in self._shell_remotes.items() if s}
            hot.update(c for c, t in self._tunnels.items() if t[1] < TUNNEL_CONNS)
            if hot:
                out |= per_unique(cids, hot.__contains__, codes=known.get("cids"))
            on = per_unique(images, lambda im: self._on(RULE_BEACON, im),
                            codes=known.get("images"))
            cand = on & (resp_ps != 53) & (resp_hs != "")
            if not self.cfg.beacon_cold_start:   # no training destinations: not reported
                cand &= per_unique(images, lambda im: bool(self.baseline.get(im)),
                                   codes=known.get("images"))
            if cand.any():
                idx = np.flatnonzero(cand)
                keys = list(zip(cids[idx].tolist(), images[idx].tolist(),
                                resp_hs[idx].tolist(), resp_ps[idx].tolist()))
                verdict: dict[tuple, bool] = {}
                for j, key in zip(idx.tolist(), keys):
                    v = verdict.get(key)
                    if v is None:
                        cid, image, resp_h, resp_p = key
                        names = {self._names.get((cid, resp_h), "").lower()}
                        if names_ahead:
                            names.update(x.lower() for x in names_ahead.get((cid, resp_h), ()))
                        v = verdict[key] = any(not self._is_baseline_of(image, resp_h, resp_p, d)
                                               for d in names)
                    out[j] |= v
        elif stream == "dns":
            cfg = self.cfg
            on = per_unique(images, lambda im: self._on(RULE_DNS_TUNNEL, im),
                            codes=known.get("images"))
            if on.any():
                out |= on & per_unique(domains, lambda d: bool(d) and pat.tunnel_label_score(
                    d, cfg.dns_label_len, cfg.dns_entropy)[0], codes=known.get("domains"))
        return out

    def absorb(self, stream: str, rows: Any, cols: Any, answers: Any = None,
               qtypes: Any = None, pos: Any = None, names_out: list | None = None) -> None:
        """What `net` keeps from attributed conn/dns rows that `rows_of_interest` let through
        (nothing to report on them), for rows `rows` of NetColumns `cols`, in row order:

        conn: each container's recent connections (`_push`, replayed on the times so only the
        survivors are made records) and every destination's beacon times;
        dns: the names answers gave addresses (`_names`; listed in `names_out` as (pos[i], key,
        name) instead when given, for a caller that keeps another order) and each (container,
        parent) group's recent names for the tunnelling rule."""
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size or self.learning:
            return
        cids, ts = cols.container_id[rows], cols.ts[rows]
        if stream == "conn":
            # each container's queue: what `_push` row by row would pop and keep; the kept rows
            # of every container become records in one column pass (a pass per container
            # cost more than the records)
            plans = [(self._push_plan(self._conns, cid, ts[grp].tolist()), grp)
                     for cid, grp in _groups_in_order(cols.coded("container_id", rows))]
            kept = [grp[start:] for (_, _, start), grp in plans if start < grp.size]
            recs = cols.records(rows[np.concatenate(kept)]) if kept else []
            at = 0
            for (q, pops, start), grp in plans:
                for _ in range(pops):
                    q.popleft()
                if start < grp.size:
                    q.extend(recs[at:at + grp.size - start])
                    at += grp.size - start
            resp_hs, resp_ps = cols.resp_h[rows], cols.resp_p[rows]
            on = per_unique(None, lambda im: self._on(RULE_BEACON, im),
                            codes=cols.coded("image", rows)) & (resp_ps != 53) & (resp_hs != "")
            if on.any():
                idx = np.flatnonzero(on)
                # `_beat` per row, a destination's times at once (each series is its own
                # deque: only the order within one destination matters)
                beats: dict[tuple[str, str, int], list[float]] = {}
                for key, t in zip(zip(cids[idx].tolist(), resp_hs[idx].tolist(),
                                      resp_ps[idx].tolist()), ts[idx].tolist()):
                    times = beats.get(key)
                    if times is None:
                        beats[key] = [t]
                    else:
                        times.append(t)
                for (cid, resp_h, resp_p), times in beats.items():
                    self._beat(cid, resp_h, resp_p, times[0]).times.extend(times[1:])
        elif stream == "dns":
            domains = cols.domain[rows]
            if answers is not None:
                ans = answers[rows]
                has = ans != ""
                places = pos[has].tolist() if names_out is not None else repeat(0)
                named = [(at, (cid, x), d) for cid, a, d, at in
                         zip(cids[has].tolist(), ans[has].tolist(), domains[has].tolist(), places)
                         for x in answer_addresses(a)]
                self._learn_names(((key, d) for _, key, d in named),
                                  [at for at, _, _ in named], names_out)
            on = per_unique(None, lambda im: self._on(RULE_DNS_TUNNEL, im),
                            codes=cols.coded("image", rows)) & (domains != "")
            if not on.any():
                return
            # per distinct name: (subdomain, parent, the name lowered); the rows with a
            # subdomain join their (container, parent) groups
            dc, dv = cols.coded("domain", rows)
            split = [(*pat.split_name(d), d.lower()) for d in dv.tolist()]
            has_sub = np.fromiter((bool(x[0]) for x in split), bool, len(split))
            idx = np.flatnonzero(on & has_sub[dc])
            if not idx.size:
                return
            parent, lowered = np.empty(len(split), dtype=object), np.empty(len(split), dtype=object)
            parent[:], lowered[:] = [x[1] for x in split], [x[2] for x in split]
            name_code = dc[idx]
            qt = (np.array([str(q or "") for q in qtypes[rows][idx].tolist()], dtype=object)
                  if qtypes is not None else constant(idx.size, ""))
            ccode, _ = distinct_codes(*cols.coded("container_id", rows[idx]))
            pcode, n_parents = distinct_codes(name_code, parent)
            self._dns_names_grouped(ccode * n_parents + pcode, cids[idx], parent[name_code],
                                    ts[idx], lowered[name_code], qt)

    @staticmethod
    def _push_plan(d: dict, key: Any, times: list[float]) -> tuple[deque, int, int]:
        """What `_push` of len(times) new items in order leaves in queue `d[key]`: (the queue,
        how many old items to pop from its left, the index of the first new item kept). The
        queue keeps a suffix of old + new: `_push` only ever pops from the left, so replaying
        its rule on the times is enough, and only the items that stay need making."""
        q = d.setdefault(key, deque())
        seq = list(map(_TS, q))
        n_old = len(seq)
        seq += times
        head = 0
        for j in range(n_old, len(seq)):
            # `_push`'s pops for item j: first down to RECENT_MAX items (head at least
            # j + 1 - RECENT_MAX), then while the head is older than RECENT_S before item j;
            # item j itself is never (t - t > RECENT_S is false, NaN included)
            if head < j + 1 - RECENT_MAX:
                head = j + 1 - RECENT_MAX
            t = seq[j]
            while t - seq[head] > RECENT_S:
                head += 1
        return q, min(head, n_old), max(0, head - n_old)

    def learn_many(self, kind: str, cids: Any, images: Any, resp_hs: Any, resp_ps: Any,
                   domains: Any) -> None:
        """`learn` for many records of one kind, in row order. Within one kind the names a
        conn reads are fixed (only http/ssl learn them), so each distinct destination is
        judged once."""
        ok = (cids != "") & (images != "") & (resp_hs != "")
        if not ok.any():
            return
        cids, images, resp_hs = cids[ok].tolist(), images[ok].tolist(), resp_hs[ok].tolist()
        resp_ps, domains = resp_ps[ok].tolist(), domains[ok].tolist()
        named = kind in ("http", "ssl")
        if named:
            self._names.update((k, d) for k, d in zip(zip(cids, resp_hs), domains) if d)
        for cid, image, resp_h, resp_p, domain in set(zip(cids, images, resp_hs, resp_ps,
                                                          domains)):
            d = self._names.get((cid, resp_h), "").lower() if kind == "conn" else ""
            learned = self.learned.setdefault(image, set())
            learned.update(destination_keys(resp_h, resp_p, d, self.internal(resp_h)))
            if named and domain:
                learned.add(domain.lower())

    # -- training -------------------------------------------------------------------------------
    def learn(self, rec: NetRecord) -> None:
        """Remember a destination an image contacts in benign training data."""
        if not rec.container_id or not rec.image or not rec.resp_h:
            return
        if rec.kind in ("http", "ssl") and rec.domain:
            self._names[(rec.container_id, rec.resp_h)] = rec.domain
        domain = self._names.get((rec.container_id, rec.resp_h), "").lower()
        self.learned.setdefault(rec.image, set()).update(
            destination_keys(rec.resp_h, rec.resp_p, domain if rec.kind == "conn" else "",
                             self.internal(rec.resp_h)))
        if rec.kind in ("http", "ssl") and rec.domain:
            self.learned[rec.image].add(rec.domain.lower())

    def export_baseline(self) -> dict[str, list[str]]:
        return {img: sorted(keys) for img, keys in sorted(self.learned.items())}

    # -- housekeeping ---------------------------------------------------------------------------
    def prune(self, now: float) -> None:
        horizon = max(3600.0, self.cfg.beacon_max_period_s * 2)
        for k in [k for k, s in self._series.items() if s.times and now - s.times[-1] > horizon]:
            del self._series[k]
        for k in [k for k, g in self._dns.items()
                  if not g.items or now - g.items[-1][0] > self.cfg.dns_window_s]:
            del self._dns[k]
        for d in (self._procs, self._conns):
            for k in [k for k, q in d.items() if not q or now - q[-1].ts > RECENT_S]:
                del d[k]

    def dump_state(self) -> dict[str, Any]:
        return {"series": [[list(k), list(s.times), s.flagged_at]
                           for k, s in self._series.items()],
                "dns": [[list(k), [list(i) for i in g.items]] for k, g in self._dns.items()]}

    def load_state(self, st: dict[str, Any]) -> None:
        n = max(3, self.cfg.beacon_history)
        self._series = {(k[0], k[1], int(k[2])): _Series(deque(t, maxlen=n), flagged_at=f)
                        for k, t, f in st.get("series", [])}
        self._dns = {tuple(k): _DnsGroup(deque(tuple(i) for i in items))
                     for k, items in st.get("dns", [])}


def _answers(raw: dict[str, Any]) -> list[str]:
    a = raw.get("answers")
    if isinstance(a, str):
        return list(answer_addresses(a))
    return [str(x) for x in (a or []) if _ip(str(x))]


@lru_cache(maxsize=16384)
def answer_addresses(text: str) -> list[str]:
    """The addresses among a DNS answers field as one string (Zeek's set separator ","),
    memoised: a resolver gives the same answer to every container that asks (callers do not
    modify the list)."""
    return [x for x in text.split(",") if _ip(x)]


def _groups_in_order(coded: tuple[Any, Any]) -> list[tuple[Any, Any]]:
    """(value, row indices in row order) per distinct value of a (codes, values) column
    (`NetColumns.coded`; values may repeat: equal ones are one group)."""
    codes, values = coded
    canon, uniq = factorize(values)
    return [(uniq[g], rows) for g, rows in groups(canon[codes], len(uniq))]
