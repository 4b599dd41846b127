"""`stowaway run`: the long-running detector.

The invariant: **the daemon equals the replay.** Whatever the daemon is fed, as the logs grow,
across rotations, kill -9 restarts and receivers that fail, the alerts it writes are the ones
`stowaway replay` gives for the same input (tests/test_soak.py, bench/soak.py).

APScheduler (3.x, BackgroundScheduler) runs five jobs; the main thread only waits for a signal:

* collect (every `daemon.collect_interval_s`): poll the tailers (osqueryd results log, Zeek logs) or
  query the extension over Thrift, feed the pipeline, and in ONE SQLite transaction commit the tail
  checkpoints, the new alerts (outbox) and the engine state (`pipeline.EngineState`: inventory,
  held records, open windows with their records, join and detector memory); then hand the outbox
  to the sinks (local writes only) and rewrite the address map the Zeek package reads. A kill -9 at
  any point re-reads only lines whose results were not committed, and the sinks drop alert ids
  they already have.
* score (every window_s/6, at least 5 s): when the sources are quiet, data time follows the wall
  clock from the last record, which closes windows that have ended (`daemon.lag_s` past their
  end), scores them against their image baseline, and flushes alerts whose merge window has passed.
* deliver (about every second): a webhook round when its backoff allows (and at start), outside
  the daemon lock, each POST bounded by `timeout_s`: a hung receiver never stalls collection.
* retrain (daily at `model.retrain_hour_utc`, or every `daemon.retrain_interval_s`): per
  environment, from the stored feature windows, in a child process (`python -m model.retrain`:
  fitting needs scikit-learn, which the daemon never imports); the new version's compiled
  baselines are then loaded, swapped in and score the next windows (the window store records
  which version scored each window).
* prune (every `daemon.prune_interval_s`): retention for windows, delivered alerts, inventory
  history and webhook markers.
* trim (every `daemon.trim_interval_s`): freed heap back to the OS (scheduler/memtrim.py), which
  also sets glibc's arenas and mmap threshold before the first thread starts.

Baselines are loaded compiled (`ModelStore.load_compiled`: numpy arrays, model/compiled.py), so
the daemon's process holds neither scikit-learn nor SciPy nor joblib (about 195 MiB of RSS).

SIGTERM/SIGINT: a running retrain child is stopped, the jobs are stopped (waiting for a running
one), a last collect + flush runs, state is committed and the sinks are closed; exit status 0.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

from scheduler.collect.fsmode import DAEMON_UMASK, apply_mode, prepare_private
from scheduler.config import Config, daemon_paths, validate
from scheduler.pipeline import PIPELINE_SCHEMA, EngineState, Pipeline, ingest_fields
from scheduler.alerting.outbox import AlertOutbox, deliver_outbox

log = logging.getLogger(__name__)

STATE_NAME = "daemon"


class Metrics:
    """Prometheus metrics on 127.0.0.1 by default (optional: prometheus_client may be absent)."""

    def __init__(self, cfg: Config) -> None:
        self.enabled = False
        self.port = 0
        if not cfg.metrics.enabled:
            return
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
        except ImportError:
            log.warning("metrics enabled but prometheus_client is not installed")
            return
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter("stowaway_records", "Records read", ["source"], registry=r)
        self.bad = Counter("stowaway_bad_lines", "Malformed input lines skipped", ["source"],
                           registry=r)
        self.alerts = Counter("stowaway_alerts", "Alerts written", ["rule"], registry=r)
        self.containers = Gauge("stowaway_containers", "Containers in the inventory", registry=r)
        self.open_alerts = Gauge("stowaway_open_alerts", "Alerts waiting for their merge window",
                                 registry=r)
        self.last_collect = Gauge("stowaway_last_collect_timestamp_seconds",
                                  "End of the last collect cycle", registry=r)
        self.collect_seconds = Gauge("stowaway_collect_duration_seconds",
                                     "Duration of the last collect cycle", registry=r)
        self.windows = Counter("stowaway_windows_scored", "Feature windows scored", registry=r)
        server = start_http_server(cfg.metrics.port, addr=cfg.metrics.address, registry=r)
        self._server = server[0] if isinstance(server, tuple) else None
        self.port = self._server.server_port if self._server else cfg.metrics.port
        self.enabled = True
        log.info("metrics on http://%s:%d/metrics", cfg.metrics.address, self.port)

    def close(self) -> None:
        srv = getattr(self, "_server", None)
        if srv is not None:
            srv.shutdown()
            srv.server_close()


class Daemon:
    """Everything `stowaway run` holds; `collect_once()` etc. are callable directly (tests)."""

    def __init__(self, cfg: Config) -> None:
        from scheduler.alerting.sinks import build_sinks
        from scheduler.collect.state import StateStore

        self.cfg = cfg
        self.lock = threading.RLock()
        prepare_private(daemon_paths(cfg))   # 0600 files, 0700 dirs (docs/scheduler.md)
        self.store = StateStore(cfg.state_db)
        self.store.ensure_schema(PIPELINE_SCHEMA)
        self.outbox = AlertOutbox(self.store)
        self.baselines = self._load_baselines()
        self.pipeline = Pipeline(cfg, self.baselines)
        self.pipeline.hold_s = cfg.detection.attribution_hold_s
        self.pipeline.close_lag_s = cfg.daemon.lag_s
        self.pipeline.aggregator.lag_s = cfg.daemon.lag_s   # late candidates still merge
        self.state = EngineState(self.pipeline, STATE_NAME)
        self.restored = self._restore()
        self.window_store = self._open_window_store()
        if self.window_store is not None:
            self.pipeline.window_sink = self._store_windows
        self.sinks = build_sinks(cfg.sinks)
        self.sinks.defer_delivery()         # remote receivers: the deliver job, outside the lock
        self._deliver_lock = threading.Lock()
        self.tailers = self._make_tailers()
        self.k8s = self._start_k8s()
        self.direct = self._start_direct()
        self.metrics = Metrics(cfg)
        self._last_map = ""
        self.cycles = 0
        self.retrains = 0
        from model.retrain import ChildRetrain

        self._retrainer = ChildRetrain()    # runs each retrain's child; cancelled at shutdown
        self.catching_up = False
        # The data clock while the sources are quiet: data time of the last new record and the
        # wall time it was read (a restart counts as "just read": nothing closes early).
        self._data_anchor: tuple[float, float] | None = \
            (self.pipeline.data_time, time.time()) if self.pipeline.data_time else None
        with self.lock:
            deliver_outbox(self.outbox, self.sinks)
        # What start-up made (modules, baselines, the restored engine) lives as long as the
        # process: out of the collector's sight, so the full collections that a poll's
        # short-lived rows trigger do not walk it again each time.
        gc.freeze()

    # ------------------------------------------------------------------------------ set-up
    def _load_baselines(self) -> Any:
        self.model_version = ""
        try:
            from model.store import ModelStore

            ms = ModelStore(self.cfg.model.dir)
            if self.cfg.environment in ms.environments():
                eb = ms.load_compiled(self.cfg.environment)
                self.model_version = eb.version
                trained_w = ms.read_manifest(self.cfg.environment, eb.version).get("window_s")
                if trained_w and abs(float(trained_w) - self.cfg.detection.window_s) > 1e-6:
                    log.warning("baselines of %r were trained on %gs windows but detection.window_s "
                                "is %gs: scores are not comparable; retrain",
                                self.cfg.environment, float(trained_w), self.cfg.detection.window_s)
                log.info("baselines for %r loaded from %s", self.cfg.environment, self.cfg.model.dir)
                return eb
        except Exception as exc:
            log.warning("no baselines loaded (%s): anomaly scoring off until the first retrain", exc)
        return None

    def _open_window_store(self) -> Any:
        try:
            from model.windowstore import WindowStore

            path = Path(self.cfg.model.windows_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pipeline.collect_windows = False
            return WindowStore(path)
        except Exception as exc:
            log.warning("window store unavailable (%s): daily retrain disabled", exc)
            return None

    def _make_tailers(self) -> list[Any]:
        from scheduler.collect.tailer import OsqueryTailer, follow_zeek_dir

        src = self.cfg.sources
        tailers: list[Any] = []
        if src.osquery_mode == "results_log" and src.osquery_results_log:
            tailers.append(OsqueryTailer(src.osquery_results_log, self.store))
        if src.zeek_log_dir:
            # Batch mode: a poll reads up to zeek_poll_bytes as ZeekBatch columns (1 MiB blocks).
            tailers.extend(follow_zeek_dir(src.zeek_log_dir, self.store, streams=src.zeek_streams,
                                           fields=ingest_fields, batches=True,
                                           max_lines=self.cfg.daemon.zeek_poll_bytes))
        return tailers

    def _start_k8s(self) -> Any:
        """The Kubernetes audit source (file and/or webhook into the spool), when configured."""
        if not self.cfg.kubernetes.enabled:
            return None
        from scheduler.collect.k8s_source import K8sAuditSource

        return K8sAuditSource(self.cfg.kubernetes, self.store)

    def _restore(self) -> bool:
        """The engine as it was at the last commit, as one object (EngineState): inventory,
        held records, open windows with their records, aggregator, detectors."""
        try:
            restored = self.state.load(self.store)
        except Exception as exc:
            log.error("engine state in %s not restored (%s): starting empty", self.cfg.state_db,
                      exc)
            return False
        if restored:
            p = self.pipeline
            log.info("engine state restored: %d containers, %d held records, %d open windows, "
                     "data time %.3f", len(p.inventory), p.joiner.held, len(p._cw), p.data_time)
        return restored

    def _store_windows(self, fw: Any) -> None:
        """Every built window goes to the window store (the next retrain's input), tagged with
        the model version that is about to score it."""
        self.window_store.add(fw, scored_by=self.model_version)

    # ------------------------------------------------------------------------------ jobs
    def collect_once(self) -> int:
        """One collect cycle; returns the number of alerts delivered."""
        t0 = time.monotonic()
        with self.lock:
            batches = []
            items: list[tuple[float, int, str, Any]] = []
            osq_items: list[tuple[float, int, str, Any]] = []
            backlog = False
            for i, t in enumerate(self.tailers):
                b = t.poll()
                batches.append((t, b))
                backlog = backlog or _more_waiting(t, b)
                if hasattr(t, "_parsers"):
                    osq = [(_osq_time(it), 0, "osq", it) for it in b.items]
                    osq_items.extend(osq)
                    items.extend(osq)
                else:
                    items.extend(_zeek_items(t, b.items, 1 + i))
            thrift = self._thrift_items()
            osq_items.extend(thrift)
            items.extend(thrift)
            k8s_ids: list[str] = []
            if self.k8s is not None:     # audit events: file lines -> spool, then the spool
                self.k8s.spool_file()
                k8s_ids, recs = self.k8s.take()
                items.extend((r.ts, 1 + len(self.tailers), "k8s", r) for r in recs)
            items.sort(key=_TIME_SOURCE)
            osq_items.sort(key=_TIME_SOURCE)     # stable: their order among `items`
            p = self.pipeline
            before = p.data_time
            for _, _, kind, payload in osq_items:
                if kind == "osq":
                    p.observe_up_front(payload)     # NAT flows before the batch's uplink records
            p.inventory.close_snapshots()   # containers missing from a full snapshot are gone
            # Inventory rows were observed above; the one dispatch feeds the rest of each
            # osquery row's logic, audit records, and Zeek rows a batch run at a time.
            p.dispatch(map(itemgetter(2, 3), items))
            if p.data_time > before:
                self._data_anchor = (p.data_time, time.time())
            alerts = p.flush(wall=time.time())
            try:
                with self.store.transaction() as conn:
                    for t, b in batches:
                        t.commit(b, conn)
                    if k8s_ids:
                        self.k8s.mark_consumed(conn, k8s_ids)
                    self.outbox.add(conn, alerts, STATE_NAME)
                    self.state.save(self.store, conn)
                    if self.direct is not None:
                        self.direct.save_cursors(self.store, conn)
            except BaseException:
                for t, _ in batches:
                    t.rewind()
                self.state.forget()     # the chunks this save wrote were rolled back too
                raise
            n = deliver_outbox(self.outbox, self.sinks)
            self._write_address_map()
            self.cycles += 1
            # While reading a backlog (old logs at start-up), data time follows the data, not the
            # clock: the score job must not close windows the backlog still has records for.
            self.catching_up = backlog
        self._observe_metrics(items, alerts, time.monotonic() - t0)
        return n

    def collect_job(self) -> int:
        """The collect job: poll rounds until caught up or the interval's time budget is used,
        so a backlog at start-up is read at full speed rather than one batch per interval."""
        budget = max(0.5, 0.8 * self.cfg.daemon.collect_interval_s)
        t0 = time.monotonic()
        n = self.collect_once()
        while self.catching_up and time.monotonic() - t0 < budget:
            n += self.collect_once()
        return n

    def _start_direct(self) -> Any:
        """thrift mode: serve the extension-manager socket and query the extension's tables with
        the call osqueryd makes (scheduler/osquery_client.py); event cursors live in the state DB."""
        if self.cfg.sources.osquery_mode != "thrift":
            return None
        from scheduler.collect.osquery_client import DirectOsquery

        d = DirectOsquery(self.cfg.sources.osquery_socket, host=self.cfg.host_name,
                          spawn=self.cfg.sources.osquery_spawn_extension)
        d.load_cursors(self.store)
        try:
            d.start()
        except Exception as exc:
            log.error("no osquery extension on %s (%s); will retry each cycle",
                      self.cfg.sources.osquery_socket, exc)
        return d

    def _thrift_items(self) -> list[tuple[float, int, str, Any]]:
        if self.direct is None:
            return []
        try:
            rows = self.direct.collect()
        except Exception as exc:
            log.warning("thrift query failed: %s", exc)
            return []
        return [(_osq_time(r), 0, "osq", r) for r in rows]

    def data_clock(self, now: float) -> float | None:
        """Data time while the sources are quiet: the last record's time plus the wall time
        since it was read. Live, that is the wall clock; on old data (a backlog, a recording)
        it keeps the data's own pace, so windows are not closed ahead of their records."""
        if self._data_anchor is None:
            return None
        ts, wall = self._data_anchor
        return ts + max(0.0, now - wall)

    def score_once(self, now: float | None = None) -> int:
        """Close windows that ended (by the data clock) and flush due alerts."""
        now = time.time() if now is None else now
        with self.lock:
            p = self.pipeline
            clock = self.data_clock(now)
            if not self.catching_up and clock is not None:
                p._advance(clock)
            alerts = p.flush(wall=now)
            try:
                with self.store.transaction() as conn:
                    self.outbox.add(conn, alerts, STATE_NAME)
                    self.state.save(self.store, conn)
            except BaseException:
                self.state.forget()
                raise
            n = deliver_outbox(self.outbox, self.sinks)
        if self.metrics.enabled:
            for a in alerts:
                self.metrics.alerts.labels(a.rule).inc()
        return n

    def deliver_once(self, force: bool = False) -> int:
        """A delivery round of the remote sinks (webhook) whose backoff allows one; outside the
        daemon lock (collection goes on while a receiver hangs), one round at a time."""
        if not self._deliver_lock.acquire(blocking=False):
            return 0
        try:
            return self.sinks.deliver_due(force=force)
        finally:
            self._deliver_lock.release()

    def deliver_tick_s(self) -> float:
        """How often the deliver job looks: at most the shortest webhook backoff, so a spool is
        delivered within one retry interval of the receiver's recovery."""
        return max(0.05, min(1.0, self.cfg.sinks.webhook.backoff_s))

    def retrain_once(self) -> bool:
        """Retrain from the stored windows in a child process (it reads the window store by its
        path and saves a new version; this job's thread waits for it, outside the lock), then
        load that version's compiled baselines and swap them in; the next windows are scored by
        them. The child, not the daemon, imports scikit-learn."""
        if self.window_store is None or self._retrainer.cancelled:
            return False
        try:
            from model.store import ModelStore

            ms = ModelStore(self.cfg.model.dir)
            end = time.time()
            start = end - self.cfg.retention.days * 86400
            report = self._retrainer.run(self.window_store.path, ms.root, self.cfg.environment,
                                         start, end, min_windows=self.cfg.model.min_windows,
                                         window_s=self.cfg.detection.window_s)
            eb = ms.load_compiled(self.cfg.environment, report.version)
            version = eb.version
        except Exception as exc:
            log.warning("retrain of %r skipped: %s", self.cfg.environment, exc)
            return False
        with self.lock:
            self.pipeline.baselines = eb
            self.model_version = version
            self.retrains += 1
        log.info("retrained %r: version %s; %s", self.cfg.environment, version,
                 getattr(report, "to_text", lambda: "")()[:200])
        return True

    def cancel_retrain(self) -> None:
        """Shutting down: stop a running retrain child and start no new one."""
        self._retrainer.cancel()

    def prune_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        before = now - self.cfg.retention.days * 86400
        with self.lock:
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM alert_outbox WHERE delivered=1 AND time < ?", (before,))
                conn.execute("DELETE FROM alert_repeats WHERE time < ?", (before,))
                try:
                    self.store.prune_containers(before, conn=conn)
                    if self.k8s is not None:
                        self.k8s.prune(before, conn)
                except Exception as exc:
                    log.debug("prune containers: %s", exc)
            try:
                self.pipeline.inventory.prune(before)
            except Exception as exc:
                log.debug("prune inventory: %s", exc)
            self.pipeline.prune(before)
            if self.window_store is not None:
                try:
                    n = self.window_store.prune(before)
                    if n:
                        log.info("pruned %d feature windows that ended before %.0f", n, before)
                except Exception as exc:
                    log.warning("prune windows: %s", exc)
            for s in self.sinks.sinks:
                if hasattr(s, "prune_markers"):
                    s.prune_markers(self.cfg.retention.days * 86400)

    # ------------------------------------------------------------------------------ helpers
    def _write_address_map(self) -> None:
        path = self.cfg.sources.address_map
        if not path:
            return
        try:
            current = json.dumps([(a, c.container_id) for a, c in
                                  self.pipeline.inventory.current_map()])
            if current == self._last_map:
                return
            self.pipeline.inventory.write_address_map(path)
            apply_mode(path, self.cfg.sources.address_map_mode, self.cfg.sources.address_map_group)
            self._last_map = current
        except Exception as exc:
            log.warning("address map %s not written: %s", path, exc)

    def _observe_metrics(self, items: list, alerts: list, seconds: float) -> None:
        m = self.metrics
        if not m.enabled:
            return
        for _, _, kind, _ in items:
            m.records.labels("zeek" if kind == "zrow" else kind).inc()
        seen = self.__dict__.setdefault("_skipped", {})   # malformed lines, per source
        counts = [(t.source, getattr(t, "skipped", 0)) for t in self.tailers]
        if self.k8s is not None:        # bad audit lines / events, refused webhook posts
            counts.append(("k8s:audit", self.k8s.bad_input()))
        for source, n in counts:
            if n > seen.get(source, 0):
                m.bad.labels(source).inc(n - seen.get(source, 0))
                seen[source] = n
        for a in alerts:
            m.alerts.labels(a.rule).inc()
        m.containers.set(len(self.pipeline.inventory))
        m.open_alerts.set(self.pipeline.aggregator.open_count())
        m.last_collect.set(time.time())
        m.collect_seconds.set(seconds)

    def close(self) -> None:
        self.cancel_retrain()
        if self.k8s is not None:
            self.k8s.close()      # stop answering the API server; the spool keeps the rest
        with self.lock:
            try:
                self.collect_once()
                self.score_once()
            except Exception as exc:
                log.error("final collect failed: %s", exc)
            self.deliver_once(force=True)      # one last bounded round; the spool keeps the rest
            self.sinks.close()
            self.metrics.close()
            if self.direct is not None:
                try:
                    self.direct.close()
                except Exception as exc:
                    log.debug("closing the extension manager: %s", exc)
            if self.window_store is not None:
                self.window_store.close()
            self.store.close()


# the collect's sort key of an item (time, source): in C
_TIME_SOURCE = itemgetter(0, 1)


def _osq_time(row: Any) -> float:
    from scheduler.pipeline import item_time

    return item_time("osq", row)


def run_daemon(cfg: Config, once: bool = False) -> int:
    """Run until SIGTERM/SIGINT (or one cycle with `once`); returns the exit status."""
    problems = validate(cfg)
    if problems:
        for p in problems:
            log.error("config: %s", p)
        print("stowaway run: invalid config:\n  " + "\n  ".join(problems))
        return 2
    os.umask(DAEMON_UMASK)      # whatever else the daemon or its libraries create: 0600 / 0700
    if cfg.daemon.trim_interval_s > 0:
        from scheduler.memtrim import configure_allocator

        configure_allocator()   # before any thread allocates (scheduler/memtrim.py says why)
    d = Daemon(cfg)
    if once:
        d.collect_once()
        d.score_once()
        d.close()
        return 0
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = threading.Event()
    sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True,
                                                              "max_instances": 1,
                                                              "misfire_grace_time": 30})
    sched.add_job(d.collect_job, "interval", seconds=cfg.daemon.collect_interval_s, id="collect",
                  next_run_time=_now_dt())
    sched.add_job(d.score_once, "interval", seconds=max(5.0, cfg.detection.window_s / 6),
                  id="score")
    sched.add_job(d.deliver_once, "interval", seconds=d.deliver_tick_s(), id="deliver",
                  next_run_time=_now_dt())           # the spool is flushed at start too
    if cfg.daemon.retrain_interval_s > 0:
        sched.add_job(d.retrain_once, "interval", seconds=cfg.daemon.retrain_interval_s,
                      id="retrain")
    else:
        sched.add_job(d.retrain_once, "cron", hour=cfg.model.retrain_hour_utc, minute=0,
                      id="retrain")
    sched.add_job(d.prune_once, "interval", seconds=cfg.daemon.prune_interval_s, id="prune")
    if cfg.daemon.trim_interval_s > 0:   # freed heap back to the OS (scheduler/memtrim.py)
        from scheduler.memtrim import release_free_memory

        sched.add_job(release_free_memory, "interval", seconds=cfg.daemon.trim_interval_s,
                      id="trim")

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sched.start()
    log.info("stowaway daemon running (pid %d): state %s, alerts %s", os.getpid(), cfg.state_db,
             cfg.sinks.jsonl or "(no jsonl)")
    print(f"stowaway: running (pid {os.getpid()}); SIGTERM to stop", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        d.cancel_retrain()                  # a retrain child would hold the shutdown up
        sched.shutdown(wait=True)
        d.close()
    log.info("stowaway daemon stopped cleanly")
    print("stowaway: stopped", flush=True)
    return 0


def _now_dt() -> Any:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc)


def _more_waiting(tailer: Any, batch: Any) -> bool:
    """Did this poll stop at its budget (a backlog: more is waiting)? The budget is
    `max_lines`: lines for a line tailer, bytes for a batch-mode one (ZeekBatchTailer)."""
    budget = getattr(tailer, "max_lines", 1 << 30)
    if hasattr(tailer, "batch_bytes"):
        return batch.nbytes >= budget
    return len(batch.lines) >= budget


def _zeek_items(tailer: Any, items: list[Any], source: int) -> list[tuple[float, int, str, Any]]:
    """A Zeek tailer's poll as (time, source, "zrow", (batch, row)) items, so the engine takes
    consecutive rows a batch at a time (Pipeline.dispatch). A batch-mode tailer gives ZeekBatch
    items; a line tailer (stream, record) pairs, made into one batch per poll. The sort time is
    the record's `ts` as the line path took it (unset: 0)."""
    from scheduler.collect.zeekbatch import ZeekBatch, batch_from_records

    out: list[tuple[float, int, str, Any]] = []
    batches = [it for it in items if isinstance(it, ZeekBatch)]
    recs = [it[1] for it in items if not isinstance(it, ZeekBatch)]
    if recs:
        batches.append(batch_from_records(tailer.stream, str(getattr(tailer, "path", "")), recs))
    for batch in batches:
        ts = batch.column("ts").tolist()
        for j, t in enumerate(ts):
            if t != t:          # unset or unparseable: the record says what the line path saw
                ts[j] = float(batch.record(j).get("ts") or 0.0)
        out.extend(zip(ts, repeat(source), repeat("zrow"), zip(repeat(batch), range(len(ts)))))
    return out
