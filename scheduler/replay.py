"""Batch replay of recordings, training from recordings, and the ground-truth check.

`replay(recording, ...)`: every record of a recording is put in one time order and fed to a fresh
`scheduler.pipeline.Pipeline` in chunks. After each chunk the alerts go to an outbox table and the
pipeline state (aggregator, churn counters, open windows, position in the stream) is committed in
the *same* SQLite transaction (`ReplayStore`); the outbox is then delivered to the sinks, which drop
ids they already have. A kill -9 anywhere therefore resumes at the last committed chunk and yields
the same alerts, none twice.

`train_from_recordings` builds baselines from exactly the windows a replay scores;
`check_ground_truth` says which labelled action of a recording has its alert, and how.
"""
from __future__ import annotations

import json
import logging
import time
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from scheduler.alerting.alerts import Alert
from scheduler.config import Config
from scheduler.gcfreeze import frozen_setup
from scheduler.collect.osquery_results import ParseStats as OsqueryStats
from scheduler.alerting.outbox import AlertOutbox, deliver_outbox  # deliver_outbox: re-exported
from scheduler.collect.k8s_audit import AuditStats, recording_records
from scheduler.pipeline import (CONTAINER_TABLES, PIPELINE_SCHEMA, ZEEK_STREAMS, Pipeline,
                                ingest_fields, item_time, kept_fields,
                                passive_fields)
from scheduler.collect.replay_items import (KEEP_ROWS, OSQUERY_BATCH, ReplayItems, SourceFile,
                                            index_file)

log = logging.getLogger(__name__)

# A resumed replay re-feeds (without rules) this much data before its checkpoint, to rebuild the
# open windows, the geo detector's remembered DNS answers (TTL, capped at 1 h) and the dedupe memory.
REFEED_HORIZON_S = 3700.0
#: Batches of a Zeek file the feed reads ahead of the engine, in a thread
#: (`scheduler.collect.readahead`): its parse overlaps the engine's work on a second core.
FEED_READ_AHEAD = 2
#: Blocks of a .gz Zeek file read and inflated ahead of its parse, in a thread (both passes).
INFLATE_AHEAD = 2
#: Bytes of a Zeek file a batch holds in a replay (the daemon reads what a tick brings): a
#: batch has fixed costs in the reader and the engine, and once the engine's per-window and
#: per-row work had shrunk they were ~15 % of a replay's CPU at 1 MiB (~6,000 http lines).
#: Two batches are read ahead, so ~4 MiB of text is in flight (docs/scheduler.md,
#: "2026-12-04, night").
FEED_BATCH_BYTES = 2 << 20
#: Items fed between two flushes (and, with a state db, two committed checkpoints). Each flush
#: has a fixed cost (a dispatch, attribution and window counting over the chunk's arrays, the
#: closed windows built, a checkpoint): at 2,000 items it was about a fifth of the engine's time
#: on an http.log; at 8,000 the engine alone takes ~23 % less time there, a 1,000,000-line
#: replay with a state db ~15 % less (docs/scheduler.md, "2026-12-04, evening"); 16,000 goes
#: with `FEED_BATCH_BYTES` (about one 2 MiB batch of an http.log a flush). The alerts and
#: the windows do not depend on it (every bundled recording, 500 to 50,000 items a chunk); only
#: the order in which the sinks receive alerts of different flushes does. A kill costs at most
#: one chunk's work again.
CHUNK = 16000


@dataclass
class ReplayResult:
    name: str
    alerts: list[Alert]
    stats: dict[str, Any]
    resumed_from: int = 0
    items: int = 0
    windows: list[Any] = field(default_factory=list)
    environment: str = "default"
    repeats: list[dict[str, Any]] = field(default_factory=list)
    # image -> destinations it contacted (training replays: the beacon rule's baseline)
    misuse_baseline: dict[str, list[str]] = field(default_factory=dict)


def load_recording_items(rec_dir: str | Path, stats: dict[str, Any] | None = None,
                         streams: Iterable[str] = ZEEK_STREAMS,
                         keep_rows: int = KEEP_ROWS,
                         read_ahead: bool = True) -> tuple[Any, ReplayItems]:
    """All items of a recording in one deterministic time order (`ReplayItems`, streamed): by
    time, then source (osquery, each Zeek stream, Kubernetes audit), then reading order.

    The osquery results and the Zeek files are indexed here (read once, counting malformed
    lines in `stats`); a cursor reads them again as the order comes to them, unless their
    batches fit in `keep_rows` rows (`scheduler.collect.replay_items`). The container records the
    replay observes up front are kept: `ReplayItems.containers`, in the order's order.
    `read_ahead` (`sources.read_ahead`): Zeek files are inflated and parsed ahead in threads;
    False reads them in the caller's thread."""
    from scheduler.collect.recording import Recording
    from scheduler.collect.zeeklog import ParseStats as ZeekStats

    rec = Recording(rec_dir)
    ostats = OsqueryStats()
    zstats = ZeekStats()
    budget = [keep_rows]
    containers: list[tuple[float, int, Any]] = []
    osq = SourceFile(source=0, name=f"{rec_dir} (osquery results)",
                     read=_osquery_reader(rec), times=_osquery_times, kind="osq")
    index_file(osq, budget, _osquery_reader(rec, ostats, containers))
    files: list[SourceFile] = [osq]
    for si, stream in enumerate(streams):
        for path in rec.stream_files(stream):
            f = SourceFile(source=1 + si, name=str(path), times=_row_times,
                           read=zeek_reader(path, stream, ahead=FEED_READ_AHEAD,
                                            threads=read_ahead))
            index_file(f, budget, zeek_reader(path, stream, zstats, threads=read_ahead))
            files.append(f)
    others: list[tuple[float, int, str, Any]] = []       # (ts, source, kind, payload)
    kstats = AuditStats()
    for r in recording_records(rec_dir, kstats):      # k8s/audit.log (docs/kubernetes.md)
        others.append((r.ts, 1 + len(ZEEK_STREAMS), "k8s", r))
    items = ReplayItems(others, files)
    containers.sort(key=lambda c: (c[0], c[1]))
    items.containers = [row for _, _, row in containers]
    if stats is not None:
        stats["osquery"] = {"lines": ostats.lines, "rows": ostats.rows,
                            "malformed": ostats.malformed}
        if kstats.lines:
            stats["k8s"] = kstats.to_dict()
        stats["zeek"] = {k: v for k, v in vars(zstats).items()
                         if isinstance(v, (int, float, dict))} if hasattr(zstats, "__dict__") else \
            {f: getattr(zstats, f) for f in getattr(zstats, "__slots__", ())}
    return rec, items


def _osquery_reader(rec: Any, ostats: Any = None,
                    containers: list[tuple[float, int, Any]] | None = None
                    ) -> Callable[[], Iterable[list[Any]]]:
    """Reads a recording's osquery results from the start in lists of `OSQUERY_BATCH` rows.
    With `ostats` (the index pass's reader) malformed lines are counted there, and with
    `containers` the container records are kept as (time, reading index, row)."""
    def read() -> Iterable[list[Any]]:
        rows = rec.iter_osquery_rows(ostats if ostats is not None else
                                     OsqueryStats(limiter=_quiet_limiter()))
        n = 0
        while True:
            batch = list(islice(rows, OSQUERY_BATCH))
            if not batch:
                return
            if containers is not None:
                containers.extend((item_time("osq", r), n + i, r) for i, r in enumerate(batch)
                                  if r.table in CONTAINER_TABLES)
            n += len(batch)
            yield batch
    return read


def _osquery_times(batch: list[Any]) -> np.ndarray:
    return np.fromiter((item_time("osq", r) for r in batch), float, len(batch))


def zeek_reader(path: Path, stream: str, zstats: Any = None, ahead: int = 0,
                threads: bool = True) -> Callable[[], Iterable[Any]]:
    """Reads `path` from its start as ZeekBatch columns (the engine's unit of Zeek input):
    the columnar reader (`zeekbatch.iter_batches`), the fields the engine reads only (those it
    reads for the rows made records only left deferred: `pipeline.PASSIVE_FIELDS`,
    `pipeline.KEPT_FIELDS`), a .gz
    file inflated `INFLATE_AHEAD` blocks ahead in a thread, and `ahead` batches parsed ahead in
    another (the feed's reader: `FEED_READ_AHEAD`); `threads=False`: neither, all in the
    caller's thread. Malformed lines are counted in `zstats` as the per-line reader counts them
    (the index pass's reader); a reader without it counts nowhere (the feed reads the same lines
    again)."""
    from scheduler.collect.readahead import read_ahead
    from scheduler.collect.zeekbatch import iter_batches
    from scheduler.collect.zeeklog import ParseStats as ZeekStats

    def read() -> Iterable[Any]:
        batches = iter_batches(path, stream, fields=ingest_fields(stream),
                               lazy=passive_fields(stream), kept=kept_fields(stream),
                               batch_bytes=FEED_BATCH_BYTES,
                               stats=zstats if zstats is not None else
                               ZeekStats(limiter=_quiet_limiter()),
                               inflate_ahead=INFLATE_AHEAD if threads else 0)
        return read_ahead(batches, ahead if threads else 0,
                          name=f"read-ahead {Path(path).name}")
    return read


def _quiet_limiter() -> Any:
    """The feed's second reading of a file warns about its malformed lines at debug level only:
    the index pass named them already, and a warning twice reads as two bad lines."""
    from scheduler.collect.warnlimit import WarnLimiter

    return WarnLimiter(log, level=logging.DEBUG)


def _row_times(batch: Any) -> Any:
    """Each row's sort time, as `item_time` gives it for the row's record (an array)."""

    ts = np.array(batch.column("ts"), dtype=np.float64)
    for i in np.flatnonzero(np.isnan(ts)).tolist():
        ts[i] = item_time("zrow", (batch, i))
    return ts


def _refeed_position(pipeline_state: dict[str, Any], position: int) -> int:
    """The item a resume from a checkpoint at `position` re-feeds up to the hour before: the
    first item of the earliest window open at the checkpoint, or the checkpoint's last item
    (items are in time order: the earlier of the two)."""
    wpos = [p for _, _, p in pipeline_state.get("open_windows", [])]
    return min(min(wpos) if wpos else position, position - 1)


class _ItemTimes:
    """The times of the items fed since the earliest open window's first item, chunk by chunk,
    so each checkpoint can keep the time a resumed replay re-feeds from (`t_first`: the time of
    the earliest open window's first item, or of the checkpoint's last item). Without it the
    resume read the input up to the checkpoint once more just to find that time."""

    def __init__(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []     # (position of the first, times)

    def add(self, pos: int, ts: np.ndarray) -> None:
        self._chunks.append((pos, ts))

    def checkpoint_time(self, pipeline_state: dict[str, Any], end: int) -> float | None:
        """The `t_first` of a checkpoint at position `end` (None: that item was fed before
        this run resumed; the resume then finds it by reading). Drops the chunks before it."""
        at = _refeed_position(pipeline_state, end)
        while len(self._chunks) > 1 and self._chunks[1][0] <= at:
            self._chunks.pop(0)
        if not self._chunks:
            return None
        first, ts = self._chunks[0]
        if not first <= at < first + len(ts):
            return None
        return float(ts[at - first])


class ReplayStore:
    """Replay state + alert outbox in the collectors' StateStore (one SQLite file)."""

    def __init__(self, path: str | Path) -> None:
        from scheduler.collect.state import StateStore

        self.store = StateStore(path)
        self.store.ensure_schema(PIPELINE_SCHEMA)
        self.outbox = AlertOutbox(self.store)

    def load(self, name: str) -> dict[str, Any] | None:
        row = self.store.conn.execute("SELECT data FROM pipeline_state WHERE name=?",
                                      (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def commit(self, name: str, state: dict[str, Any], alerts: list[Alert],
               repeats: list[dict[str, Any]] = ()) -> None:
        with self.store.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO alert_repeats(alert_id, time, rule, summary) "
                             "VALUES (?,?,?,?)", [(r["alert_id"], r["time"], r["rule"],
                                                   r["summary"]) for r in repeats])
            self.outbox.add(conn, alerts, name)
            conn.execute("INSERT OR REPLACE INTO pipeline_state(name, data, updated) VALUES (?,?,?)",
                         (name, json.dumps(state, default=str), time.time()))

    def pending(self) -> list[Alert]:
        return self.outbox.pending()

    def mark_delivered(self, ids: list[str]) -> None:
        self.outbox.mark_delivered(ids)

    def repeats(self, source: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT r.alert_id, r.time, r.rule, r.summary FROM alert_repeats r"
        args: tuple = ()
        if source is not None:
            q += " JOIN alert_outbox o ON o.id = r.alert_id WHERE o.source=?"
            args = (source,)
        rows = self.store.conn.execute(q + " ORDER BY r.time", args).fetchall()
        return [dict(zip(("alert_id", "time", "rule", "summary"), r)) for r in rows]

    def all_alerts(self, source: str | None = None) -> list[dict[str, Any]]:
        if source is None:
            rows = self.store.conn.execute("SELECT body FROM alert_outbox ORDER BY time, id")
        else:
            rows = self.store.conn.execute("SELECT body FROM alert_outbox WHERE source=? "
                                           "ORDER BY time, id", (source,))
        rows = rows.fetchall()
        return [json.loads(r[0]) for r in rows]

    def reset(self, name: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM pipeline_state WHERE name=?", (name,))

    def close(self) -> None:
        self.store.close()


def replay(rec_dir: str | Path, config: Config | None = None, baselines: Any = None, *,
           sinks: Any = None, state_db: str | Path | None = None, chunk: int = CHUNK,
           progress: bool = False, resume: bool = True, collect_windows: bool = False,
           after_chunk: Callable[[int], None] | None = None,
           keep_rows: int = KEEP_ROWS) -> ReplayResult:
    """Replay one recording through a fresh pipeline.

    With `state_db`, progress is committed per chunk (see module docstring) and a later call with
    the same db resumes where a killed run stopped. `after_chunk(i)` is a test hook. Input
    whose batches total more than `keep_rows` rows is read twice, a batch in memory only while
    its rows come due (`scheduler.collect.replay_items`): memory stays bounded however long the
    input."""
    config = config or Config()
    stats: dict[str, Any] = {}
    rec, items = load_recording_items(rec_dir, stats, keep_rows=keep_rows,
                                      read_ahead=config.sources.read_ahead)
    name = f"replay:{rec.name}"
    pipe = Pipeline(config, baselines, host=rec.host or config.host_name,
                    environment=rec.meta.environment if config.environment == "default"
                    else config.environment)
    pipe.collect_windows = collect_windows
    # Inventory history first: a record is attributed with everything the recording knows.
    for row in items.containers:
        pipe.observe_up_front(row)     # the NAT join sees every flow up front too
    pipe.inventory.close_snapshots()

    store = ReplayStore(state_db) if state_db else None
    start = 0
    cursor = items.cursor()
    if store is not None:
        st = store.load(name) if resume else None
        if st is not None:
            pipe.load_state(st["pipeline"])
            start = int(st["position"])
            # Rebuild the windows that were open at the checkpoint from their first item on.
            # Rebuild what the killed run held in memory by re-feeding, without rules, the items
            # of the last REFEED_HORIZON_S before the earliest open window: the open windows
            # themselves, the stock-log geo detector's DNS answers (TTL) and the process dedupe.
            if 0 < start <= len(items):
                t_first = st.get("t_first")
                if t_first is None:     # a checkpoint without it: find it by reading there
                    t_first = items.cursor().skip(_refeed_position(st["pipeline"], start) + 1)
                cursor.skip_before(t_first - REFEED_HORIZON_S, start)
                pipe.windows_only = True
                at = cursor.pos
                while at < start:
                    part = cursor.items(min(chunk, start - at))
                    if not part:
                        break
                    for _, kind, payload in part:
                        pipe.cur_pos = at
                        pipe._dispatch(kind, payload)
                        at += 1
                pipe.windows_only = False
                pipe._rebuild = set()
            elif start:
                cursor.skip(start)
            log.info("%s: resuming at item %d of %d", name, start, len(items))
        deliver_outbox(store, sinks)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), initial=start, desc=f"replay {rec.name}", unit="rec",
                   leave=False, dynamic_ncols=True)
    alerts: list[Alert] = []
    repeats: list[dict[str, Any]] = []
    pos = start
    n_chunk = 0
    times = _ItemTimes()
    # the set-up (modules, inventory, item index) out of the collector's sight while it feeds
    with frozen_setup():
        while pos < len(items):
            end = min(len(items), pos + chunk)
            pipe.dispatch(cursor.dispatch_items(end - pos), pos)
            done = end >= len(items)
            out = pipe.flush(force=done)
            alerts.extend(out)
            reps = pipe.aggregator.take_repeats()
            repeats.extend(reps)
            if store is not None:
                state = {"pipeline": pipe.dump_state(), "position": end}
                times.add(pos, cursor.last_times)
                t_first = times.checkpoint_time(state["pipeline"], end)
                if t_first is not None:
                    state["t_first"] = t_first
                store.commit(name, state, out, reps)
                deliver_outbox(store, sinks)
            elif sinks is not None and out:
                sinks.emit(out)
            if bar is not None:
                bar.update(end - pos)
            pos = end
            n_chunk += 1
            if after_chunk is not None:
                after_chunk(n_chunk)
    if bar is not None:
        bar.close()
    stats["pipeline"] = pipe.stats.to_dict()
    stats["aggregator"] = dict(pipe.aggregator.stats)
    if store is not None:
        all_alerts = store.all_alerts(name)
        repeats = store.repeats(name)
        store.close()
        from scheduler.alerting.alerts import alert_from_dict
        alerts = [alert_from_dict(d) for d in all_alerts]      # in (time, id) order
    else:
        # the same order as the state db's (`ReplayStore.all_alerts`): time order whatever the
        # chunk; the sinks had them as the flushes emitted them (each flush in time order)
        alerts.sort(key=lambda a: (a.time, a.id))
    return ReplayResult(name=rec.name, alerts=alerts, stats=stats, resumed_from=start,
                        items=len(items), windows=pipe.collected, environment=pipe.environment,
                        repeats=repeats, misuse_baseline=pipe.misuse.export_baseline())


def train_from_recordings(rec_dirs: Iterable[str | Path], config: Config | None = None,
                          progress: bool = False, model_dir: str | Path | None = None,
                          keep_rows: int = KEEP_ROWS) -> Any:
    """Per-image baselines from benign recordings, built from exactly the windows the pipeline
    scores (same code path, same window length), optionally saved to the model store."""
    from model.baseline import EnvironmentBaselines
    from model.features import FeatureWindows

    config = config or Config()
    parts, env = [], None
    destinations: dict[str, set[str]] = {}
    for d in rec_dirs:
        res = replay(d, config, None, progress=progress, collect_windows=True,
                     keep_rows=keep_rows)
        parts.extend(res.windows)
        for image, dests in res.misuse_baseline.items():
            destinations.setdefault(image, set()).update(dests)
        env = env or res.environment
    fw = FeatureWindows.concat(parts)
    env = env or config.environment
    fw.environment = env
    eb = EnvironmentBaselines(env, min_windows=config.model.min_windows).fit(fw)
    # The destinations each image contacted in training ride along with the baselines: the
    # beacon rule never judges them (health checks, cron jobs of the training period).
    eb.misuse_baseline = {img: sorted(d) for img, d in sorted(destinations.items())}
    if model_dir is not None:
        try:
            from model.store import ModelStore
            ModelStore(model_dir).save(eb, training_range=(float(fw.window_start.min()),
                                                           float(fw.window_end.max())),
                                       window_s=config.detection.window_s)
        except Exception as exc:
            log.warning("could not save baselines to %s: %s", model_dir, exc)
    return eb, fw


# =============================================================================================
# Ground truth: does every labelled action have its alert?

EXPECTED_RULE = {
    "location_discovery": "location_discovery",
    "behaviour_drift": "behaviour_anomaly",
}


def expected_rules(action: dict[str, Any]) -> list[str]:
    """Rules a labelled action must raise (churn labels also imply location discovery)."""
    label = str(action.get("label", ""))
    out = []
    if "location_discovery" in label:
        out.append("location_discovery")
    if action.get("category") == "behaviour_drift" or label in ("dns_burst_nxdomain",
                                                                  "internal_port_sweep",
                                                                  "new_process_tree"):
        out.append("behaviour_anomaly")
    return out


def check_ground_truth(gt: dict[str, Any] | None, alerts: Iterable[Any],
                       suppression_s: float = 300.0, slack_s: float = 2.0) -> list[dict[str, Any]]:
    """One row per (labelled action, expected rule): the alert that covers it, and how.

    "evidence": an alert on the action's container and image has evidence inside the action's
    time span; "window": an anomaly alert whose window contains the action; "repeat": the action
    fell in the suppression window of an alert for the same container and rule (counted, not
    re-alerted, by design). The churn summary expects a container_churn alert on its image.
    """
    if not gt:
        return []
    al = [a.to_dict() if hasattr(a, "to_dict") else a for a in alerts]
    rows = []
    for act in gt.get("malicious_actions") or []:
        start, end = float(act.get("start", 0)), float(act.get("end", act.get("start", 0)))
        for rule in expected_rules(act):
            found, how = None, ""
            same = [a for a in al if a["rule"] == rule
                    and a["container"].get("id") == act.get("container_id")
                    and a["container"].get("image") == act.get("image")]
            for a in same:
                times = [float(e.get("time", 0)) for e in a.get("evidence", [])]
                if rule == "behaviour_anomaly":
                    ws = [(float(e.get("window_start", 0)), float(e.get("window_end", 0)))
                          for e in a.get("evidence", []) if e.get("kind") == "window"]
                    if any(s - slack_s <= start <= w + slack_s for s, w in ws):
                        found, how = a, "window"
                        break
                elif any(start - slack_s <= t <= end + slack_s for t in times):
                    found, how = a, "evidence"
                    break
            if found is None and rule != "behaviour_anomaly":
                for a in same:
                    if a["time"] <= start <= a["time"] + suppression_s:
                        found, how = a, "repeat"
                        break
            rows.append({"action_id": act.get("action_id", ""), "label": act.get("label", ""),
                         "rule": rule, "container": act.get("container_name", ""),
                         "image": act.get("image", ""), "start": start,
                         "alert_id": found["id"] if found else None, "how": how})
    cs = gt.get("churn_summary")
    if cs:
        hit = next((a for a in al if a["rule"] == "container_churn"
                    and a["container"].get("image") == cs.get("image")), None)
        rows.append({"action_id": "churn_summary", "label": cs.get("label", "container_churn"),
                     "rule": "container_churn", "container": f"(image) {cs.get('image')}",
                     "image": cs.get("image", ""), "start": cs.get("first_create", 0.0),
                     "alert_id": hit["id"] if hit else None, "how": "image" if hit else ""})
    return rows
