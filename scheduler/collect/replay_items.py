"""The replay's items in one time order, streamed: a host-day of Zeek logs never whole in memory.

A replay feeds every item of a recording (osquery rows, Zeek rows, audit records) in one
deterministic order: by time, then source (osquery, each Zeek stream, Kubernetes audit), then
reading order. Deterministic order is what makes a resumed replay produce the same alert ids.

Why streamed: sorting needs every item's time, and a Zeek row's payload is its batch, which
holds the block of text it was parsed from (a rule may need the row whole). Holding all of a
busy host's day was ~600 B a line: gigabytes. So the files are read twice:

1. an index pass reads each file through the engine's reader and keeps, per batch, only its
   size and the earliest time among its rows (and the batches themselves while they fit in
   `keep_rows`: small recordings are read once);
2. the feed reads the files again, a batch at a time, as late as order allows: batch j of a
   file must be in memory before the order reaches the earliest time of batches j, j+1, ...
   (a file is read front to back; a conn.log is written when connections end, so its batches'
   earliest times are not increasing). Every row earlier than the next batch to read is then in
   memory, and those rows, sorted, are exactly the next items of the whole order. A batch is
   dropped when its last row has been handed out.

osquery results are read the same way, in batches of `OSQUERY_BATCH` rows (process events on a
busy host are the other stream that grows with the day); the replay keeps only the container
records it observes before the first item (inventory, events, NAT flows). Kubernetes audit
records are read whole.

Memory is then the batches whose rows straddle the order's front (one or two per file for logs
written in time order; for a conn.log, its batches written within the longest connection's
duration) plus the audit records and the kept batches.

The feed checks that each batch it reads again has the size the index saw: a file that changed
between the passes stops the replay with an error naming it, rather than feeding other data. A
file that only grew (a log still being written: today's conn.log, osqueryd's current results
file) is replayed as far as the index pass read it.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

#: Batches of the index pass kept for the feed while their rows total at most this: a recording
#: this small is read once. Beyond it a file's batches are read again (about 50 MB of batches).
KEEP_ROWS = 100_000
#: osquery result rows in one batch of the feed
OSQUERY_BATCH = 4096


@dataclass
class SourceFile:
    """One input file (or one reader of several: a host's osquery results) as the index pass
    saw it. `read()` reads it from the start and yields the same batches each time;
    `times(batch)` is each row's sort time. A batch is a ZeekBatch (`kind` "zrow": its rows go
    to the dispatch as runs) or a list of rows handed out one by one as (`kind`, row)."""

    source: int                                   # 0 osquery, 1 + a Zeek stream's index
    name: str                                     # for errors
    read: Callable[[], Iterator[Any]]
    times: Callable[[Any], np.ndarray]
    kind: str = "zrow"
    sizes: list[int] = field(default_factory=list)
    earliest: list[float] = field(default_factory=list)
    kept: list[Any] | None = None                 # every batch, when they fit in the budget
    base: int = 0                                 # reading index of the file's first row

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def due(self) -> np.ndarray:
        """When each batch must be in memory: the earliest time of it and every later batch."""
        e = np.asarray(self.earliest, dtype=float)
        return np.minimum.accumulate(e[::-1])[::-1] if e.size else e


def index_file(f: SourceFile, budget: list[int],
               read: Callable[[], Iterator[Any]] | None = None) -> None:
    """The index pass over one file (through `read`, default `f.read`: the index pass's reader
    may count what it reads): sizes and earliest times; its batches kept while `budget[0]`
    (rows, shared by the files of a recording) allows, else none of them."""
    kept: list[Any] | None = []
    for batch in (read or f.read)():
        t = f.times(batch)
        f.sizes.append(len(batch))
        f.earliest.append(float(t.min()) if t.size else np.inf)
        if kept is not None:
            if budget[0] >= len(batch):
                budget[0] -= len(batch)
                kept.append(batch)
            else:
                budget[0] += sum(len(b) for b in kept)
                kept = None
    f.kept = kept


class ReplayItems:
    """A recording's items in the replay's order (see module docstring). `others` are the
    items read whole as (time, source, kind, payload) in reading order; `files` the indexed
    files in reading order (sources in order, a source's files in order)."""

    def __init__(self, others: list[tuple[float, int, str, Any]],
                 files: list[SourceFile]) -> None:
        n_other = len(others)
        ts = np.fromiter((o[0] for o in others), float, n_other)
        src = np.fromiter((o[1] for o in others), np.int64, n_other)
        # lexsort is stable: ties in (time, source) stay in reading order
        self._other_order = np.lexsort((src, ts))
        self._other_ts = ts[self._other_order]
        self._other_src = src
        self._others = [(t, kind, payload) for t, _, kind, payload in others]
        self._n_other = n_other
        self.files = files
        self.containers: list[Any] = []                # what the replay observes up front
        base = n_other
        for f in files:
            f.base = base
            base += f.rows
        self._len = base

    def __len__(self) -> int:
        return self._len

    def cursor(self) -> "Cursor":
        """A reader of the whole order from its first item (each reads the files again)."""
        return Cursor(self)


class Cursor:
    """The items of a `ReplayItems` in order, taken front to back: `dispatch_items(n)` (the
    replay's feed), `items(n)` (one tuple each: a resumed replay's re-feed), `skip(n)`,
    `skip_before(t, limit)`. `pos` is the position of the next item."""

    def __init__(self, items: ReplayItems) -> None:
        self._it = items
        self.pos = 0
        self._opos = 0                                 # next non-Zeek item (in its order)
        self._readers: list[Iterator[Any] | None] = [None] * len(items.files)
        self._next = [0] * len(items.files)           # next batch to read, per file
        self._due = [f.due() for f in items.files]
        self._offsets = [np.concatenate(([0], np.cumsum(f.sizes, dtype=np.int64))).tolist()
                         for f in items.files]
        self._heap = [(float(d[0]), fi) for fi, d in enumerate(self._due) if d.size]
        heapq.heapify(self._heap)
        self._batches: dict[int, Any] = {}            # batches in memory, by id
        self._left: dict[int, int] = {}               # their rows not handed out yet
        self._n_batches = 0
        self._kinds: dict[int, str] = {}               # their kind ("zrow": Zeek rows)
        # rows read and not handed out: time, source, reading index, batch id, row
        self._buf = [np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64),
                     np.zeros(0, np.int64), np.zeros(0, np.int64)]
        # the front: the next items in order (time, batch id or -1, row or index of the item
        # read whole) and how far they were taken
        self._seg = (np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._at = 0
        self.last_times = np.zeros(0)                  # the times of the items last taken

    # -- reading, as late as the order allows --------------------------------------------------
    def _read_batch(self, fi: int) -> None:
        f = self._it.files[fi]
        j = self._next[fi]
        if f.kept is not None:
            batch = f.kept[j]
        else:
            reader = self._readers[fi]
            if reader is None:
                reader = self._readers[fi] = iter(f.read())
            batch = next(reader, None)
            last = j + 1 == len(f.sizes)
            if batch is None or len(batch) < f.sizes[j] or (len(batch) > f.sizes[j] and not last):
                raise RuntimeError(f"{f.name} changed while it was replayed (batch {j}: "
                                   f"{f.sizes[j]} rows when indexed, "
                                   f"{'none' if batch is None else len(batch)} now)")
            if len(batch) > f.sizes[j]:
                # a log still being written (today's conn.log, osqueryd's current results
                # file): what was appended after the index pass is left for the next run
                log.info("%s grew while it was replayed: %d rows appended after the index "
                         "pass are not replayed", f.name, len(batch) - f.sizes[j])
        self._next[fi] = j + 1
        if j + 1 < len(f.sizes):
            heapq.heappush(self._heap, (float(self._due[fi][j + 1]), fi))
        else:
            self._readers[fi] = None
        n = f.sizes[j]          # the rows indexed
        if not n:
            return
        bid = self._n_batches
        self._n_batches += 1
        self._batches[bid] = batch
        self._left[bid] = n
        self._kinds[bid] = f.kind
        first = f.base + self._offsets[fi][j]
        add = [np.asarray(f.times(batch), dtype=float)[:n],
               np.full(n, f.source, dtype=np.int64),
               np.arange(first, first + n, dtype=np.int64),
               np.full(n, bid, dtype=np.int64), np.arange(n, dtype=np.int64)]
        self._buf = [np.concatenate((a, b)) for a, b in zip(self._buf, add)]

    def _fill(self) -> bool:
        """The next stretch of the order into the front; False when everything was handed out."""
        it = self._it
        while True:
            bound = self._heap[0][0] if self._heap else np.inf
            ready = self._buf[0] < bound
            o_end = int(np.searchsorted(it._other_ts, bound, side="left")) \
                if np.isfinite(bound) else it._n_other
            if ready.any() or o_end > self._opos:
                break
            if not self._heap:
                return False
            _, fi = heapq.heappop(self._heap)
            self._read_batch(fi)
        z = [a[ready] for a in self._buf]
        self._buf = [a[~ready] for a in self._buf]
        og = it._other_order[self._opos:o_end]
        ts = np.concatenate((it._other_ts[self._opos:o_end], z[0]))
        src = np.concatenate((it._other_src[og], z[1]))
        gidx = np.concatenate((og.astype(np.int64), z[2]))
        bid = np.concatenate((np.full(og.size, -1, dtype=np.int64), z[3]))
        row = np.concatenate((og.astype(np.int64), z[4]))
        self._opos = o_end
        order = np.lexsort((gidx, src, ts))
        self._seg = (ts[order], bid[order], row[order])
        self._at = 0
        return True

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(time, batch id or -1, row or non-Zeek index) of the next n items (fewer at the end)."""
        parts: list[tuple[np.ndarray, ...]] = []
        while n > 0:
            left = len(self._seg[0]) - self._at
            if left <= 0:
                if not self._fill():
                    break
                continue
            k = min(n, left)
            a = self._at
            parts.append(tuple(col[a:a + k] for col in self._seg))
            self._at += k
            n -= k
        if not parts:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ts, bid, row = (np.concatenate(p) if len(parts) > 1 else p[0]
                        for p in zip(*parts))
        self.pos += len(ts)
        return ts, bid, row

    def _held(self, bid: np.ndarray) -> tuple[dict[int, Any], dict[int, str]]:
        """(the batches the taken rows `bid` come from, their kinds), by batch id; batches
        whose rows are all out are dropped from the cursor (the caller's dicts keep them for
        this chunk)."""
        zb = bid[bid >= 0]
        if not zb.size:
            return {}, {}
        ids, counts = np.unique(zb, return_counts=True)
        held, kinds = {}, {}
        for b, c in zip(ids.tolist(), counts.tolist()):
            held[b], kinds[b] = self._batches[b], self._kinds[b]
            self._left[b] -= c
            if not self._left[b]:
                del self._left[b], self._batches[b], self._kinds[b]
        return held, kinds

    # -- taking --------------------------------------------------------------------------------
    def dispatch_items(self, n: int) -> list[tuple[str, Any]]:
        """The next n items for `Pipeline.dispatch`: each non-Zeek item as (kind, payload), each
        run of consecutive Zeek rows as one ("zrun", (batches by id, batch id of each row,
        row)). Their times are left in `last_times` (the replay's checkpoint keeps one)."""
        ts, bid, row = self._take(n)
        self.last_times = ts
        held, kinds = self._held(bid)
        zb = [b for b, k in kinds.items() if k == "zrow"]
        zeek = np.isin(bid, zb) if zb else np.zeros(len(bid), dtype=bool)
        cuts = (np.flatnonzero(zeek[1:] != zeek[:-1]) + 1).tolist()
        out: list[tuple[str, Any]] = []
        others = self._it._others
        for a, b in zip([0] + cuts, cuts + [len(bid)]):
            if a == b:
                continue
            if zeek[a]:
                out.append(("zrun", (held, bid[a:b], row[a:b])))
            else:
                out.extend(others[r][1:] if k < 0 else (kinds[k], held[k][r])
                           for k, r in zip(bid[a:b].tolist(), row[a:b].tolist()))
        return out

    def items(self, n: int) -> list[tuple[float, str, Any]]:
        """The next n items as (time, kind, payload), a Zeek row as ("zrow", (batch, row))."""
        ts, bid, row = self._take(n)
        held, kinds = self._held(bid)
        others = self._it._others
        return [others[r] if b < 0 else
                (t, "zrow", (held[b], r)) if kinds[b] == "zrow" else (t, kinds[b], held[b][r])
                for t, b, r in zip(ts.tolist(), bid.tolist(), row.tolist())]

    def skip(self, n: int) -> float | None:
        """Pass over the next n items; the time of the last one passed (None: none)."""
        last = None
        while n > 0:
            ts, bid, _ = self._take(min(n, 65536))
            if not len(ts):
                break
            self._held(bid)
            last = float(ts[-1])
            n -= len(ts)
        return last

    def skip_before(self, t: float, limit: int) -> None:
        """Pass over the items before time `t`, stopping at position `limit` at the latest."""
        while self.pos < limit:
            if self._at >= len(self._seg[0]) and not self._fill():
                return
            seg_ts = self._seg[0]
            stop = min(int(np.searchsorted(seg_ts, t, side="left")),
                       self._at + (limit - self.pos))
            if stop > self._at:
                self.skip(stop - self._at)
            if self._at < len(seg_ts):
                return

    @property
    def batches_held(self) -> int:
        """Batches in memory now (read, rows not all handed out): what bounds the feed's memory."""
        return len(self._batches)
