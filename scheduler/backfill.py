"""Backfill: replay what a host's sensors wrote over a day, per host, in one process or on Dask.

After a day a user has, per host, Zeek's rotated logs (`conn.2026-12-01-00-00-00.log.gz` as Zeek's
own rotation names them, `conn.00:00:00-01:00:00.log.gz` in a zeekctl archive, or the plain
`conn.log` of a `zeek -r` run) and osqueryd's results log with its rotated predecessors
(`osqueryd.results.log.N[.gz]` ... `.1`, then the current file). `discover(path)` turns a
directory into partitions, one per host, from one of these layouts:

    DIR/meta.json                                  a recording: one partition
    DIR/{zeek,osquery}/...                         one host's logs: one partition named DIR
    DIR/<host>/{zeek,osquery}/... or DIR/<host>/meta.json
                                                   a day: one partition per host directory

and says in one line (`LayoutError`) what is missing when none fits.

Each partition is replayed by `scheduler.replay.replay` through a fresh pipeline, as the
single-process run of a recording does: a host's windows, dedupe memory and suppression never mix
with another host's. That independence is what lets `run_backfill(..., client=...)` run the
partitions on the workers of a Dask cluster and still give the single-process result: the workers
return their alerts, the client commits each partition's alerts to the outbox of its state DB as
it arrives (a partition done is a partition never run again after a kill) and delivers the
outbox to the sinks once at the end, in the outbox's one order (time, then id).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from scheduler.alerting.alerts import Alert
from scheduler.collect.recording import (RESULTS_NAME, Recording, is_fixture_layout,
                                         osquery_result_files,
                                         recording_problem, unreadable_osquery_files,
                                         zeek_files_in)
from scheduler.config import Config
from scheduler.pipeline import ZEEK_STREAMS
from scheduler.replay import CHUNK

log = logging.getLogger(__name__)

LAYOUT_HELP = ("expected DIR/<host>/zeek/<stream>[.<stamp>].log[.gz] and/or "
               "DIR/<host>/osquery/osqueryd.results.log[.N][.gz], or a recording with meta.json "
               "(docs/scheduler.md, Backfill)")


class LayoutError(ValueError):
    """A backfill input that fits no layout; the message is one line naming the path."""


@dataclass(frozen=True)
class Partition:
    """One host's input: a recording, or the zeek/ and osquery/ directories of one host.

    Small and picklable: a Dask worker gets this, and reads the files itself."""

    name: str                       # the replay's state key and what the summary calls it
    label: str                      # the host directory's name
    recording: str = ""             # a recording directory (meta.json), else ""
    zeek_dir: str = ""
    osquery_dir: str = ""
    k8s_dir: str = ""
    host: str = ""                  # the pipeline's host: osquery's hostIdentifier, else label
    files: tuple[tuple[str, int], ...] = ()     # every input file in read order, with its size

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass
class PartitionResult:
    """What a partition's replay gives back (from a worker: alerts as objects, nothing else big)."""

    name: str
    label: str
    host: str
    alerts: list[Alert]
    repeats: list[dict[str, Any]]
    items: int
    lines: int
    bad_lines: int
    bytes: int
    seconds: float
    resumed_from: int = 0
    skipped: bool = False           # done in an earlier run (Dask mode): alerts from the state DB
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackfillResult:
    partitions: list[PartitionResult]
    alerts: list[Alert]             # every partition's, deduplicated on id, by (time, id)
    seconds: float

    # What this run read: partitions done in an earlier run (Dask mode) read nothing now.
    @property
    def ran(self) -> list[PartitionResult]:
        return [p for p in self.partitions if not p.skipped]

    @property
    def lines(self) -> int:
        return sum(p.lines for p in self.ran)

    @property
    def records(self) -> int:
        return sum(p.items for p in self.ran)

    @property
    def bad_lines(self) -> int:
        return sum(p.bad_lines for p in self.ran)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.ran)


# ------------------------------------------------------------------------------ discovery

def zeek_log_files(directory: Path) -> list[Path]:
    """The pipeline's Zeek streams in `directory`, each stream's files in the order the
    recording reader takes them (`collect.recording.zeek_files_in`: rotated first, by name; the
    current file last)."""
    by_stream = zeek_files_in(directory)
    return [p for s in ZEEK_STREAMS for p in by_stream.get(s, [])]


def _sniff_host(osquery_files: list[Path]) -> str:
    """The hostIdentifier of the first result row: Zeek records are attributed on the pipeline's
    host, which must be the name the osquery inventory rows carry, not the directory's."""
    from scheduler.collect.osquery_results import ParseStats, iter_results

    for p in osquery_files:
        for row in iter_results(p, ParseStats()):
            if row.host:
                return row.host
            break
    return ""


def _fingerprint(files: Iterable[tuple[str, int]], root: Path) -> str:
    """Eight hex digits over the input's file names and sizes: a resumed replay continues at an
    item position, which only means something for the same input."""
    h = hashlib.sha1()
    for path, size in files:
        h.update(f"{Path(path).relative_to(root)}\t{size}\n".encode())
    return h.hexdigest()[:8]


def _is_zeek_name(name: str) -> bool:
    return name.split(".", 1)[0] in ZEEK_STREAMS and (name.endswith(".log")
                                                     or name.endswith(".log.gz"))


def host_partition(path: Path, label: str | None = None) -> Partition:
    """The partition of one host directory (zeek/ and/or osquery/ and optionally k8s/ inside),
    or of a flat Zeek directory (a `zeek -r` run's conn.log ...). Raises LayoutError."""
    label = label or path.name
    zdir = path / "zeek" if (path / "zeek").is_dir() else \
        (path if any(_is_zeek_name(p.name) for p in path.iterdir() if p.is_file()) else None)
    odir = path / "osquery" if (path / "osquery").is_dir() else None
    if zdir is None and odir is None:
        raise LayoutError(f"{path}: no zeek/ or osquery/ directory and no Zeek logs; {LAYOUT_HELP}")
    if odir is not None:
        bad = unreadable_osquery_files(odir)
        if bad:
            raise LayoutError(f"{bad[0]}: compressed in a format the reader cannot open "
                              f"(osqueryd's logger_rotate writes zstd): decompress first "
                              f"(zstd -d --rm {odir}/{RESULTS_NAME}.*.zst)")
    zfiles = zeek_log_files(zdir) if zdir is not None else []
    ofiles = osquery_result_files(odir) if odir is not None else []
    if not zfiles and not ofiles:
        where = " or ".join(str(d) for d in (zdir, odir) if d is not None)
        raise LayoutError(f"{where}: no Zeek logs ({'/'.join(ZEEK_STREAMS)}[.<stamp>].log[.gz]) "
                          f"and no {RESULTS_NAME}[.N][.gz]; {LAYOUT_HELP}")
    kdir = path / "k8s" if (path / "k8s").is_dir() else None
    files = tuple((str(p), p.stat().st_size) for p in [*ofiles, *zfiles])
    return Partition(name=f"{label}#{_fingerprint(files, path)}", label=label,
                     zeek_dir=str(zdir or ""), osquery_dir=str(odir or ""),
                     k8s_dir=str(kdir or ""), host=_sniff_host(ofiles) or label, files=files)


def recording_partition(path: Path) -> Partition:
    rec = Recording(path)
    files = [*rec.osquery_files(), *(p for fs in rec.zeek_files().values() for p in fs)]
    return Partition(name=rec.name, label=rec.name, recording=str(path), host=rec.host,
                     files=tuple((str(p), p.stat().st_size) for p in files))


def _looks_like_host(path: Path) -> bool:
    return (path / "zeek").is_dir() or (path / "osquery").is_dir()


def discover(path: str | Path) -> list[Partition]:
    """The partitions of a backfill input (layouts in the module docstring), hosts in name order.

    Raises LayoutError with one line that names the path and what is missing."""
    p = Path(path)
    problem = recording_problem(p)
    if problem is None:
        return [recording_partition(p)]
    if not p.is_dir() or (p / "meta.json").exists() or is_fixture_layout(p):
        raise LayoutError(problem)
    if _looks_like_host(p) or any(_is_zeek_name(c.name) for c in p.iterdir() if c.is_file()):
        return [host_partition(p)]
    parts: list[Partition] = []
    for sub in sorted(c for c in p.iterdir() if c.is_dir()):
        if (sub / "meta.json").is_file():
            problem = recording_problem(sub)
            if problem:
                raise LayoutError(problem)
            parts.append(recording_partition(sub))
        elif _looks_like_host(sub):
            parts.append(host_partition(sub))
        else:
            log.info("backfill: %s is no host directory (no zeek/, osquery/ or meta.json): "
                     "skipped", sub)
    if not parts:
        raise LayoutError(f"{p}: not a recording (no meta.json) and no host directories in it; "
                          f"{LAYOUT_HELP}")
    check_unique(parts)
    return parts


def check_unique(parts: list[Partition]) -> None:
    """Two partitions of one name would share a replay checkpoint (and a Dask result slot): the
    second would resume inside the first's data. Raises LayoutError naming the two."""
    seen: dict[str, Partition] = {}
    for x in parts:
        if x.name in seen:
            where = [seen[x.name].recording or seen[x.name].zeek_dir or seen[x.name].osquery_dir,
                     x.recording or x.zeek_dir or x.osquery_dir]
            raise LayoutError(f"{where[1]}: named {x.label!r} like {where[0]} (a replay's "
                              f"checkpoint is per name: give recordings distinct meta.json names)")
        seen[x.name] = x


# ------------------------------------------------------------------------------ one partition

def materialize(part: Partition, root: Path) -> Path:
    """A recording directory for a host partition: meta.json and symlinks to the host's own
    zeek/, osquery/ and k8s/ directories (nothing copied), under `root`."""
    if part.recording:
        return Path(part.recording)
    d = root / "rec"
    d.mkdir(parents=True)
    for sub, src in (("zeek", part.zeek_dir), ("osquery", part.osquery_dir), ("k8s", part.k8s_dir)):
        if src:
            (d / sub).symlink_to(Path(src).resolve(), target_is_directory=True)
    (d / "meta.json").write_text(json.dumps({
        "name": part.name, "host": part.host, "environment": "default",
        "source": f"stowaway replay (backfill) of {part.label}", "time_range": [0, 0]}))
    return d


def _line_counts(stats: dict[str, Any]) -> tuple[int, int]:
    """(lines read, bad lines) from a replay's stats: Zeek and osquery results together."""
    z, o = stats.get("zeek", {}), stats.get("osquery", {})
    k = stats.get("k8s", {})
    lines = int(z.get("lines", 0)) + int(o.get("lines", 0)) + int(k.get("lines", 0))
    bad = int(z.get("bad_lines", 0)) + int(o.get("malformed", 0))
    return lines, bad


def replay_partition(part: Partition, config: Config | None = None, baselines: Any = None, *,
                     sinks: Any = None, state_db: str | Path | None = None, resume: bool = True,
                     progress: bool = False, chunk: int = CHUNK,
                     after_chunk: Callable[[int], None] | None = None) -> PartitionResult:
    """Replay one partition through a fresh pipeline (`scheduler.replay.replay`, with its
    checkpoints when `state_db` is given). Runs on a Dask worker as well as here."""
    from scheduler.replay import replay

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="stowaway-backfill-"))
    try:
        rec = materialize(part, tmp)
        res = replay(rec, config, baselines, sinks=sinks, state_db=state_db, chunk=chunk,
                     progress=progress, resume=resume, after_chunk=after_chunk)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines, bad = _line_counts(res.stats)
    return PartitionResult(name=part.name, label=part.label, host=part.host, alerts=res.alerts,
                           repeats=res.repeats, items=res.items, lines=lines, bad_lines=bad,
                           bytes=part.bytes, seconds=time.monotonic() - t0,
                           resumed_from=res.resumed_from, stats=res.stats)


# ------------------------------------------------------------------------------ all partitions

def merge_alerts(results: Iterable[PartitionResult]) -> list[Alert]:
    """Every partition's alerts in one order, the same whoever ran them: by (time, id), the
    first of a repeated id kept (the outbox keeps the first too)."""
    seen: dict[str, Alert] = {}
    for r in results:
        for a in r.alerts:
            seen.setdefault(a.id, a)
    return sorted(seen.values(), key=lambda a: (a.time, a.id))


def partition_line(r: PartitionResult) -> str:
    how = " (done in an earlier run)" if r.skipped else \
        (f" (resumed at record {r.resumed_from})" if r.resumed_from else "")
    return (f"{r.label}: host {r.host}, {r.lines:,} lines, {r.items:,} records, "
            f"{r.bad_lines:,} bad lines, {len(r.alerts)} alerts in {r.seconds:.1f} s{how}")


def summary_line(res: BackfillResult) -> str:
    """The one line a backfill ends with: what was read, what came of it, and how fast."""
    rate = res.lines / res.seconds if res.seconds > 0 else 0.0
    skipped = len(res.partitions) - len(res.ran)
    return (f"backfill: {len(res.partitions)} partition(s)"
            f"{f' ({skipped} done in an earlier run)' if skipped else ''}, {res.lines:,} lines read "
            f"({res.bytes / 1e6:,.1f} MB), {res.records:,} records, {res.bad_lines:,} bad lines, "
            f"{len(res.alerts)} alerts in {res.seconds:.1f} s: {rate:,.0f} lines/s")


class ReadWatcher:
    """How many bytes of a partition's files the replay has read, from the file positions in
    /proc/self/fdinfo (Linux; elsewhere it counts nothing until the partition ends).

    `replay()` reads its input inside itself, with no hook; watching the positions of the files
    it has open gives byte progress while a large host loads, without one. Files are counted in
    the partition's read order: every file before the furthest one seen open is done."""

    def __init__(self, files: Iterable[tuple[str, int]]) -> None:
        self.order = {str(Path(f).resolve()): i for i, (f, _) in enumerate(files)}
        self.sizes = [size for _, size in files]
        self.furthest = -1
        self.best = 0

    def _open_positions(self) -> dict[int, int]:
        out: dict[int, int] = {}
        try:
            fds = Path("/proc/self/fd").iterdir()
            for fd in fds:
                try:
                    i = self.order.get(str(fd.readlink()))
                    if i is None:
                        continue
                    info = (Path("/proc/self/fdinfo") / fd.name).read_text()
                except OSError:         # closed between the listing and the read
                    continue
                pos = next((int(ln.split()[1]) for ln in info.splitlines()
                            if ln.startswith("pos:")), 0)
                out[i] = max(out.get(i, 0), pos)
        except OSError:
            return {}
        return out

    def read_bytes(self) -> int:
        """Bytes read so far (never less than a previous answer)."""
        pos = self._open_positions()
        if pos:
            self.furthest = max(self.furthest, max(pos))
        if self.furthest >= 0:
            n = sum(self.sizes[:self.furthest]) + min(pos.get(self.furthest, 0),
                                                      self.sizes[self.furthest])
            self.best = max(self.best, n)
        return self.best


class _Progress:
    """A tqdm bar over the input's bytes (tqdm's B/s), advanced while a partition is read (a
    `ReadWatcher` polled by a thread) and to its end when it is done, with the lines/s so far."""

    POLL_S = 0.5

    def __init__(self, parts: list[Partition], enabled: bool, stream: TextIO) -> None:
        self.t0 = time.monotonic()
        self.lines = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=sum(p.bytes for p in parts), unit="B", unit_scale=True,
                            desc=f"backfill {len(parts)} partition(s)", file=stream,
                            dynamic_ncols=True)
        self._counted = 0               # bytes of the partition being read, already on the bar
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, part: Partition) -> None:
        """Follow `part`'s reading until `done`."""
        if self.bar is None:
            return
        watcher, self._counted = ReadWatcher(part.files), 0
        self._stop = threading.Event()

        def poll(stop: threading.Event = self._stop) -> None:
            while not stop.wait(self.POLL_S):
                n = watcher.read_bytes()
                if n > self._counted:
                    self.bar.update(n - self._counted)
                    self._counted = n
        self._thread = threading.Thread(target=poll, name="backfill-progress", daemon=True)
        self._thread.start()

    def _unwatch(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def done(self, r: PartitionResult) -> None:
        self._unwatch()
        self.lines += r.lines
        if self.bar is not None:
            rate = self.lines / max(time.monotonic() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} lines/s", refresh=False)
            self.bar.update(max(r.bytes - self._counted, 0))
        self._counted = 0

    def skip(self, r: PartitionResult) -> None:
        """A partition done in an earlier run: off the bar's total, not counted as read now."""
        if self.bar is not None:
            self.bar.total -= r.bytes
            self.bar.refresh()

    def close(self) -> None:
        self._unwatch()
        if self.bar is not None:
            self.bar.close()


def _done_key(part: Partition) -> str:
    # not replay's own key (replay:<name>): that one holds a pipeline state to resume from
    return f"backfill:{part.name}"


def _mark_done(store: Any, part: Partition, r: PartitionResult,
               alerts: list[Alert] = (), repeats: list[dict[str, Any]] = ()) -> None:
    """Record a finished partition (and, on Dask, its alerts in the outbox) in one transaction."""
    meta = {k: v for k, v in vars(r).items()
            if k not in ("alerts", "repeats", "stats", "skipped", "seconds")}
    store.commit(_done_key(part), {"result": meta}, list(alerts), list(repeats))


def _done_result(store: Any, part: Partition, source: str) -> PartitionResult | None:
    """The result of a partition an earlier run finished, its alerts from the outbox (`source`:
    replay's `replay:<name>` in one process, `backfill:<name>` on Dask); None if not finished."""
    from scheduler.alerting.alerts import alert_from_dict

    st = store.load(_done_key(part))
    if st is None:
        return None
    return PartitionResult(**{**st["result"], "alerts": [
        alert_from_dict(d) for d in store.all_alerts(source)],
        "repeats": store.repeats(source), "skipped": True, "seconds": 0.0})


def _run_on_dask(parts: list[Partition], client: Any, config: Config, baselines: Any,
                 sinks: Any, state_db: str | Path | None, resume: bool, bar: _Progress,
                 report: Callable[[PartitionResult], None]) -> list[PartitionResult]:
    """Partitions on the cluster's workers; each finished one committed to the state DB's outbox
    as it arrives, the outbox delivered once when all are in."""
    from dask.distributed import as_completed

    from scheduler.replay import ReplayStore, deliver_outbox

    store = ReplayStore(state_db) if state_db else None
    results: dict[str, PartitionResult] = {}
    try:
        todo = []
        for p in parts:
            r = _done_result(store, p, _done_key(p)) if (store is not None and resume) else None
            if r is not None:
                results[p.name] = r
                bar.skip(r)
                report(r)
            else:
                todo.append(p)
        # Unique keys (hash=False): a content-hashed key of an earlier run may still be being
        # released on the scheduler, and a task then finds its input lost.
        shared = client.scatter([config, baselines], broadcast=True, hash=False) if todo \
            else [None, None]
        futures = [client.submit(replay_partition, p, shared[0], shared[1], pure=False,
                                 key=f"stowaway-backfill-{p.name}-{time.time_ns()}")
                   for p in todo]
        for fut in as_completed(futures):
            r: PartitionResult = fut.result()
            if store is not None:
                _mark_done(store, next(p for p in todo if p.name == r.name), r, r.alerts,
                           r.repeats)
            results[r.name] = r
            bar.done(r)
            report(r)
        if store is not None:
            deliver_outbox(store, sinks)
        elif sinks is not None:
            sinks.emit(merge_alerts(results[p.name] for p in parts))
    finally:
        if store is not None:
            store.close()
    return [results[p.name] for p in parts]


def _run_here(parts: list[Partition], config: Config, baselines: Any, sinks: Any,
              state_db: str | Path | None, resume: bool, progress: bool, chunk: int,
              after_chunk: Callable[[int], None] | None, bar: _Progress,
              report: Callable[[PartitionResult], None]) -> list[PartitionResult]:
    """Partitions one after the other in this process. A partition finished in an earlier run
    is not read again (replay would load a whole host's day only to find its checkpoint at the
    end); one a kill interrupted resumes at replay's last committed chunk."""
    from scheduler.replay import ReplayStore

    results = []
    for p in parts:
        marks = ReplayStore(state_db) if state_db else None
        try:
            r = _done_result(marks, p, f"replay:{p.name}") if (marks and resume) else None
        finally:
            if marks is not None:
                marks.close()
        if r is not None:
            bar.skip(r)
        else:
            bar.watch(p)
            r = replay_partition(p, config, baselines, sinks=sinks, state_db=state_db,
                                 resume=resume, progress=progress, chunk=chunk,
                                 after_chunk=after_chunk)
            bar.done(r)
            if state_db:
                marks = ReplayStore(state_db)
                try:
                    _mark_done(marks, p, r)
                finally:
                    marks.close()
        results.append(r)
        report(r)
    return results


def run_backfill(parts: list[Partition], config: Config | None = None, baselines: Any = None,
                 *, sinks: Any = None, state_db: str | Path | None = None, resume: bool = True,
                 progress: bool = False, client: Any = None, chunk: int = CHUNK,
                 stream: TextIO | None = None,
                 after_chunk: Callable[[int], None] | None = None) -> BackfillResult:
    """Replay every partition, here one after the other or on the Dask `client`'s workers.

    With `state_db`, a partition an earlier run finished is not run again (its alerts come from
    the state DB); here, an unfinished one resumes at replay's own last committed chunk; on Dask a
    partition is the unit of work. Either way a line per
    partition and the summary line go to `stream` (stderr)."""
    config = config or Config()
    stream = stream or sys.stderr
    t0 = time.monotonic()
    bar = _Progress(parts, progress, stream)

    def report(r: PartitionResult) -> None:
        line = partition_line(r)
        if bar.bar is not None:
            bar.bar.write(line, file=stream)
        else:
            print(line, file=stream)

    try:
        if client is not None:
            results = _run_on_dask(parts, client, config, baselines, sinks, state_db, resume,
                                   bar, report)
        else:
            results = _run_here(parts, config, baselines, sinks, state_db, resume, progress,
                                chunk, after_chunk, bar, report)
    finally:
        bar.close()
    res = BackfillResult(partitions=results, alerts=merge_alerts(results),
                         seconds=time.monotonic() - t0)
    print(summary_line(res), file=stream)
    return res
