"""Feature windows: the per-container bookkeeping between records and the model.

Windows are container-anchored like model.features' default: container c's window k is
[origin_c + k*W, origin_c + (k+1)*W) with origin_c its creation time (or first sighting), so a
start-up always looks the same. Records are buffered per open window; when data time passes a
window's end it is closed, and closed windows are built and scored in one batch at `flush`
(scoring is handed to the baselines; anomalies go back to the engine as rule candidates).

`WindowingMixin` is mixed into `scheduler.pipeline.Pipeline`; it relies on the engine's
`config`, `inventory`, `host`, `environment`, `baselines`, `stats`, `container_ref` and `_add`.
Kept apart from the engine so the window rules (late records, resumed windows, data time) can be
read in one place.
"""
from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from operator import itemgetter
from typing import Any, Callable

import numpy as np

from model.codes import factorize, nonempty, stable_order
from model.records import ContainerInfo
from model.window_agg import (NetWindowAgg, NewWindowRows, add_groups, keeps_no_sample,
                              new_windows)

from scheduler.detect import rules

log = logging.getLogger(__name__)


# Lifecycle actions that end a container's life (its windows stop) and that begin one again.
STOP_ACTIONS = frozenset({"die", "died", "stop", "exited"})
START_ACTIONS = frozenset({"start", "restart", "unpause"})


def attributed_rows(nets: Any, rows: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the indexes of the rows that have a container, in the order of `rows` when given, else
    of all rows; their container codes; the codes' container ids) of a NetColumns: only
    attributed rows have windows. The codes are the builder's when it kept them
    (`NetColumns.coded`): the engine's attribution has them, and hashing the ids cost more."""
    codes, values = nets.coded("container_id", rows)
    keep = nonempty((codes, values))
    idx = np.flatnonzero(keep) if rows is None else np.asarray(rows, dtype=np.int64)[keep]
    return idx, codes[keep], values


def sorted_codes(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct values the rows have, each row's index into them) of rows given as
    (codes, values) (`values[codes]` the rows' values; values may repeat or be unused):
    `np.unique(values[codes], return_inverse=True)` with only the few distinct values
    compared as strings: sorting the rows' strings themselves was a tenth of the http path."""
    if values.size == 1:
        return values, codes
    used = np.flatnonzero(np.bincount(codes, minlength=values.size))
    vals = values[used]
    order = np.argsort(vals)
    uniq = vals[order]
    if uniq.size > 1 and bool((uniq[1:] == uniq[:-1]).any()):
        return sorted_codes(*factorize(values[codes]))     # a value under two codes
    rank = np.zeros(values.size, dtype=np.int64)
    rank[used[order]] = np.arange(used.size)
    return uniq, rank[codes]


#: Up to this many rows, `_window_add_nets` decides in plain Python (`_small_stretch_groups`).
SMALL_STRETCH = 64


class WindowingMixin:
    """Open/closed feature windows per container and their scoring (see module docstring)."""

    def _init_windows(self, window_s: float) -> None:
        self.window_s = window_s
        # open feature windows per container
        self._cw: dict[str, dict[str, Any]] = {}
        self._heap: list[tuple[float, str, int]] = []
        self._closed: list[tuple[str, dict[str, Any]]] = []
        # Windows opened and closed by the rows of one call, kept as arrays (`new_windows`):
        # (container ids, window indexes, origins, their rows' features), scored with `_closed`.
        self._closed_new: list[tuple[list[str], list[int], list[float], NewWindowRows]] = []
        # Network rows decided into windows but not yet counted: (NetColumns, [(accumulator,
        # rows)], [windows to make as arrays: `_stretch_groups`' `fresh` entries]), counted by
        # `_count_pending` before anything reads an accumulator or a closed window.
        self._pending: list[tuple[Any, list[tuple[NetWindowAgg, np.ndarray]], list[Any]]] = []
        self._origins: dict[str, float] = {}
        self._last_closed: dict[str, int] = {}   # newest closed window index per container
        # Containers that died or stopped, and when: no window starts after that moment until
        # the container starts again (a stopped container waiting for its removal is not
        # "behaving" with zero traffic: scoring those empty windows gave false anomalies).
        self._stopped: dict[str, float] = {}
        self._skip: set[tuple[str, int]] = set()
        self._life_recent: deque = deque()
        self.collect_windows = False      # keep every built window in `collected` (training)
        self.collected: list[Any] = []
        self.window_sink: Callable[[Any], None] | None = None   # e.g. WindowStore.add
        self.data_time = 0.0
        # Replay bookkeeping: the stream position of the current item and of each open window's
        # first item, so a resumed replay can rebuild open windows (`windows_only` re-feed).
        self.cur_pos = 0
        self._win_pos: dict[tuple[str, int], int] = {}
        self.windows_only = False
        self._rebuild: set[tuple[str, int]] = set()
        self.on_window_scored: Callable[[Any], None] | None = None
        # A window closes when data time passes its end by this much: live sources deliver a
        # little out of order (osquery reports on its schedule, Zeek writes a connection when it
        # ends), so the daemon waits for them; a time-sorted replay needs no lag (0).
        self.close_lag_s = 0.0


    @property
    def windows_enabled(self) -> bool:
        # Windows are built when they can be scored, collected (training) or stored (the daemon
        # stores them even before it has baselines: they are the next retrain's training data).
        return self.config.detection.anomaly and (self.baselines is not None or self.collect_windows
                                                  or self.window_sink is not None)

    def _origin(self, cid: str, ts: float) -> float:
        o = self._origins.get(cid)
        if o is None:
            st = self.inventory.get(self.host, cid)
            created = st.begin if st is not None and st.begin else None
            o = created if created is not None and created <= ts else ts
            self._origins[cid] = o
        return o

    def _window_add(self, kind: str, ts: float, rec: Any) -> None:
        if not self.windows_enabled:
            return
        if self._pending:
            self._count_pending()       # a record after counted rows, as it arrived
        cid = rec.container_id
        if not cid:
            return
        if kind == "l" and not self.windows_only:
            self._life_recent.append(rec)
        origin = self._origins.get(cid)
        if origin is None:
            origin = self._origin(cid, ts)
        k = int(math.floor((ts - origin) / self.window_s))
        if kind == "l":
            action = rec.action
            if action in START_ACTIONS:
                self._stopped.pop(cid, None)
            elif action in STOP_ACTIONS:
                self._stopped.setdefault(cid, ts)
        stopped = self._stopped.get(cid) if self._stopped else None
        if stopped is not None and origin + k * self.window_s > stopped:
            return     # a window that would start after the container stopped: it never lived there
        cw = self._cw.get(cid)
        if cw is not None and cw["k"] == k and not (self._skip and (cid, k) in self._skip):
            # The common case: the container's open window. (An open window's index is above
            # the last closed one, and it passed the skip test when it opened.)
            if kind == "n":
                cw["n"].add(rec)
            else:
                cw[kind].append(rec)
            return
        if k <= self._last_closed.get(cid, -1 << 62) or (cid, k) in self._skip:
            # Late record for a window already scored, or a window the daemon was holding when
            # it stopped (incomplete: not scored rather than scored wrong).
            if not self.windows_only:
                self.stats.late_records += 1
            return
        if cw is not None and cw["k"] < k:
            self._close(cid)
            cw = None
        if cw is None:
            cw = self._open(cid, origin, k)
            if cw is None:
                return  # that window was scored before the checkpoint
        if kind == "n":
            cw["n"].add(rec)
        else:
            cw[kind].append(rec)

    def _open(self, cid: str, origin: float, k: int) -> dict[str, Any] | None:
        """Open container `cid`'s window k (None: a resumed replay's window scored before)."""
        if self.windows_only and (cid, k) not in self._rebuild:
            return None
        cw = self._cw[cid] = {"origin": origin, "k": k, "p": [], "n": NetWindowAgg(), "l": []}
        heapq.heappush(self._heap, (origin + (k + 1) * self.window_s, cid, k))
        self._win_pos.setdefault((cid, k), self.cur_pos)
        return cw

    def _window_add_nets(self, nets: Any, rows: Any = None) -> None:
        """Rows of a model.records.NetColumns (`rows`, or all, in time order) into their
        windows: the batch engine's path, with the result of `_window_add("n", ts, record)` row
        by row (late records, stopped containers, skipped and rebuilt windows, a container's
        origin from its first row), decided once per run of rows of one container in one
        window. The counting waits in `_pending`: calls on the same NetColumns (the stretches
        of one batch run) are counted together, in order, by one `add_groups` (its fixed cost
        is most of a small call's)."""
        if not self.windows_enabled or not len(nets):
            return
        idx, ccodes, cvalues = attributed_rows(nets, rows)
        if not idx.size:
            return
        fresh: list[tuple[list[str], list[float], list[int], np.ndarray, np.ndarray]] | None = None
        if idx.size <= SMALL_STRETCH:
            groups = self._small_stretch_groups(cvalues[ccodes], np.asarray(nets.ts, dtype=float),
                                                idx)
        else:
            if not self.windows_only and keeps_no_sample(nets):
                fresh = []          # windows opened and closed here need no accumulator
            groups = self._stretch_groups(sorted_codes(ccodes, cvalues),
                                          np.asarray(nets.ts, dtype=float), idx, fresh)
        # The windows' decisions above only open and close windows; the accumulators are
        # read only after `_count_pending` (scoring, state, a record-path row).
        if groups or fresh:
            if self._pending and self._pending[-1][0] is nets:
                self._pending[-1][1].extend(groups)
                self._pending[-1][2].extend(fresh or ())
            else:
                self._pending.append((nets, groups, fresh or []))

    def _stretch_groups(self, containers: tuple[np.ndarray, np.ndarray], ts_col: np.ndarray,
                        idx: np.ndarray, fresh: list | None = None
                        ) -> list[tuple[NetWindowAgg, np.ndarray]]:
        """(accumulator, rows) per run of rows `idx` of one container in one window, in
        container then row order, the windows opened and closed on the way (`_net_window`);
        numpy over the rows. `containers`: (the sorted distinct container ids, each row's index
        into them) (`sorted_codes`). `fresh` (a list, for rows no evidence sample keeps): the
        runs whose window is opened and closed here go there instead, with no accumulator
        (`new_windows` makes their features), as one entry (containers, origins, window
        indexes, their rows laid out window after window, rows per window)."""
        cids, inv = containers
        order = stable_order(inv, len(cids))
        by_cid, g = idx[order], inv[order]                     # row order kept per container
        ts = ts_col[by_cid]
        first = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
        cid_l = cids.tolist()
        origins = [self._origin(c, float(t)) for c, t in zip(cid_l, ts[first].tolist())]
        origin = np.asarray(origins, dtype=float)[g]
        k = np.floor((ts - origin) / self.window_s).astype(np.int64)
        if self._stopped and any(c in self._stopped for c in cid_l):
            # a window that would start after its container stopped never lived there
            stop = np.asarray([self._stopped.get(c, math.inf) for c in cid_l], dtype=float)[g]
            alive = origin + k * self.window_s <= stop
            by_cid, g, k = by_cid[alive], g[alive], k[alive]
            if not by_cid.size:
                return []
        # runs of one container in one window, in container then row order
        cuts = np.flatnonzero((g[1:] != g[:-1]) | (k[1:] != k[:-1])) + 1
        bounds = [0] + cuts.tolist() + [int(by_cid.size)]
        heads = [0] + cuts.tolist()
        groups: list[tuple[NetWindowAgg, np.ndarray]] = []
        gs, ks = g[heads].tolist(), k[heads].tolist()
        # a run followed by a run of the same container in a later window that it may open
        # (not a window skipped at a stop, which would leave this one open): this window is
        # opened and closed within this call (`_net_window(passing=True)`)
        skip = self._skip
        passing = [a == b and ka < kb and not (skip and (cid_l[b], kb) in skip)
                   for a, b, ka, kb in zip(gs, gs[1:], ks, ks[1:])] + [False]
        new = fresh is not None
        made: list[int] = []                    # the runs `new_windows` will take
        for j, (gi, kk, lo, hi, gone) in enumerate(zip(gs, ks, bounds, bounds[1:], passing)):
            agg = self._net_window(cid_l[gi], origins[gi], kk, hi - lo, gone, new)
            if agg is None:
                continue
            if agg is _NEW:
                made.append(j)
            else:
                groups.append((agg, by_cid[lo:hi]))
        if made:
            sizes = np.diff(np.asarray(bounds, dtype=np.int64))
            taken = np.zeros(sizes.size, dtype=bool)
            taken[made] = True
            gis = [gs[j] for j in made]
            fresh.append(([cid_l[i] for i in gis], [origins[i] for i in gis],
                          [ks[j] for j in made], by_cid[np.repeat(taken, sizes)],
                          sizes[made]))
        return groups

    def _small_stretch_groups(self, cids_at: np.ndarray, ts_col: np.ndarray, idx: np.ndarray
                              ) -> list[tuple[NetWindowAgg, np.ndarray]]:
        """`_stretch_groups` for a few rows, in plain Python: an out-of-order conn.log cuts
        its runs into stretches of a few dozen rows (`_late_cuts`), where the dozen numpy
        calls' fixed cost was most of the Zeek path. The same decisions in the same order:
        containers sorted, each one's rows in row order, a run per window, rows of windows
        after the container stopped left out before the runs are cut."""
        rows_l = idx.tolist()
        by_c: dict[str, list[int]] = {}
        for r, c in zip(rows_l, cids_at.tolist()):
            by_c.setdefault(c, []).append(r)
        cids = sorted(by_c)
        origins = [self._origin(c, float(ts_col[by_c[c][0]])) for c in cids]
        w = self.window_s
        floor = math.floor
        groups: list[tuple[NetWindowAgg, np.ndarray]] = []
        for c, origin in zip(cids, origins):
            crows = by_c[c]
            stop = self._stopped.get(c) if self._stopped else None
            run: list[int] = []
            run_k = 0
            for r, t in zip(crows, ts_col[crows].tolist()):
                k = floor((t - origin) / w)
                if stop is not None and not origin + k * w <= stop:
                    continue    # a window that would start after its container stopped
                if run and k != run_k:
                    agg = self._net_window(c, origin, run_k, len(run))
                    if agg is not None:
                        groups.append((agg, np.asarray(run, dtype=np.int64)))
                    run = []
                run_k = k
                run.append(r)
            if run:
                agg = self._net_window(c, origin, run_k, len(run))
                if agg is not None:
                    groups.append((agg, np.asarray(run, dtype=np.int64)))
        return groups

    def _count_pending(self) -> None:
        """Count the network rows `_window_add_nets` decided, in the order decided."""
        pending, self._pending = self._pending, []
        for nets, groups, fresh in pending:
            if fresh:                   # (containers, origins, indexes, rows, sizes) each
                cids = [c for f in fresh for c in f[0]]
                origins = [o for f in fresh for o in f[1]]
                ks = [k for f in fresh for k in f[2]]
                rows, sizes = ((fresh[0][i] if len(fresh) == 1 else
                                np.concatenate([f[i] for f in fresh])) for i in (3, 4))
                self._closed_new.append((cids, ks, origins, new_windows(nets, rows, sizes)))
            if not groups:
                continue
            if len(set(map(id, map(itemgetter(0), groups)))) == len(groups):
                add_groups(nets, groups)        # each window once already (the common case)
                continue
            # One group per window: a window's rows in the order decided (windows do not
            # depend on each other, so only each window's own order matters).
            per: dict[int, tuple[NetWindowAgg, list[np.ndarray]]] = {}
            for agg, rows in groups:
                per.setdefault(id(agg), (agg, []))[1].append(rows)
            add_groups(nets, [(agg, parts[0] if len(parts) == 1 else np.concatenate(parts))
                              for agg, parts in per.values()])

    def _late_cuts(self, cids: Any, ts: Any) -> list[int]:
        """Where a stretch of segment rows must end so that each row meets the windows it
        would meet row by row. A stretch is added as one chunk and data time advanced to its
        newest row after it, so the only rows at risk are rows data time has already passed (a
        conn.log is written when connections end: its rows are out of start-time order) whose
        window is due (its end plus the close lag is not after the newest time before the
        row): row by row that window was closed, or is opened by the row and closed by the
        next newer row. Such a row starts a new stretch, unless its window had closed before
        the segment (late either way: the common case, long connections). A container with no
        window origin yet is judged conservatively (a cut wherever time went back)."""
        prev = np.maximum.accumulate(np.concatenate(([self.data_time], ts[:-1])))
        behind = np.flatnonzero(ts < prev)
        if not behind.size:
            return []
        codes, uniq = factorize(cids[behind])
        origin = np.array([self._origins.get(c, np.nan) for c in uniq], dtype=float)[codes]
        closed = np.array([self._last_closed.get(c, -1 << 62) for c in uniq],
                          dtype=np.int64)[codes]
        w = self.window_s
        k = np.floor((ts[behind] - origin) / w)
        due = origin + (k + 1) * w + self.close_lag_s <= prev[behind]
        unknown = np.isnan(origin)
        cut = unknown | (due & ~(k <= closed))
        return [i for i in behind[cut].tolist() if i]        # row 0 starts a stretch anyway

    def _net_window(self, cid: str, origin: float, kk: int, rows: int, passing: bool = False,
                    new: bool = False) -> Any:
        """The accumulator that `rows` network rows of container `cid` in its window `kk` go
        to, as `_window_add` decides for each (late rows and windows scored before a resume:
        None); opens and closes windows on the way. `passing`: the caller's next rows are this
        container's in a later window, so a window opened here is closed by them before
        anything else happens: it goes straight to the closed ones, never registered as open
        (no time-heap entry, no open-window position), as opening then closing it leaves the
        state; with `new` it is not even made: `_NEW` says the caller's rows are all it gets."""
        cw = self._cw.get(cid)
        if cw is None or cw["k"] != kk or (self._skip and (cid, kk) in self._skip):
            if kk <= self._last_closed.get(cid, -1 << 62) or (cid, kk) in self._skip:
                if not self.windows_only:
                    self.stats.late_records += rows
                return None
            if cw is not None and cw["k"] < kk:
                self._close(cid)
                cw = None
            if cw is None:
                if passing and not self.windows_only:
                    self._last_closed[cid] = kk          # above it: the test above passed
                    self._win_pos.pop((cid, kk), None)   # a resumed position would go too
                    if new:
                        return _NEW
                    agg = NetWindowAgg()
                    self._closed.append((cid, {"origin": origin, "k": kk, "p": [], "n": agg,
                                               "l": []}))
                    return agg
                cw = self._open(cid, origin, kk)
                if cw is None:
                    return None
        return cw["n"]

    def _close(self, cid: str) -> None:
        cw = self._cw.pop(cid, None)
        if cw is None:
            return
        k = cw["k"]
        if k > self._last_closed.get(cid, -1 << 62):
            self._last_closed[cid] = k
        self._win_pos.pop((cid, k), None)
        self._closed.append((cid, cw))

    def _advance(self, ts: float) -> None:
        """Data time moved to `ts`: windows that ended before it are complete."""
        if ts <= self.data_time:
            return
        self.data_time = ts
        heap = self._heap
        ts -= self.close_lag_s
        while heap and heap[0][0] <= ts:
            _, cid, k = heapq.heappop(heap)
            cw = self._cw.get(cid)
            if cw is not None and cw["k"] == k:
                self._close(cid)

    def close_windows(self) -> None:
        """Close every open window (end of a replay)."""
        for cid in sorted(self._cw):
            self._close(cid)
        self._heap = []

    def _window_container(self, cid: str, origin: float, image: Callable[[], str]
                          ) -> ContainerInfo:
        """A closed window's container for `build_windows`: the inventory's, else the image
        its window saw (`image()`, asked only then); its windows count from `origin`."""
        st = self.inventory.get(self.host, cid)
        return ContainerInfo(container_id=cid, image=(st.image if st else "") or image(),
                             name=st.name if st else "", host=self.host, created=origin,
                             environment=self.environment)

    def _score_closed(self) -> None:
        if self._pending:
            self._count_pending()
        if not self._closed and not self._closed_new:
            return
        from model.features import build_windows  # heavy: only when scoring

        closed, self._closed = self._closed, []
        fresh, self._closed_new = self._closed_new, []
        # One build for the whole batch (a per-window call costs ~0.3 ms of fixed overhead): all
        # closed windows' records, restricted to the span the batch covers, then keep exactly the
        # (container, window) rows that closed. Rows depend only on their own container's records
        # and the lifecycle events inside their window, so batching does not change a feature.
        procs: list = []
        nets: dict[tuple[str, int], NetWindowAgg] = {}
        infos: dict[str, ContainerInfo] = {}
        start, end = math.inf, -math.inf
        w = self.window_s
        for cid, cw in closed:
            k = cw["k"]
            ws = cw["origin"] + k * w
            if ws < start:                  # min() and max() as comparisons: the same result
                start = ws
            if ws + w > end:
                end = ws + w
            if cw["p"]:
                procs.extend(cw["p"])
            nets[(cid, k)] = cw["n"]
            if cid not in infos:
                infos[cid] = self._window_container(cid, cw["origin"], lambda cw=cw: _img(cw))
        for cids, ks, origins, built in fresh:      # the same, an array at a time
            ws = np.asarray(origins, dtype=float) + np.asarray(ks, dtype=float) * w
            lo, hi = float(ws.min()), float((ws + w).max())
            if lo < start:
                start = lo
            if hi > end:
                end = hi
            for j, cid in enumerate(cids):
                if cid not in infos:
                    infos[cid] = self._window_container(cid, origins[j],
                                                        lambda j=j: built.image[j])
        life = [r for r in self._life_recent if start <= r.ts < end]
        # the rows of the closed windows only (each one's accumulator is in `nets`)
        fw = build_windows(procs, (), life, list(infos.values()), window_s=self.window_s,
                           start=start, end=end, environment=self.environment,
                           net_windows=nets, only_given=True,
                           new_windows=[(c, k, b) for c, k, _, b in fresh])
        horizon = self.data_time - 3 * self.window_s
        while self._life_recent and self._life_recent[0].ts < horizon:
            self._life_recent.popleft()
        if not len(fw):
            return
        fw.environment = self.environment
        self.stats.windows_scored += len(fw)
        if self.collect_windows:
            self.collected.append(fw)
        if self.window_sink is not None:
            try:
                self.window_sink(fw)
            except Exception as exc:
                log.warning("storing %d windows failed: %s", len(fw), exc)
        if self.baselines is None:
            return
        try:
            results = self.baselines.score(fw)
        except Exception as exc:
            log.warning("scoring %d windows failed: %s", len(fw), exc)
            return
        by_key: dict[tuple[str, int], dict[str, Any]] | None = None
        for i, r in enumerate(results):
            if self.on_window_scored:
                self.on_window_scored(r)
            if not r.is_anomaly or not r.container_id:
                continue
            devs = r.deviations or []
            # Signature: the set of the top deviating features. The same deviation repeating is
            # suppressed; a different one (a port sweep after a DNS burst) is a new alert.
            top = ",".join(sorted(str(d.get("feature", "")) for d in devs[:3]
                                  if isinstance(d, dict)))
            fallback = ""
            if r.fallback:
                fallback = (f"cold start: {r.image_key} has too few training windows; scored by "
                            f"the {r.environment!r} environment-wide baseline")
            host = fw.host[i] if i < len(fw.host) and fw.host[i] else self.host
            cand = rules.anomaly(r.window_start, host,
                                 self.container_ref(host, r.container_id, r.image),
                                 r.score, r.threshold, devs or r.explanation, fallback,
                                 (r.window_start, r.window_end), top,
                                 explanation_text=_deviation_text(r.explanation, r.fallback))
            if cand:
                cand.details["explanation_text"] = r.explanation
                cand.details["model_scope"] = r.model_scope
                info = infos.get(r.container_id)
                if info is not None:
                    k = int(round((r.window_start - info.created) / self.window_s))
                    if by_key is None:      # the closed windows by key: an anomaly's evidence
                        # (a window made as arrays kept no record: it has none, as its
                        # accumulator would have had none)
                        by_key = {(cid, cw["k"]): cw for cid, cw in closed}
                    cw = by_key.get((r.container_id, k))
                    if cw is not None:
                        cand.evidence.extend(rules.window_samples(cw["p"], cw["n"], devs))
                # The alert's time is when the deviation began; the window stays its own field.
                cand.ts = rules.first_evidence_time(cand.evidence, r.window_start)
                cand.details["window"] = {"start": r.window_start, "end": r.window_end}
                self._add(cand)



def _deviation_text(text: str, fallback: bool) -> str:
    """The model's explanation without its cold-start preamble ("<image> has N training windows
    (< M): scored by the environment-wide model of '<env>'; ..."): the fallback is stated
    separately on the alert, and the deviations are what a table has room for."""
    if fallback and "environment-wide model" in text and "; " in text:
        return text.split("; ", 1)[1]
    return text



#: What `_net_window` gives for a window its caller's rows make whole (`new_windows`).
_NEW = object()


def _img(cw: dict[str, Any]) -> str:
    """The window's image from its records: processes, then network rows, then lifecycle."""
    for r in cw["p"]:
        if r.image:
            return r.image
    if cw["n"].image:
        return cw["n"].image
    for r in cw["l"]:
        if r.image:
            return r.image
    return ""

