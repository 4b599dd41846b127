"""Feature windows: one row per container per time window, built from normalised records.

Why windows: a baseline must compare like with like. Each container's behaviour is summarised over
fixed, epoch-aligned windows (default 300 s) so that a window of a container can be scored against
the windows its image produced during training. The column order is fixed by FEATURE_NAMES; every
stored model records the list it was trained with, so a change here is caught at load time.

Heavy lifting is vectorised with numpy: records are turned into (row, value) index arrays once and
aggregated with bincount / unique, so tens of thousands of records per window batch cost milliseconds.
The only per-record Python is the attribute extraction from the dataclasses (unavoidable) and a cached
per-name entropy computation.
"""
from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Iterable, Sequence

import numpy as np

from model.records import ContainerInfo, LifecycleRecord, NetRecord, ProcessRecord
from model.window_agg import (DISTINCT_CAP, FAILED_CONN_STATES, NET_FEATURES,  # noqa: F401
                              NetWindowAgg, columns_of, domain_of, features_of, label_entropy,
                              leaves_rfc1918)

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 300.0

#: Stable column order of every feature matrix. Append only; never reorder (stored models keep it).
FEATURE_NAMES: tuple[str, ...] = (
    "processes_started",
    "distinct_executables",
    "shell_processes",
    "network_tool_processes",
    "location_discovery_processes",
    "outbound_conns",
    "failed_conns",
    "distinct_remote_addrs",
    "distinct_remote_ports",
    "distinct_domains",
    "dns_queries",
    "dns_label_entropy_mean",
    "nxdomain_share",
    "http_requests",
    "geo_service_contacts",
    "bytes_out",
    "bytes_in",
    "public_conn_share",
    "container_age_s",
    "restarts",
    "exec_sessions",
    "image_creates",
    "image_destroys",
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "fish", "tcsh", "csh", "busybox-sh"})
NETWORK_TOOLS = frozenset({
    "curl", "wget", "nc", "ncat", "netcat", "nslookup", "dig", "host", "drill", "telnet", "socat",
    "nmap", "masscan", "ssh", "scp", "sftp", "ftp", "tftp", "openssl", "ping", "traceroute",
    "tracepath", "arp", "ip", "ifconfig", "aria2c", "lynx", "httpie", "http",
})
#: Processes that belong to the container runtime entering the cgroup, not to the workload.
RUNTIME_NAMES = frozenset({"runc", "runc:[0:parent]", "runc:[1:child]", "runc:[2:init]", "crun", "conmon"})
CREATE_ACTIONS = frozenset({"create"})
DESTROY_ACTIONS = frozenset({"destroy", "remove"})
RESTART_ACTIONS = frozenset({"restart"})
EXEC_ACTIONS = frozenset({"exec", "exec_create", "exec_start"})

@dataclass
class FeatureWindows:
    """A batch of feature windows: the matrix `X` plus the identity of every row.

    Rows are sorted by (window_start, container_id) so the same records always give the same matrix.
    """

    X: np.ndarray
    container_id: list[str]
    image: list[str]
    host: list[str]
    window_start: np.ndarray
    window_end: np.ndarray
    environment: str = "default"
    feature_names: tuple[str, ...] = FEATURE_NAMES
    name: list[str] = field(default_factory=list)
    #: distinct executable names seen in each row's window (for the per-image vocabulary check)
    executables: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def select(self, mask: np.ndarray | Sequence[int]) -> "FeatureWindows":
        """Subset of rows (boolean mask or index list), keeping identities aligned."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=int)
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return FeatureWindows(
            X=self.X[idx], container_id=pick(self.container_id), image=pick(self.image),
            host=pick(self.host), window_start=self.window_start[idx], window_end=self.window_end[idx],
            environment=self.environment, feature_names=self.feature_names,
            name=pick(self.name) if self.name else [],
            executables=pick(self.executables) if self.executables else [],
        )

    def column(self, feature: str) -> np.ndarray:
        return self.X[:, self.feature_names.index(feature)]

    def row_dict(self, i: int) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.feature_names, self.X[i])}

    @classmethod
    def empty(cls, environment: str = "default") -> "FeatureWindows":
        return cls(X=np.zeros((0, len(FEATURE_NAMES))), container_id=[], image=[], host=[],
                   window_start=np.zeros(0), window_end=np.zeros(0), environment=environment)

    @classmethod
    def concat(cls, parts: Sequence["FeatureWindows"]) -> "FeatureWindows":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            X=np.vstack([p.X for p in parts]),
            container_id=[c for p in parts for c in p.container_id],
            image=[c for p in parts for c in p.image],
            host=[c for p in parts for c in p.host],
            window_start=np.concatenate([p.window_start for p in parts]),
            window_end=np.concatenate([p.window_end for p in parts]),
            environment=parts[0].environment, feature_names=parts[0].feature_names,
            name=[c for p in parts for c in (p.name or [""] * len(p))],
            executables=[c for p in parts for c in (p.executables or [()] * len(p))],
        )


# --------------------------------------------------------------------------- small pure helpers

def executable_name(rec: ProcessRecord) -> str:
    """The program a process runs, as a short name.

    argv[0]'s basename comes first: busybox images run every applet from /bin/busybox (so `path` is
    useless) and the kernel's comm is often `exe` at exec time, while argv[0] is `wget`, `/bin/cat`...
    """
    argv0 = rec.cmdline.split(" ", 1)[0] if rec.cmdline else ""
    for candidate in (argv0, rec.name, rec.path):
        base = posixpath.basename(candidate.strip())
        if base and base != "exe":
            return base.lower()
    return (rec.name or "").lower()


def is_runtime_process(rec: ProcessRecord) -> bool:
    """True for the OCI runtime entering the container (`runc init`), which is not the workload."""
    exe = executable_name(rec)
    return exe in RUNTIME_NAMES or rec.cmdline.startswith(("/usr/bin/runc init", "runc init"))


def window_index(ts: np.ndarray, window_s: float, origin: float) -> np.ndarray:
    return np.floor((np.asarray(ts, dtype=float) - origin) / window_s).astype(np.int64)


# --------------------------------------------------------------------------- the builder

@dataclass
class _Span:
    image: str
    host: str
    name: str
    created: float | None
    first: float
    last: float
    ended: bool


def _container_spans(processes, nets, lifecycle, containers, net_windows=(),
                     new_windows=()) -> dict[str, _Span]:
    """When each container existed: inventory creation, lifecycle events and first/last record
    (of the records given, or of the network accumulators standing for them)."""
    spans: dict[str, _Span] = {}

    def touch(cid: str, ts: float, image: str = "", host: str = "", name: str = "",
              last: float | None = None) -> _Span:
        """The container seen at `ts` (from `ts` to `last`, for an accumulator's rows)."""
        last = ts if last is None else last
        s = spans.get(cid)
        if s is None:
            s = spans[cid] = _Span(image=image, host=host, name=name, created=None, first=ts,
                                   last=last, ended=False)
        else:
            s.first = min(s.first, ts)
            s.last = max(s.last, last)
            s.image = s.image or image
            s.host = s.host or host
            s.name = s.name or name
        return s

    for c in containers:
        if not c.container_id:
            continue
        ts = c.created if c.created is not None else math.inf
        s = spans.get(c.container_id)
        if s is None:
            s = spans[c.container_id] = _Span(image=c.image, host=c.host, name=c.name,
                                              created=c.created, first=ts, last=-math.inf, ended=False)
        else:
            s.image, s.host, s.name = c.image or s.image, c.host or s.host, c.name or s.name
            if c.created is not None:
                s.created = c.created
                s.first = min(s.first, c.created)
    for e in lifecycle:
        if not e.container_id:
            continue
        s = touch(e.container_id, e.ts, e.image, e.host, e.name)
        if e.action in CREATE_ACTIONS and s.created is None:
            s.created = e.ts
        if e.action in DESTROY_ACTIONS:
            s.ended = True
    for r in processes:
        if r.container_id:
            touch(r.container_id, r.ts, r.image, r.host)
    for r in nets:
        if r.container_id:
            touch(r.container_id, r.ts, r.image, r.host)
    # An accumulator stands for its records: first/last time, image, host. A container's
    # accumulators are taken together first (earliest, latest, first non-empty image and host,
    # in order), then touched once: what touching each in turn gives, a call per container
    # rather than per window.
    # Windows as arrays (`new_windows`) stand for their rows the same way.
    stood = chain(((cid, agg.t_min, agg.t_max, agg.image, agg.host)
                   for (cid, _), agg in net_windows if cid and agg.n),
                  *(zip(cids, rows.t_min.tolist(), rows.t_max.tolist(), rows.image, rows.host)
                    for cids, _, rows in new_windows))
    per: dict[str, list] = {}
    for cid, t_min, t_max, image, host in stood:
        p = per.get(cid)
        if p is None:
            per[cid] = [t_min, t_max, image, host]
            continue
        if t_min < p[0]:
            p[0] = t_min
        if t_max > p[1]:
            p[1] = t_max
        if not p[2]:
            p[2] = image
        if not p[3]:
            p[3] = host
    for cid, (t0, t1, image, host) in per.items():
        touch(cid, t0, image, host, last=t1)
    for s in spans.values():
        if s.last == -math.inf:
            s.last = s.first
    return spans


def build_windows(
    processes: Iterable[ProcessRecord] = (),
    nets: Iterable[NetRecord] = (),
    lifecycle: Iterable[LifecycleRecord] = (),
    containers: Iterable[ContainerInfo] = (),
    *,
    window_s: float = DEFAULT_WINDOW_S,
    origin: float = 0.0,
    start: float | None = None,
    end: float | None = None,
    environment: str = "default",
    image_key=None,
    align: str = "container",
    net_windows: dict[tuple[str, int], NetWindowAgg] | None = None,
    only_given: bool = False,
    new_windows: Sequence[tuple[Sequence[str], Sequence[int], Any]] = (),
) -> FeatureWindows:
    """Turn records into one feature row per container per window.

    A container gets a row for every window from its creation (or first sighting) to its removal
    (or last sighting, or `end` when it was still running), so quiet windows are rows of zeros rather
    than missing: quiet is part of normal.

    align="container" (default): each container's windows start at its creation (or first sighting),
    [created + k*window_s, created + (k+1)*window_s), so a container's first window is a full one and
    start-up looks the same whenever it happens. align="epoch": windows are
    [origin + k*window_s, origin + (k+1)*window_s) for every container (shared wall-clock grid).
    `start`/`end` restrict the rows to windows overlapping that range; pass the records of whole
    windows. `image_key` (a callable) maps an
    image name to the key churn is grouped by; default: the image string as given.

    Network features come from a `model.window_agg.NetWindowAgg` per (container, window): the
    records in `nets` are grouped into one each, or the caller hands its own accumulators in
    `net_windows`, keyed (container id, window index from the container's origin) (the live
    engine's windows, which never keep their records). One implementation either way.
    `new_windows`: more such windows as arrays, (container ids, window indexes,
    `model.window_agg.NewWindowRows`) (windows the live engine opened and closed within one
    call, made without an accumulator each). `only_given`: only the rows of the windows in
    `net_windows` and `new_windows` (the windows a flush closed), in the order they would
    have among all rows.
    """
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    processes, nets = list(processes), list(nets)
    lifecycle, containers = list(lifecycle), list(containers)
    keyfn = image_key or (lambda s: s)
    aggs = list((net_windows or {}).items())
    spans = _container_spans(processes, nets, lifecycle, containers, aggs, new_windows)
    if not spans:
        return FeatureWindows.empty(environment)

    # every (container, window) row -----------------------------------------------------------
    if align not in ("container", "epoch"):
        raise ValueError("align must be 'container' or 'epoch'")
    cids = sorted(spans)
    cid_index = {c: i for i, c in enumerate(cids)}
    if align == "container":
        c_origin = np.array([spans[c].created if spans[c].created is not None else spans[c].first
                             for c in cids], dtype=float)
    else:
        c_origin = np.full(len(cids), float(origin))
    horizon_end = end
    if horizon_end is None:
        horizon_end = max(s.last for s in spans.values())
    # each container's first and last window, all containers at once (a loop of small numpy
    # calls here was ~20 us a container: the live engine builds a few dozen windows per call)
    n_c = len(cids)
    first = np.fromiter((spans[c].first for c in cids), float, n_c)
    last = np.fromiter((spans[c].last if spans[c].ended else max(spans[c].last, horizon_end)
                        for c in cids), float, n_c)
    # a container known by name only (no creation time, no record) has no window
    timed = np.isfinite(first) & np.isfinite(last) & np.isfinite(c_origin)
    if not timed.all():
        first, last = np.where(timed, first, 0.0), np.where(timed, last, 0.0)
        c_origin = np.where(timed, c_origin, 0.0)
    w0 = window_index(first, window_s, c_origin)
    w1 = window_index(last, window_s, c_origin)
    if start is not None:
        w0 = np.maximum(w0, window_index(np.full(n_c, start, dtype=float), window_s, c_origin))
    if end is not None:
        # `end` is exclusive: a window starting exactly at `end` is not included
        w1 = np.minimum(w1, np.ceil((end - c_origin) / window_s).astype(np.int64) - 1)
    counts = np.where(timed & (w1 >= w0), w1 - w0 + 1, 0)
    if not counts.any():
        return FeatureWindows.empty(environment)
    # rows container by container, each container's windows in order
    rc = np.repeat(np.arange(n_c, dtype=np.int64), counts)
    rw = w0[rc] + (np.arange(int(counts.sum()), dtype=np.int64) - (np.cumsum(counts) - counts)[rc])
    order = np.lexsort((rc, rw))            # sort by window, then container (stable, deterministic)
    rc, rw = rc[order], rw[order]
    n_rows, n_feat = rc.size, len(FEATURE_NAMES)
    span_w = int(rw.max() - rw.min() + 1)
    wmin = int(rw.min())
    row_key = rc * span_w + (rw - wmin)
    key_order = np.argsort(row_key)
    sorted_keys = row_key[key_order]

    def rows_for(cidx: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Row number of each record, -1 when it falls outside every row."""
        if cidx.size == 0:
            return np.zeros(0, dtype=np.int64)
        w = np.floor((ts - c_origin[np.clip(cidx, 0, None)]) / window_s).astype(np.int64) - wmin
        ok = (cidx >= 0) & (w >= 0) & (w < span_w)
        key = np.where(ok, cidx * span_w + np.clip(w, 0, span_w - 1), -1)
        pos = np.clip(np.searchsorted(sorted_keys, key), 0, sorted_keys.size - 1)
        hit = ok & (sorted_keys[pos] == key)
        return np.where(hit, key_order[pos], -1)

    X = np.zeros((n_rows, n_feat), dtype=np.float64)
    col = FEATURE_INDEX

    def count(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        m = rows >= 0
        return np.bincount(rows[m], weights=None if weights is None else weights[m], minlength=n_rows)

    def distinct(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
        m = (rows >= 0) & (codes >= 0)
        if not m.any():
            return np.zeros(n_rows)
        pairs = np.unique(np.stack([rows[m], codes[m]], axis=1), axis=0)
        return np.bincount(pairs[:, 0], minlength=n_rows).astype(float)

    def encode(values: list[str]) -> np.ndarray:
        """Integer codes for strings; "" gets -1 (not counted as a distinct value)."""
        table: dict[str, int] = {}
        return np.fromiter((table.setdefault(v, len(table)) if v else -1 for v in values),
                           dtype=np.int64, count=len(values))

    # processes ---------------------------------------------------------------------------------
    procs = [p for p in processes if p.container_id in cid_index and not is_runtime_process(p)]
    # each row's executables, only for rows with processes (most windows of a live flush have
    # none: a set per row cost more than the rest of the process features)
    row_exes: dict[int, set[str]] = {}
    if procs:
        p_rows = rows_for(np.fromiter((cid_index[p.container_id] for p in procs), np.int64, len(procs)),
                          np.fromiter((p.ts for p in procs), float, len(procs)))
        exe = [executable_name(p) for p in procs]
        for r, e in zip(p_rows.tolist(), exe):
            if r >= 0 and e:
                row_exes.setdefault(r, set()).add(e)
        X[:, col["processes_started"]] = count(p_rows)
        X[:, col["distinct_executables"]] = distinct(p_rows, encode(exe))
        X[:, col["shell_processes"]] = count(p_rows, np.array([e in SHELLS for e in exe], float))
        X[:, col["network_tool_processes"]] = count(p_rows, np.array([e in NETWORK_TOOLS for e in exe], float))
        X[:, col["location_discovery_processes"]] = count(
            p_rows, np.array([bool(p.location_discovery) for p in procs], float))

    # network ---------------------------------------------------------------------------------
    known = [r for r in nets if r.container_id in cid_index]
    agg_rows: list[int] = []                 # the row each accumulator of agg_list fills
    agg_list: list[NetWindowAgg] = []
    if known:   # records: one feature-only accumulator per row, fed the row's records in order
        cols = columns_of(known)
        n_rows_all = rows_for(np.fromiter((cid_index[r.container_id] for r in known), np.int64, len(known)),
                              np.fromiter((r.ts for r in known), float, len(known)))
        hit = np.flatnonzero(n_rows_all >= 0)
        by_row = hit[np.argsort(n_rows_all[hit], kind="stable")]
        rows_sorted = n_rows_all[by_row]
        cuts = np.flatnonzero(np.diff(rows_sorted)) + 1
        for part in np.split(by_row, cuts) if by_row.size else []:
            agg = NetWindowAgg(sample=False)
            agg.add_columns(cols, part)
            agg_rows.append(int(n_rows_all[part[0]]))
            agg_list.append(agg)

    def keyed_rows(k_cids: Sequence[str], ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(which keys have a row, those rows) of windows keyed (container, index): all at
        once, the keys read in C (a few per flush row)."""
        ci = np.fromiter(map(cid_index.get, k_cids, repeat(-1)), np.int64, len(k_cids))
        w = np.fromiter(ks, np.int64, len(ks)) - wmin
        ok = (ci >= 0) & (w >= 0) & (w < span_w)
        key = ci * span_w + w
        pos = np.minimum(np.searchsorted(sorted_keys, key), sorted_keys.size - 1)
        hit = np.flatnonzero(ok & (sorted_keys[pos] == key))
        return hit, key_order[pos[hit]]

    given: list[np.ndarray] = []             # the rows of the windows handed in
    if aggs:    # each accumulator's row
        hit, rows = keyed_rows(*zip(*net_windows))
        given.append(rows)
        agg_rows.extend(rows.tolist())
        accs = list(net_windows.values())
        agg_list.extend([accs[j] for j in hit.tolist()])
    net_cols = [col[f] for f in NET_FEATURES]
    if agg_list:
        X[np.ix_(np.asarray(agg_rows, dtype=np.int64), net_cols)] = features_of(agg_list)
    for n_cids, n_ks, built in new_windows:   # each window's row, as for the accumulators
        hit, rows = keyed_rows(n_cids, n_ks)
        given.append(rows)
        X[np.ix_(rows, net_cols)] = built.X[hit]
    given_rows = (given[0] if len(given) == 1 else np.concatenate(given)) if given else None

    # lifecycle ---------------------------------------------------------------------------------
    ev = [e for e in lifecycle if e.container_id in cid_index]
    if ev:
        e_rows = rows_for(np.fromiter((cid_index[e.container_id] for e in ev), np.int64, len(ev)),
                          np.fromiter((e.ts for e in ev), float, len(ev)))
        X[:, col["restarts"]] = count(e_rows, np.array([e.action in RESTART_ACTIONS for e in ev], float))
        X[:, col["exec_sessions"]] = count(e_rows, np.array([e.action in EXEC_ACTIONS for e in ev], float))

    # churn per (image key, host): creates / destroys inside each row's window, copied onto every
    # row of that image on that host
    churn: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for e in lifecycle:
        if e.action in CREATE_ACTIONS or e.action in DESTROY_ACTIONS:
            image = e.image or (spans[e.container_id].image if e.container_id in spans else "")
            host = e.host or (spans[e.container_id].host if e.container_id in spans else "")
            pair = churn.setdefault((keyfn(image), host), ([], []))
            pair[0 if e.action in CREATE_ACTIONS else 1].append(e.ts)

    window_start = c_origin[rc] + rw.astype(float) * window_s
    window_end = window_start + window_s
    # each row's identity from its container's, a column at a time (a list per row cost ~0.2 us
    # a row and column; a live flush builds a few hundred rows)
    c_spans = [spans[c] for c in cids]

    def per_row(values: list[Any]) -> list[Any]:
        table = np.empty(n_c, dtype=object)
        table[:] = values
        return table[rc].tolist()

    images = per_row([sp.image for sp in c_spans])
    hosts = per_row([sp.host for sp in c_spans])
    names = per_row([sp.name for sp in c_spans])
    if churn:
        keys_cache: dict[str, str] = {}
        group_code: dict[tuple[str, str], int] = {}
        row_group = np.array([group_code.setdefault((keys_cache.setdefault(im, keyfn(im)), h), len(group_code))
                              for im, h in zip(images, hosts)])
        for pair_key, (creates, destroys) in churn.items():
            code = group_code.get(pair_key)
            if code is None:
                continue
            m = row_group == code
            if not m.any():
                continue
            for name, times in (("image_creates", creates), ("image_destroys", destroys)):
                t = np.sort(np.asarray(times, dtype=float))
                X[m, col[name]] = (np.searchsorted(t, window_end[m], side="left")
                                   - np.searchsorted(t, window_start[m], side="left"))
    created = np.array([sp.created if sp.created is not None else sp.first for sp in c_spans],
                       dtype=float)[rc]
    X[:, col["container_age_s"]] = np.maximum(window_end - created, 0.0)   # NaN stays NaN

    log.debug("built %d windows for %d containers (window %.0fs)", n_rows, len(cids), window_s)
    executables: list[tuple[str, ...]] = [()] * n_rows
    for r, exes in row_exes.items():
        executables[r] = tuple(sorted(exes))
    fw = FeatureWindows(
        X=X, container_id=per_row(cids), image=images, host=hosts,
        window_start=window_start, window_end=window_end, environment=environment, name=names,
        executables=executables,
    )
    if only_given:
        # the rows of the accumulators given, in the built order (window, then container)
        return fw.select(np.sort(given_rows) if given_rows is not None
                         else np.zeros(0, dtype=np.int64))
    return fw
