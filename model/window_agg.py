"""A network feature window as running counts: what a window needs from its Zeek records, in
bounded memory, so an open window never holds its records.

Why: open windows used to keep every NetRecord (~650 B each) until they closed, and the features
were computed from those lists at close. Memory then grew with the record rate (452 MiB at 10k
lines/s) and the close was half of the Zeek path's CPU. `NetWindowAgg` keeps, per window:

* counts and sums (conns, failed conns, DNS queries and answers, NXDOMAIN, HTTP requests, geo
  contacts, public conns, bytes, the DNS label entropy sum);
* the distinct remote addresses, remote ports and domains, each a set bounded at
  `DISTINCT_CAP` values. Past the cap a set stops growing and its feature SATURATES at the cap:
  every distinct_* feature is min(true distinct count, DISTINCT_CAP), here and in
  `model.features.build_windows` alike (training and scoring see the same feature);
* a bounded evidence sample (`NetSample`): the few rows each of the anomaly evidence
  selections (`scheduler.detect.rules.window_samples`) could pick, so an alert shows the same
  records as when the window held them all;
* the first image and host seen and the first/last record time (the window's container span).

Rows come one NetRecord at a time (`add`) or as many rows of a `model.records.NetColumns` at once
(`add_columns`, numpy per batch: one pass per column, the string predicates evaluated once per
distinct value). Both give the features `build_windows` computes from the same records, exactly:
the entropy sum is accumulated in the order rows are added, as bincount summed a record list.

The per-record predicates (`label_entropy`, `leaves_rfc1918`, `domain_of`,
`FAILED_CONN_STATES`) live here, the leaf, and `model.features` re-exports them.
"""
from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from model.codes import distinct_codes, distinct_keys, factorize, nonempty, per_code
from model.records import NET_FIELDS, NetColumns, NetRecord

#: Values kept per distinct set of one window; the distinct_* features saturate here.
DISTINCT_CAP = 4096
#: Rows kept per evidence selection (scheduler.detect.rules.SAMPLES_PER_SIDE is the same 5).
SAMPLE_K = 5

#: The network features, in model.features.FEATURE_NAMES order.
NET_FEATURES: tuple[str, ...] = (
    "outbound_conns", "failed_conns", "distinct_remote_addrs", "distinct_remote_ports",
    "distinct_domains", "dns_queries", "dns_label_entropy_mean", "nxdomain_share",
    "http_requests", "geo_service_contacts", "bytes_out", "bytes_in", "public_conn_share",
)

#: Zeek conn_state values meaning the connection attempt did not get an answer or was refused.
FAILED_CONN_STATES = frozenset({"REJ", "S0", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"})
#: Record kinds whose `domain` counts for distinct_domains.
DOMAIN_KINDS = frozenset({"dns", "http", "ssl", "geo"})
#: Record kinds an evidence selection may keep (as may any geo contact): `NetSample`'s rows.
SAMPLED_KINDS = frozenset({"conn", "dns"})

_RFC1918 = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
)


# --------------------------------------------------------------------------- per-value predicates

@lru_cache(maxsize=65536)
def label_entropy(name: str) -> float:
    """Shannon entropy (bits per character) of the leftmost DNS label.

    The leftmost label is where DGA / tunnelling puts its random part; service names like `db` or
    `api` stay low (≤ 2 bits), random 16+ character labels reach 3.5-4.5 bits.
    """
    label = name.strip(".").split(".", 1)[0].lower()
    if not label:
        return 0.0
    n = len(label)
    return -sum((c / n) * math.log2(c / n) for c in Counter(label).values())


@lru_cache(maxsize=65536)
def leaves_rfc1918(addr: str) -> bool:
    """True when a destination lies outside private space (RFC 1918, loopback, link-local, ULA)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 4:
        return not (any(ip in net for net in _RFC1918) or ip.is_loopback or ip.is_link_local
                    or ip.is_unspecified or ip.is_multicast)
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_unspecified)


@lru_cache(maxsize=65536)
def domain_of(value: str) -> str:
    """A domain name for distinct counting, or "" for IP literals / empty (Host: 10.0.0.3:8080)."""
    v = value.strip().lower().rstrip(".")
    if not v:
        return ""
    host = v
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        return host


def _per_value(values: np.ndarray, fn: Callable[[Any], Any], dtype: Any) -> np.ndarray:
    """fn applied once per distinct value of an object column, spread back to the rows."""
    if values.size == 0:
        return np.zeros(0, dtype=dtype)
    return per_code(factorize(values), fn, dtype)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of a column (first-appearance order)."""
    return factorize(values)[1] if values.size else values


def _is(values: np.ndarray, options: Iterable[str]) -> np.ndarray:
    opts = frozenset(options)
    return _per_value(values, lambda v: v in opts, bool)


# --------------------------------------------------------------------------- evidence sample

#: The evidence selections of rules.window_samples: name -> keyed (first row per key) or not.
SELECTIONS: tuple[tuple[str, bool], ...] = (
    ("failed", False),      # conns in a failed state
    ("ports", True),        # first conn per (resp_p, proto)
    ("addrs", True),        # first conn per resp_h
    ("geo", False),         # rows with a geo_service
    ("nxdomain", False),    # dns rows answered NXDOMAIN
    ("dns_domains", True),  # first dns row per query
    ("conns", False),       # conns
)


class NetSample:
    """Per selection, the SAMPLE_K rows that come first in (time, arrival) order (for a keyed
    selection: the first row of each of the SAMPLE_K keys that appeared first).

    Why this is enough: every selection of rules.window_samples takes, from the window's rows,
    the first SAMPLE_K by time of a filtered list (or of the first row per key). The union kept
    here holds those rows for every selection, and any other row of the union comes later than
    them, so running the same selection on the union picks the same rows, whatever order the
    rows arrived in (a key dropped from the top K can only return with an earlier row)."""

    __slots__ = ("sel", "records")

    def __init__(self) -> None:
        # name -> {key: (ts, seq)}, a selection's entry made by its first row (most windows
        # never see most selections); records: seq -> the row some selection holds, a NetRecord
        # or, from the batch engine, the tuple of its NET_FIELDS values: made a NetRecord only
        # when read (`rows`), since most windows' samples are never read (a conn.log keeps ~a
        # quarter of its rows in samples, and building NetRecords for them was ~10% of its time)
        self.sel: dict[str, dict[Any, tuple[float, int]]] = {}
        self.records: dict[int, NetRecord | tuple] = {}

    def _room(self, name: str, key: Any, ts: float, seq: int) -> bool:
        """Would (key, ts, seq) enter selection `name`?"""
        d = self.sel.get(name)
        if d is None:
            return True
        old = d.get(key)
        if old is not None:
            return (ts, seq) < old
        return len(d) < SAMPLE_K or (ts, seq) < max(d.values())

    def _put(self, name: str, key: Any, ts: float, seq: int, rec: NetRecord) -> None:
        d = self.sel.setdefault(name, {})
        d[key] = (ts, seq)
        self.records[seq] = rec
        if len(d) > SAMPLE_K:
            drop = max(d, key=d.__getitem__)
            del d[drop]
        self._gc()

    def _gc(self) -> None:
        if len(self.records) > SAMPLE_K * len(SELECTIONS):
            live = {s for d in self.sel.values() for _, s in d.values()}
            for s in [s for s in self.records if s not in live]:
                del self.records[s]

    def take_first(self, name: str, keys: Sequence[Any], ts: Sequence[float],
                   seqs: Sequence[int], records: Iterable[NetRecord | tuple]) -> None:
        """A selection the sample does not hold yet takes these rows (as columns: key, time,
        seq, record) whole: they must be its first SAMPLE_K at most, distinct keys in offer
        order, which is what offering them one by one would keep."""
        self.sel[name] = dict(zip(keys, zip(ts, seqs)))
        self.records.update(zip(seqs, records))
        self._gc()

    def offer(self, name: str, key: Any, ts: float, seq: int, make: Callable[[], NetRecord]) -> None:
        if self._room(name, key, ts, seq):
            self._put(name, key, ts, seq, make())

    def rows(self) -> list[NetRecord]:
        """The kept rows in (time, arrival) order: what window_samples is handed."""
        live = sorted({(ts, s) for d in self.sel.values() for ts, s in d.values()})
        out = []
        for _, s in live:
            rec = self.records[s]
            if type(rec) is tuple:
                rec = self.records[s] = NetRecord(*rec)
            out.append(rec)
        return out

    # ------------------------------------------------------------------ state (daemon restart)
    def to_json(self) -> dict[str, Any]:
        live = {s for d in self.sel.values() for _, s in d.values()}
        return {"sel": {n: [[list(k) if isinstance(k, tuple) else k, ts, s]
                             for k, (ts, s) in d.items()] for n, d in self.sel.items() if d},
                "records": {str(s): _values(self.records[s]) for s in sorted(live)}}

    @classmethod
    def from_json(cls, st: dict[str, Any]) -> "NetSample":
        out = cls()
        for n, items in st.get("sel", {}).items():
            out.sel[n] = {(tuple(k) if isinstance(k, list) else k): (float(ts), int(s))
                          for k, ts, s in items}
        out.records = {int(s): NetRecord(**dict(zip(NET_FIELDS, v)))
                       for s, v in st.get("records", {}).items()}
        return out


def _values(rec: NetRecord | tuple) -> list[Any]:
    """A kept row's NET_FIELDS values, in order (a tuple is those values already)."""
    return list(rec) if type(rec) is tuple else [getattr(rec, f) for f in NET_FIELDS]


# --------------------------------------------------------------------------- the accumulator

_COUNTS = ("conns", "failed", "public", "dns", "answered", "nx", "http", "geo",
           "bytes_out", "bytes_in")


class NetWindowAgg:
    """One window's network rows as counts, bounded distinct sets and a bounded sample (see the
    module docstring). `sample=False` for builders that need only the features."""

    __slots__ = ("n", "conns", "failed", "public", "dns", "answered", "nx", "http", "geo",
                 "bytes_out", "bytes_in", "ent_sum", "addrs", "ports", "domains", "t_min",
                 "t_max", "image", "host", "sampling", "sample")

    def __init__(self, sample: bool = True) -> None:
        self.n = 0                       # rows added (also the arrival number of the next row)
        self.conns = self.failed = self.public = self.dns = self.answered = self.nx = 0
        self.http = self.geo = self.bytes_out = self.bytes_in = 0
        self.ent_sum = 0.0
        self.addrs: set[str] = set()
        self.ports: set[int] = set()
        self.domains: set[str] = set()
        self.t_min, self.t_max = math.inf, -math.inf
        self.image = self.host = ""      # the first non-empty seen
        # the sample is made by the first row it may keep (`sample_for_rows`): most windows of
        # an http.log never get one (their rows are none of the selections), and a NetSample
        # per window was ~3 % of the engine there
        self.sampling = sample
        self.sample: NetSample | None = None

    def __len__(self) -> int:
        return self.n

    def sample_for_rows(self) -> "NetSample | None":
        """The sample a row is offered to, made on first use (None: this one keeps none)."""
        s = self.sample
        if s is None and self.sampling:
            s = self.sample = NetSample()
        return s

    # ------------------------------------------------------------------ one record
    def add(self, r: NetRecord) -> None:
        """One record (the row-by-row path)."""
        seq = self.n
        self.n += 1
        ts = r.ts
        if ts < self.t_min:
            self.t_min = ts
        if ts > self.t_max:
            self.t_max = ts
        if not self.image and r.image:
            self.image = r.image
        if not self.host and r.host:
            self.host = r.host
        kind = r.kind
        geo = bool(r.geo_service)
        if geo:
            self.geo += 1
        if kind == "conn":
            self.conns += 1
            failed = r.conn_state in FAILED_CONN_STATES
            self.failed += failed
            self.public += leaves_rfc1918(r.resp_h)
            self.bytes_out += int(r.bytes_out or 0)
            self.bytes_in += int(r.bytes_in or 0)
            if r.resp_h:
                _add_capped(self.addrs, (r.resp_h,))
            if r.resp_p:
                _add_capped(self.ports, (r.resp_p,))
        elif kind == "dns":
            self.dns += 1
            self.ent_sum += label_entropy(r.domain)
            if r.rcode:
                self.answered += 1
                self.nx += r.rcode.upper() == "NXDOMAIN"
        elif kind == "http":
            self.http += 1
        if kind in DOMAIN_KINDS:
            d = domain_of(r.domain)
            if d:
                _add_capped(self.domains, (d,))
        if not self.sampling or not (geo or kind in SAMPLED_KINDS):
            return
        s = self.sample_for_rows()
        make = lambda: r  # noqa: E731
        if kind == "conn":
            if failed:
                s.offer("failed", seq, ts, seq, make)
            s.offer("ports", (r.resp_p, r.proto), ts, seq, make)
            s.offer("addrs", r.resp_h, ts, seq, make)
            s.offer("conns", seq, ts, seq, make)
        elif kind == "dns":
            if r.rcode == "NXDOMAIN":
                s.offer("nxdomain", seq, ts, seq, make)
            s.offer("dns_domains", r.domain, ts, seq, make)
        if geo:
            s.offer("geo", seq, ts, seq, make)

    # ------------------------------------------------------------------ many rows at once
    def add_columns(self, cols: NetColumns, idx: np.ndarray | None = None) -> None:
        """Rows `idx` (all when None) of a NetColumns, in that order (`add_groups` for one)."""
        if idx is None:
            idx = np.arange(len(cols))
        add_groups(cols, ((self, idx),))

    # ------------------------------------------------------------------ features
    def features(self) -> list[float]:
        """The NET_FEATURES values, as build_windows computes them (`features_of`)."""
        return features_of([self])[0].tolist()

    def sample_rows(self) -> list[NetRecord]:
        """The evidence sample's rows, time order (empty without a sample)."""
        return self.sample.rows() if self.sample is not None else []

    # ------------------------------------------------------------------ state (compact JSON)
    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "c": [getattr(self, k) for k in _COUNTS], "e": self.ent_sum,
                "addrs": sorted(self.addrs), "ports": sorted(self.ports),
                "domains": sorted(self.domains),
                "t": [self.t_min, self.t_max] if self.n else [], "image": self.image,
                "host": self.host,
                "sample": (self.sample or NetSample()).to_json() if self.sampling else None}

    @classmethod
    def from_json(cls, st: dict[str, Any]) -> "NetWindowAgg":
        out = cls(sample=False)
        out.n = int(st["n"])
        for k, v in zip(_COUNTS, st["c"]):
            setattr(out, k, int(v))
        out.ent_sum = float(st["e"])
        out.addrs, out.ports = set(st["addrs"]), {int(p) for p in st["ports"]}
        out.domains = set(st["domains"])
        if st.get("t"):
            out.t_min, out.t_max = float(st["t"][0]), float(st["t"][1])
        out.image, out.host = st.get("image", ""), st.get("host", "")
        if st.get("sample") is not None:
            out.sampling = True
            out.sample = NetSample.from_json(st["sample"])
        return out

    @classmethod
    def of_records(cls, records: Iterable[NetRecord], sample: bool = True) -> "NetWindowAgg":
        out = cls(sample=sample)
        for r in records:
            out.add(r)
        return out


# --------------------------------------------------------------------------- many windows at once

#: A window's counters (`_COUNTS`, in that order) and its entropy sum, read at once.
_FEATURE_COUNTS = attrgetter(*_COUNTS, "ent_sum")


def features_of(aggs: Sequence[NetWindowAgg]) -> np.ndarray:
    """The NET_FEATURES rows of many windows, (len(aggs), 13) float64 (`feature_matrix`). Read a
    column at a time in C (`attrgetter`, `map(len)`): a Python call per window was a third of a
    flush's feature building."""
    n = len(aggs)
    raw = np.fromiter(chain.from_iterable(map(_FEATURE_COUNTS, aggs)), np.float64,
                      n * (len(_COUNTS) + 1)).reshape(n, len(_COUNTS) + 1)

    def size(name: str) -> np.ndarray:
        return np.fromiter(map(len, map(attrgetter(name), aggs)), np.float64, n)

    return feature_matrix(raw, size("addrs"), size("ports"), size("domains"))


def feature_matrix(raw: np.ndarray, addrs: np.ndarray, ports: np.ndarray,
                   domains: np.ndarray) -> np.ndarray:
    """The one definition of the network features: NET_FEATURES rows, (n, 13) float64, from the
    windows' counters (`raw`: `_COUNTS` then the entropy sum, a row each) and the sizes of their
    distinct sets. Counts as floats, the sizes, and three ratios (0 where the count they divide
    by is 0)."""
    n = raw.shape[0]
    (conns, failed, public, dns, answered, nx, http, geo, bytes_out, bytes_in,
     ent_sum) = raw.T

    def share(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        if not num.any():           # an http log's windows: no DNS, no conn (0/0 is 0 too)
            return np.zeros(n)
        return np.divide(num, den, out=np.zeros(n), where=den != 0)

    return np.stack([conns, failed, addrs, ports, domains, dns,
                     share(ent_sum, dns), share(nx, answered), http, geo, bytes_out, bytes_in,
                     share(public, conns)], axis=1)


def add_groups(cols: NetColumns, groups: Iterable[tuple[NetWindowAgg, np.ndarray]]) -> None:
    """Add rows of one NetColumns to many windows: each (window, row indices) in the given
    order, with the effect of `add` on those records one by one.

    Why: a batch of a few thousand rows of a few containers falls into many (container, window)
    groups of a few dozen rows; counting each group with its own pandas calls cost ~1 ms a group
    (71% of the Zeek path). Here every text column is factorized once for all the groups'
    rows, each string predicate runs once per distinct value, the counts of every group are one
    `np.add.reduceat` over the rows laid out group after group, and the distinct sets come from
    one `np.unique` of (group, value code) pairs (`_GroupStats`); what is left per group is a
    few scalar additions. The same window may appear in several groups (they are applied in
    order)."""
    groups = list(groups)
    if not groups:
        return
    # the windows and their rows as two sequences, taken apart in C (a few dozen rows a group:
    # a Python step per group here was a tenth of the call)
    aggs, rs = zip(*groups)
    rs = _row_arrays(rs)
    sizes = np.fromiter(map(len, rs), np.int64, len(rs))
    if not sizes.all():
        keep = np.flatnonzero(sizes).tolist()
        if not keep:
            return
        aggs, rs, sizes = [aggs[i] for i in keep], [rs[i] for i in keep], sizes[keep]
    rows = (rs[0] if len(rs) == 1 else np.concatenate(rs)).astype(np.int64, copy=False)
    st = _GroupStats(cols, rows, sizes,
                     addrs=any(len(agg.addrs) < DISTINCT_CAP for agg in aggs),
                     ports=any(len(agg.ports) < DISTINCT_CAP for agg in aggs),
                     domains=any(len(agg.domains) < DISTINCT_CAP for agg in aggs),
                     image=any(not agg.image for agg in aggs),
                     host=any(not agg.host for agg in aggs))
    counts = st.counts.tolist() if st.counts is not None else []
    names, j_dns, ent, dbounds = st.names, st.j_dns, st.ent, st.dbounds
    distinct = [(name, new) for name, new in st.distinct.items() if new is not None]
    t_min, t_max, image, host = st.t_min.tolist(), st.t_max.tolist(), st.image, st.host
    sampled = st.sampled.tolist()
    sampling: list[tuple[int, NetSample, int]] = []       # (group, sample, seq of its first row)
    sizes_l = sizes.tolist()
    for g, agg in enumerate(aggs):
        seq0 = agg.n
        agg.n = seq0 + sizes_l[g]
        # min()/max() as comparisons (the same result, NaN included): a builtin call each
        t = t_min[g]
        if t < agg.t_min:
            agg.t_min = t
        t = t_max[g]
        if t > agg.t_max:
            agg.t_max = t
        if not agg.image and image is not None and image[g]:
            agg.image = image[g]
        if not agg.host and host is not None and host[g]:
            agg.host = host[g]
        if counts:
            c = counts[g]
            for name, v in zip(names, c):
                if v:
                    setattr(agg, name, getattr(agg, name) + v)
            if j_dns >= 0 and c[j_dns]:
                s = agg.ent_sum        # in arrival order: the float of adding records one by one
                for e in ent[dbounds[g]:dbounds[g + 1]]:
                    s += e
                agg.ent_sum = s
        for name, (values, bounds) in distinct:
            have = getattr(agg, name)
            lo, hi = bounds[g], bounds[g + 1]
            if lo == hi or len(have) >= DISTINCT_CAP:
                continue
            if len(have) + hi - lo <= DISTINCT_CAP:
                have.update(values[lo:hi])         # the cap cannot be reached: order is moot
            else:
                _add_capped(have, values[lo:hi])
        if sampled[g] and agg.sampling:
            sampling.append((g, agg.sample_for_rows(), seq0))
    if sampling:
        _sample_groups(cols, st.rows, st.gid, st.starts.tolist(), st.ts, sampling,
                       {"failed": st.failed, "geo": st.geo, "nxdomain": st.nx,
                        "conns": st.conn}, st.conn, st.dns)


def _row_arrays(rs: Sequence[Any]) -> list[np.ndarray]:
    return [r if type(r) is np.ndarray and r.ndim == 1
            else np.asarray(r, dtype=np.int64).reshape(-1) for r in rs]


class _GroupStats:
    """What each of many groups of rows of one NetColumns adds to a window, for all groups at
    once: the rows laid out group after group (`rows`, `gid`, `starts`), the counters the rows
    touch (`names`, `counts`: a row per group), the DNS rows' label entropies in arrival order
    (`ent`, group g's are ent[dbounds[g]:dbounds[g+1]]), the distinct values per set
    (`distinct`: name -> (values, bounds) or None, `_group_distinct`), each group's first and
    last time, first non-empty image and host, and whether an evidence sample may keep one of
    its rows (`sampled`). `add_groups` applies them to accumulators; `new_windows` turns them
    into features. The keyword flags leave out what no window of the call needs."""

    __slots__ = ("rows", "gid", "starts", "ts", "conn", "dns", "geo", "failed", "nx", "names",
                 "counts", "j_dns", "ent", "dbounds", "distinct", "t_min", "t_max", "image",
                 "host", "sampled")

    def __init__(self, cols: NetColumns, rows: np.ndarray, sizes: np.ndarray, *,
                 addrs: bool, ports: bool, domains: bool, image: bool, host: bool) -> None:
        ends = np.cumsum(sizes)
        starts = self.starts = ends - sizes
        self.rows = rows
        m, ng = int(rows.size), len(sizes)
        gid = self.gid = np.repeat(np.arange(ng, dtype=np.int64), sizes)
        ts = self.ts = np.asarray(cols.ts, dtype=float)[rows]
        kcode, kinds = cols.coded("kind", rows)
        conn, dns = (kinds == "conn")[kcode], (kinds == "dns")[kcode]
        http = (kinds == "http")[kcode]
        geo = per_code(cols.coded("geo_service", rows), bool, bool)
        no = np.zeros(m, dtype=bool)
        failed = public = answered = nxu = nx = no
        bytes_out = bytes_in = np.zeros(m, dtype=np.int64)
        found: dict[str, Any] = {"addrs": None, "ports": None, "domains": None}
        if conn.any():
            failed = conn & _is(cols.conn_state[rows], FAILED_CONN_STATES)
            hcode, huniq = cols.coded("resp_h", rows)
            public = conn & np.fromiter((leaves_rfc1918(u) for u in huniq), bool,
                                        huniq.size)[hcode]
            bytes_out = np.where(conn, np.asarray(cols.bytes_out[rows], dtype=np.int64), 0)
            bytes_in = np.where(conn, np.asarray(cols.bytes_in[rows], dtype=np.int64), 0)
            if addrs:
                vcode, vals = _by_value(hcode, huniq)
                found["addrs"] = _group_distinct(gid, vcode, conn & (vals != "")[vcode], ng,
                                                 vals.size, vals)
            if ports:
                port = np.asarray(cols.resp_p[rows], dtype=np.int64)
                ok = conn & (port != 0)
                if ok.any():
                    lo = int(port[ok].min())
                    found["ports"] = _group_distinct(gid, port - lo, ok, ng,
                                                     int(port[ok].max()) - lo + 1, None,
                                                     ordered=True, offset=lo)
        d = np.flatnonzero(dns)
        self.ent: list[float] = []
        self.dbounds: list[int] | None = None
        if d.size:
            self.ent = per_code(cols.coded("domain", rows[d]), label_entropy, float).tolist()
            self.dbounds = np.searchsorted(gid[d], np.arange(ng + 1)).tolist()
            rcode, runiq = cols.coded("rcode", rows[d])
            answered, nxu, nx = no.copy(), no.copy(), no.copy()
            answered[d] = np.fromiter((bool(v) for v in runiq), bool, runiq.size)[rcode]
            nxu[d] = np.fromiter((bool(v) and v.upper() == "NXDOMAIN" for v in runiq), bool,
                                 runiq.size)[rcode]
            nx[d] = np.fromiter((v == "NXDOMAIN" for v in runiq), bool, runiq.size)[rcode]
        if domains:
            dk = np.fromiter((k in DOMAIN_KINDS for k in kinds), bool, kinds.size)[kcode]
            if dk.any():
                dcode, duniq = cols.coded("domain", rows)
                dom = np.empty(duniq.size, dtype=object)
                dom[:] = [domain_of(x) for x in duniq]
                vcode, vals = _by_value(dcode, dom)     # "A.example" and "a.example": one
                found["domains"] = _group_distinct(gid, vcode, dk & (vals != "")[vcode], ng,
                                                   vals.size, vals)
        self.distinct = found
        # only the counters some row of the call adds to (an http batch: one of ten); the
        # others would add 0 to every window
        active = [(name, col) for name, col in zip(_COUNTS, (conn, failed, public, dns,
                                                             answered, nxu, http, geo,
                                                             bytes_out, bytes_in))
                  if col is not no and col.any()]
        self.counts = np.add.reduceat(np.stack([col for _, col in active], axis=1)
                                      .astype(np.int64), starts, axis=0) if active else None
        self.names = [name for name, _ in active]
        self.j_dns = self.names.index("dns") if "dns" in self.names else -1
        self.t_min = np.minimum.reduceat(ts, starts)
        self.t_max = np.maximum.reduceat(ts, starts)
        self.image = _first_per_group(cols.coded("image", rows), starts, m) if image else None
        self.host = _first_per_group(cols.coded("host", rows), starts, m) if host else None
        # a row a sample may keep: a SAMPLED_KINDS row (conn, dns) or a geo contact
        self.sampled = np.add.reduceat((conn | dns | geo).astype(np.int64), starts) > 0
        self.conn, self.dns, self.geo, self.failed, self.nx = conn, dns, geo, failed, nx


def new_windows(cols: NetColumns, rows: np.ndarray, sizes: np.ndarray) -> "NewWindowRows":
    """The windows that get exactly these rows and nothing else, `rows` (int64 indexes) laid out
    window after window, `sizes[i]` (> 0) of them window i's: what `add_groups` on new
    accumulators, then `features_of`, give them, as arrays, with no accumulator per window.

    Why: an http or ssl log opens and closes about a window every 30 lines (a container's rows
    in one replay chunk span many windows, all but its last opened and closed within the
    chunk), and an accumulator per such window, filled, read and thrown away, was most of the
    engine's time there. For rows no evidence selection keeps (no conn, dns or geo row: such a
    window's sample stays empty, `rules.window_samples` picks nothing from it): ValueError
    otherwise."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not sizes.all() or int(sizes.sum()) != len(rows):
        raise ValueError("new windows: a window without rows, or sizes that do not add up")
    st = _GroupStats(cols, np.asarray(rows, dtype=np.int64), sizes, addrs=True, ports=True,
                     domains=True, image=True, host=True)
    if st.sampled.any():
        raise ValueError("rows an evidence sample may keep: accumulators only (add_groups)")
    ng = len(sizes)
    raw = np.zeros((ng, len(_COUNTS) + 1))       # the entropy sum stays 0.0: no DNS row
    for j, name in enumerate(st.names):
        raw[:, _COUNTS.index(name)] = st.counts[:, j]

    def size(name: str) -> np.ndarray:   # a new set takes them all, up to the cap
        found = st.distinct[name]
        if found is None:
            return np.zeros(ng)
        return np.minimum(np.diff(np.asarray(found[1], dtype=np.int64)),
                          DISTINCT_CAP).astype(np.float64)

    # a new accumulator's first and last time start at +inf and -inf, and a comparison with
    # NaN keeps them
    t_min = np.where(st.t_min < math.inf, st.t_min, math.inf)
    t_max = np.where(st.t_max > -math.inf, st.t_max, -math.inf)
    return NewWindowRows(X=feature_matrix(raw, size("addrs"), size("ports"), size("domains")),
                         n=sizes, t_min=t_min, t_max=t_max, image=st.image, host=st.host)


def keeps_no_sample(cols: NetColumns, rows: Any = None) -> bool:
    """Is no row (of `rows`) one an evidence sample may keep (a conn or dns row, a geo contact:
    `_GroupStats.sampled`)? Judged on the columns' distinct values (`NetColumns.coded`), so a
    value listed but unused answers no: `new_windows`' precondition, checked cheaply."""
    _, kinds = cols.coded("kind", rows)
    if any(k in SAMPLED_KINDS for k in kinds.tolist()):
        return False
    _, geo = cols.coded("geo_service", rows)
    return not any(geo.tolist())


@dataclass(slots=True)
class NewWindowRows:
    """`new_windows`' result, a row per window: the NET_FEATURES rows (`X`), and what a
    window's accumulator would tell its container's span: rows added, first and last time,
    first non-empty image and host."""

    X: np.ndarray
    n: np.ndarray
    t_min: np.ndarray
    t_max: np.ndarray
    image: list[str]
    host: list[str]


def _sample_groups(cols: NetColumns, rows: np.ndarray, gid: np.ndarray, starts: list[int],
                   ts: np.ndarray, sampling: list[tuple[int, "NetSample", int]],
                   plain: dict[str, np.ndarray], conn: np.ndarray, dns: np.ndarray) -> None:
    """Offer each group's rows to its window's evidence sample (`NetSample`): per selection,
    the SAMPLE_K rows of the group that come first in (time, arrival) order (for a keyed one,
    the first row of each of the first SAMPLE_K keys), found for every group at once by one
    sort of the rows by (group, time, arrival); then, per group, only those rows are offered,
    and records are built (one column pass for all groups) only for rows an offer may keep.

    A full selection whose newest row is not after a group's first takes nothing from it: the
    common case once a window has its samples."""
    m = rows.size
    order = np.lexsort((np.arange(m), ts, gid))
    picks: dict[str, tuple[np.ndarray, list[Any] | None]] = {}   # selection -> rows, keys

    def first_k(sel: np.ndarray) -> np.ndarray:
        """The first SAMPLE_K of `sel` (layout rows in (group, time, arrival) order) per group."""
        g = gid[sel]
        rank = np.arange(sel.size) - np.searchsorted(g, g)
        return sel[rank < SAMPLE_K]

    for name, mask in plain.items():
        sel = order[mask[order]]
        if sel.size:
            picks[name] = (first_k(sel), None)
    keyed = (("ports", conn, lambda r: _pair_codes(cols.resp_p[r], cols.coded("proto", r)),
              lambda r: list(zip(np.asarray(cols.resp_p[r], dtype=np.int64).tolist(),
                                 [str(x) for x in cols.proto[r].tolist()]))),
             ("addrs", conn, lambda r: distinct_codes(*cols.coded("resp_h", r))[0],
              lambda r: cols.resp_h[r].tolist()),
             ("dns_domains", dns, lambda r: distinct_codes(*cols.coded("domain", r))[0],
              lambda r: cols.domain[r].tolist()))
    for name, mask, codes_of, keys_of in keyed:
        sel = order[mask[order]]
        if not sel.size:
            continue
        code = np.asarray(codes_of(rows[sel]), dtype=np.int64)
        span = int(code.max()) + 1 if code.size else 1
        _, first, _ = distinct_keys(gid[sel] * span + code)
        sel = first_k(sel[np.sort(first)])
        picks[name] = (sel, keys_of(rows[sel]))
    # per selection, each group's picks: bounds into the selection's rows (grouped by gid)
    bounds = {name: np.searchsorted(gid[sel], np.arange(len(starts) + 1)).tolist()
              for name, (sel, _) in picks.items()}
    # offers in the order the row-by-row path makes them: plain selections, then keyed
    offer_order = [n for n in ("failed", "geo", "nxdomain", "conns", "ports", "addrs",
                               "dns_domains") if n in picks]
    # per selection, its picks' (key, row, time, seq) as lists, all groups at once: a row's
    # seq is its group's first seq plus its place in the group
    first_seq = np.zeros(len(starts), dtype=np.int64)
    first_seq[[g for g, _, _ in sampling]] = [seq0 for _, _, seq0 in sampling]
    starts_a = np.asarray(starts, dtype=np.int64)
    lists: dict[str, tuple[list[Any], list[int], list[float], list[int]]] = {}
    for name, (sel, keys) in picks.items():
        g_of = gid[sel]
        seqs = (first_seq[g_of] + sel - starts_a[g_of]).tolist()
        lists[name] = (seqs if keys is None else keys, sel.tolist(), ts[sel].tolist(), seqs)
    t_first = np.minimum.reduceat(ts, starts_a).tolist() if m else []
    # per sample, per selection: (name, True, (lo, hi): the bounds of its picks in `lists`) or
    # (name, False, [(key, row, time, seq)] to offer one by one); a selection the sample does
    # not hold yet takes the group's picks whole (they are its first SAMPLE_K, distinct keys in
    # offer order): no per-row offer, the common case of a window's first rows
    jobs: list[tuple["NetSample", list[tuple[str, bool, Any]]]] = []
    wanted: set[int] = set()
    for g, sample, seq0 in sampling:
        offers: list[tuple[str, bool, Any]] = []
        t0 = t_first[g]
        for name in offer_order:
            lo, hi = bounds[name][g], bounds[name][g + 1]
            if lo == hi:
                continue
            d = sample.sel.get(name)
            keys_l, rows_l, ts_l, seqs_l = lists[name]
            if d is None:                                 # taken whole: its bounds
                wanted.update(rows_l[lo:hi])
                offers.append((name, True, (lo, hi)))
                continue
            if len(d) >= SAMPLE_K and t0 >= max(d.values())[0]:
                continue                                  # full, and nothing here comes first
            entries = []
            for key, row, t, seq in zip(keys_l[lo:hi], rows_l[lo:hi], ts_l[lo:hi],
                                        seqs_l[lo:hi]):
                if sample._room(name, key, t, seq):
                    entries.append((key, row, t, seq))
                    wanted.add(row)
            if entries:
                offers.append((name, False, entries))
        if offers:
            jobs.append((sample, offers))
    if not jobs:
        return
    want = sorted(wanted)
    recs = dict(zip(want, cols.tuples(rows[want])))     # NetSample makes NetRecords on read
    get = recs.__getitem__
    for sample, offers in jobs:
        for name, whole, entries in offers:
            if whole:
                keys_l, rows_l, ts_l, seqs_l = lists[name]
                lo, hi = entries
                if name not in sample.sel:
                    sample.take_first(name, keys_l[lo:hi], ts_l[lo:hi], seqs_l[lo:hi],
                                      map(get, rows_l[lo:hi]))
                    continue
                entries = list(zip(keys_l[lo:hi], rows_l[lo:hi], ts_l[lo:hi], seqs_l[lo:hi]))
            for key, row, t, seq in entries:
                rec = recs[row]
                sample.offer(name, key, t, seq, lambda rec=rec: rec)


def _group_distinct(gid: np.ndarray, codes: np.ndarray, valid: np.ndarray, ng: int,
                    ncodes: int, table: np.ndarray | None, ordered: bool = False,
                    offset: int = 0) -> tuple[list[Any], list[int]] | None:
    """Per group, the distinct values among the `valid` rows, as (values, bounds): group g's
    are values[bounds[g]:bounds[g+1]], in first-appearance order within the group (ascending
    when `ordered`, as np.unique gave them). `codes` index `table` (or are the values less
    `offset` when table is None)."""
    sel = np.flatnonzero(valid)
    if not sel.size:
        return None
    key = gid[sel] * max(ncodes, 1) + codes[sel]
    uk, first, _ = distinct_keys(key)
    if not ordered:
        uk = uk[np.argsort(first)]     # gid is non-decreasing: still grouped, first seen first
    g, c = np.divmod(uk, max(ncodes, 1))
    values = table[c].tolist() if table is not None else (c + offset).tolist()
    return values, np.searchsorted(g, np.arange(ng + 1)).tolist()


def _by_value(codes: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table) with the table's equal values under one code: a distinct set counts
    values, and a (codes, values) pair may list a value twice (`NetColumns.codes`), as
    `domain_of` makes one of two spellings."""
    if table.size < 2:
        return codes, table
    vcode, vals = factorize(table)
    return (codes, table) if vals.size == table.size else (vcode[codes], vals)


def _first_per_group(coded: tuple[np.ndarray, np.ndarray], starts: np.ndarray, m: int
                     ) -> list[str]:
    """Per group (rows laid out group after group from `starts`), its first non-empty value,
    of a (codes, values) column."""
    codes, values = coded
    pos = np.where(nonempty(coded), np.arange(m), m)
    first = np.minimum.reduceat(pos, starts)
    got = values[codes[np.minimum(first, m - 1)]]     # a group with none: any row, then ""
    return np.where(first < m, got, "").tolist()


def _add_capped(s: set, values: Iterable[Any]) -> None:
    """Add values until the set holds DISTINCT_CAP (then its count saturates)."""
    for v in values:
        if len(s) >= DISTINCT_CAP:
            return
        s.add(v)


def _first_nonempty(values: np.ndarray) -> str:
    nz = np.flatnonzero(values != "")
    return str(values[nz[0]]) if nz.size else ""


def _pair_codes(ports: np.ndarray, protos: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One integer per (port, proto) pair (protos as (codes, values), values may repeat), for
    finding distinct pairs within a batch."""
    code, n = distinct_codes(*protos)
    return np.asarray(ports, dtype=np.int64) * max(n, 1) + code


def columns_of(records: Sequence[NetRecord]) -> NetColumns:
    """NetRecords as a NetColumns (text as object arrays, ints int64)."""
    ints = {"resp_p", "orig_p", "bytes_out", "bytes_in"}
    cols: dict[str, np.ndarray] = {}
    for f in NET_FIELDS:
        vals = [getattr(r, f) for r in records]
        if f == "ts":
            cols[f] = np.array(vals, dtype=float)
        elif f in ints:
            cols[f] = np.array([int(v or 0) for v in vals], dtype=np.int64)
        else:
            a = np.empty(len(vals), dtype=object)
            a[:] = [v if v is not None else "" for v in vals]
            cols[f] = a
    return NetColumns(**cols)


def concat_columns(parts: Sequence[NetColumns]) -> NetColumns:
    """Several NetColumns as one (rows in the given order)."""
    if len(parts) == 1:
        return parts[0]
    return NetColumns(**{f: _concat([getattr(p, f) for p in parts]) for f in NET_FIELDS})


def _concat(cols: list[Any]) -> Any:
    """One column of several: by the column type's own `concat` where it has one (the Zeek
    reader's DeferredText keeps their rows unmade), else as one numpy array."""
    own = getattr(type(cols[0]), "concat", None)
    return own(cols) if own is not None else np.concatenate([np.asarray(c) for c in cols])
