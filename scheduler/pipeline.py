"""The engine: osquery rows and Zeek records in, alerts out.

    collect (osquery_results / tailer / recording) -> inventory + join (address -> container at time)
      -> rules (T1614 host + network, churn, risky config) -> feature windows -> baseline scores
      -> AlertAggregator (merge host+network evidence, suppress repeats) -> sinks

Two ways to drive it:

* incremental (`Pipeline.feed_*` then `Pipeline.flush()`): the daemon feeds whatever the tailers
  produced since the last tick; windows are scored when data time passes their end.
* batch (`replay(recording, ...)`): every record of a recording is put in one time order and fed in
  chunks. After each chunk the alerts go to an outbox table and the pipeline state (aggregator,
  churn counters, open windows, position in the stream) is committed in the *same* SQLite
  transaction; the outbox is then delivered to the sinks, which drop ids they already have. A kill -9
  anywhere therefore resumes at the last committed chunk and yields the same alerts, none twice.

For the emulator and tests the short form is `Pipeline(config).process(items) -> list[Alert]`, where
items are OsqueryRow, (stream, zeek_dict) tuples or model.records objects.
"""
from __future__ import annotations

import bisect
import heapq
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from model.records import ContainerInfo, LifecycleRecord, NetRecord, ProcessRecord

from . import rules
from .alerts import Alert, AlertAggregator, ContainerRef, UNKNOWN_CONTAINER_NAME
from .config import Config
from .inventory import Inventory, event_time
from .osquery_results import OsqueryRow, ParseStats as OsqueryStats

log = logging.getLogger(__name__)

try:
    from .geo_stock import GeoStockDetector
except Exception:  # pragma: no cover
    GeoStockDetector = None  # type: ignore

try:
    from osquery_ext import indicators as _indicators  # type: ignore
except Exception:  # pragma: no cover
    _indicators = None

PIPELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_state (
    name   TEXT PRIMARY KEY,      -- 'daemon' or 'replay:<recording>'
    data   TEXT NOT NULL,         -- JSON: aggregator, churn, windows, position
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    id        TEXT PRIMARY KEY,   -- stable alert id: a replayed alert is the same row
    time      REAL NOT NULL,
    rule      TEXT NOT NULL,
    container TEXT NOT NULL,
    body      TEXT NOT NULL,
    source    TEXT NOT NULL DEFAULT '',   -- 'daemon' or 'replay:<recording>'
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox(delivered);
CREATE TABLE IF NOT EXISTS alert_repeats (
    alert_id TEXT NOT NULL,       -- the alert whose suppression window swallowed this repeat
    time     REAL NOT NULL,
    rule     TEXT NOT NULL,
    summary  TEXT NOT NULL,
    PRIMARY KEY (alert_id, time, summary)
);
"""

ZEEK_STREAMS = ("conn", "dns", "http", "ssl", "container_geo")
# A resumed replay re-feeds (without rules) this much data before its checkpoint, to rebuild the
# open windows, the geo detector's remembered DNS answers (TTL, capped at 1 h) and the dedupe memory.
REFEED_HORIZON_S = 3700.0
_DEFAULT_SUBNETS = ("172.17.0.0/16", "10.88.0.0/16")


def _f(v: Any, default: float = 0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _i(v: Any, default: int = 0) -> int:
    if type(v) is int:          # the common case (zeeklog converts counts/ports): no try/float
        return v
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return default


def _in_container_subnet(addr: str) -> bool:
    if not addr:
        return False
    if _indicators is not None:
        try:
            return bool(_indicators.in_container_subnet(addr))
        except Exception:
            pass
    import ipaddress
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in _DEFAULT_SUBNETS)


@dataclass
class PipelineStats:
    osquery_rows: int = 0
    zeek_records: int = 0
    processes: int = 0
    nets: int = 0
    nets_unattributed: int = 0
    lifecycle: int = 0
    windows_scored: int = 0
    late_records: int = 0
    alerts: int = 0
    bad_input: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Pipeline:
    """Incremental detection engine (see module docstring)."""

    def __init__(self, config: Config | None = None, baselines: Any = None,
                 host: str | None = None, environment: str | None = None) -> None:
        self.config = config or Config()
        det = self.config.detection
        self.host = host if host is not None else self.config.host_name
        self.environment = environment or self.config.environment
        self.inventory = Inventory()
        self.aggregator = AlertAggregator(det.merge_s, det.suppression_s, self.environment)
        self.churn = rules.ChurnDetector(det.churn_n, det.churn_t_s)
        self.geo = None
        if GeoStockDetector is not None:
            try:
                self.geo = GeoStockDetector()
            except Exception as exc:  # indicator data or classifier missing
                log.info("stock-log geo detector unavailable (%s); using domain rules only", exc)
        self.baselines = baselines
        self.window_s = det.window_s
        self.stats = PipelineStats()
        # open feature windows per container (see the windows section)
        self._cw: dict[str, dict[str, Any]] = {}
        self._heap: list[tuple[float, str, int]] = []
        self._closed: list[tuple[str, dict[str, Any]]] = []
        self._origins: dict[str, float] = {}
        self._last_closed: dict[str, int] = {}   # newest closed window index per container
        self._skip: set[tuple[str, int]] = set()
        self._life_recent: deque = deque()
        self.collect_windows = False      # keep every built window in `collected` (training)
        self.collected: list[Any] = []
        self.window_sink: Callable[[Any], None] | None = None   # e.g. WindowStore.add
        self._proc_seen: dict[tuple[str, int, str], float] = {}
        self._risky_seen: set[tuple[str, str, str]] = set()
        self.data_time = 0.0
        # Replay bookkeeping: the stream position of the current item and of each open window's
        # first item, so a resumed replay can rebuild open windows (`windows_only` re-feed).
        self.cur_pos = 0
        self._win_pos: dict[tuple[str, int], int] = {}
        self.windows_only = False
        self._rebuild: set[tuple[str, int]] = set()
        # Attribution hold (daemon only; batch replays know the whole inventory up front).
        self.hold_s = 0.0
        self._held: deque = deque()
        self.on_window_scored: Callable[[Any], None] | None = None

    # ----------------------------------------------------------------------------- containers
    def container_ref(self, host: str, container_id: str, image: str = "",
                      address: str = "") -> ContainerRef:
        st = self.inventory.get(host, container_id) if container_id else None
        if st is None and container_id:
            st = next((c for h in self.inventory.hosts()
                       if (c := self.inventory.get(h, container_id))), None)
        if st is None:
            if not container_id:
                return ContainerRef(id="", name=UNKNOWN_CONTAINER_NAME, image=image or "unknown",
                                    address=address)
            return ContainerRef(id=container_id, image=image, address=address)
        return ContainerRef(id=st.container_id, name=st.name, image=st.image or image,
                            runtime=st.runtime or "", address=address)

    # ----------------------------------------------------------------------------- osquery
    def feed_osquery_row(self, row: OsqueryRow, observe: bool = True) -> None:
        """One osquery result row (any of the pack's tables); `observe=False` when the caller
        already fed the inventory with it (batches observe inventory rows first)."""
        t, col = row.table, row.columns
        host = row.host or self.host
        if not self.windows_only:
            self.stats.osquery_rows += 1
        if t in ("container_inventory", "container_events") and observe and not self.windows_only:
            self.inventory.observe(row)
        if t == "container_inventory" and row.action != "removed":
            if not self.windows_only:
                self._inventory_rules(host, row)
        elif t == "container_events":
            ts = event_time(col) or row.unix_time
            rec = LifecycleRecord(ts=ts, container_id=col.get("container_id", ""),
                                  image=col.get("image", ""), action=col.get("action", "").lower(),
                                  name=col.get("name", ""), host=host,
                                  exit_code=_i(col["exit_code"]) if col.get("exit_code") else None)
            self.feed_lifecycle(rec)
        elif t in ("container_process_events", "container_processes") and row.action != "removed":
            rec = self._process_from_row(t, host, row)
            # A snapshot lists long-running processes again and again, and at start-up lists
            # processes that began long ago: those are not new in any open window.
            stale = t == "container_processes" and rec.ts < self.data_time - self.window_s
            self.feed_process(rec, window=not stale)

    def _process_from_row(self, table: str, host: str, row: OsqueryRow) -> ProcessRecord:
        col = row.columns
        if table == "container_process_events":
            ts = event_time(col) or row.unix_time
        else:
            ts = _f(col.get("start_time")) or row.unix_time
        cid = col.get("container_id", "")
        image = col.get("image", "")
        if not image and cid:
            st = self.inventory.get(host, cid)
            image = st.image if st else ""
        return ProcessRecord(ts=ts, container_id=cid, image=image, pid=_i(col.get("pid")),
                             ppid=_i(col.get("ppid")), name=col.get("name", ""),
                             path=col.get("path", ""), cmdline=col.get("cmdline", ""), host=host,
                             location_discovery=col.get("location_discovery", "0") in ("1", "true"),
                             indicator=col.get("indicator", ""))

    def _inventory_rules(self, host: str, row: OsqueryRow) -> None:
        if not self.config.detection.risky_config:
            return
        col = row.columns
        cid = col.get("id", "")
        flags = ",".join(rules.risky_flags(col))
        if not flags or (host, cid, flags) in self._risky_seen:
            return
        self._risky_seen.add((host, cid, flags))
        ts = _f(col.get("started")) or _f(col.get("created")) or row.unix_time
        cand = rules.risky_config(col, ts, host, self.container_ref(host, cid, col.get("image", "")))
        if cand:
            self._add(cand)

    # ----------------------------------------------------------------------------- records
    def feed_process(self, rec: ProcessRecord, window: bool = True) -> None:
        key = (rec.container_id, rec.pid, rec.cmdline)
        prev = self._proc_seen.get(key)
        if prev is not None and abs(prev - rec.ts) < 5.0:
            return  # the same process from the event table and the snapshot table
        self._proc_seen[key] = rec.ts
        if len(self._proc_seen) > 200_000:
            self._prune_proc_seen(rec.ts)
        # Classify before the record enters a window: the location_discovery feature must not
        # depend on whether this run also evaluated the rules (a resumed replay does not).
        if not rec.location_discovery and rec.cmdline:
            hit, indicator, _ = rules.classify_command(rec.cmdline)
            if hit:
                rec.location_discovery, rec.indicator = True, rec.indicator or indicator
        if self.windows_only:
            if window:
                self._window_add("p", rec.ts, rec)
            return
        self.stats.processes += 1
        self._advance(rec.ts)
        if window:
            self._window_add("p", rec.ts, rec)
        cand = rules.host_location_discovery(
            rec, self.container_ref(rec.host or self.host, rec.container_id, rec.image))
        if cand:
            self._add(cand)

    def _prune_proc_seen(self, now: float) -> None:
        self._proc_seen = {k: t for k, t in self._proc_seen.items() if now - t < 60.0}

    def feed_lifecycle(self, rec: LifecycleRecord) -> None:
        if self.windows_only:
            self._window_add("l", rec.ts, rec)
            return
        self.stats.lifecycle += 1
        self._advance(rec.ts)
        self._window_add("l", rec.ts, rec)
        cand = self.churn.observe(rec, self.container_ref(rec.host, rec.container_id, rec.image))
        if cand:
            self._add(cand)

    def feed_net(self, rec: NetRecord, detection: Any = None) -> None:
        """An attributed network record; `detection` is a geo_stock GeoDetection for it, if any."""
        if detection is not None:
            rec.geo_service = rec.geo_service or detection.service
        if self.windows_only:
            if rec.container_id:
                self._window_add("n", rec.ts, rec)
            return
        self.stats.nets += 1
        self._advance(rec.ts)
        if rec.container_id:
            self._window_add("n", rec.ts, rec)
        container = self.container_ref(rec.host or self.host, rec.container_id, rec.image,
                                       address=rec.orig_h)
        cand = rules.network_location_discovery(rec, container)
        if cand:
            if detection is not None:
                cand.evidence[0]["method"] = detection.method
                cand.evidence[0]["category"] = detection.category
            self._add(cand)

    def feed_zeek(self, stream: str, rec: dict[str, Any], sensor_host: str | None = None,
                  _retry: bool = False) -> None:
        """A Zeek record (field names as Zeek writes them) from one of the streams."""
        host = sensor_host or self.host
        if self.hold_s > 0 and not _retry and not self.windows_only and self._should_hold(rec, host):
            # Live only: osquery reports a new container on its schedule, Zeek may log the
            # container's first connection before that. Hold the record, retry it when the
            # inventory learns something, release it as "container unknown" after hold_s.
            self._held.append((time.monotonic(), stream, rec, sensor_host))
            return
        dets = []
        if self.geo is not None and stream in ("dns", "http", "ssl", "conn"):
            try:
                dets = self.geo.feed(stream, rec)   # stateful (DNS answers): fed in both modes
            except Exception as exc:
                log.warning("geo_stock failed on a %s record: %s", stream, exc)
        if self.windows_only:
            net = self.zeek_to_net(stream, rec, host)
            if net is not None and net.container_id:
                if dets:
                    net.geo_service = net.geo_service or dets[0].service
                self._window_add("n", net.ts, net)
            return
        self.stats.zeek_records += 1
        net = self.zeek_to_net(stream, rec, host)
        if net is None:
            self._bad(f"zeek:{stream}")
            return
        if not net.container_id and not _in_container_subnet(net.orig_h):
            return  # not from a container: outside our scope
        if not net.container_id:
            self.stats.nets_unattributed += 1
        if stream == "container_geo" and not dets:
            # The Zeek package's own detection: method/category come with the record.
            dets = [_GeoFromLog(str(rec.get("service") or ""), str(rec.get("method") or "geo"),
                                str(rec.get("category") or ""))]
        if dets:
            net.geo_service = net.geo_service or dets[0].service
        if not dets and (stream == "conn" or (self.geo is not None and stream != "container_geo")):
            # No geo hit: only window input. (A plain conn is never one by itself; with the
            # stock-log detector present it has already judged dns/http/ssl with the same list.)
            self.stats.nets += 1
            self._advance(net.ts)
            if net.container_id:
                self._window_add("n", net.ts, net)
            return
        self.feed_net(net, dets[0] if dets else None)

    def _should_hold(self, d: dict[str, Any], host: str) -> bool:
        if d.get("container_id"):
            return False
        orig = d.get("id.orig_h") or d.get("orig_h") or ""
        ts = d.get("ts")
        if not orig or type(ts) is not float or not _in_container_subnet(str(orig)):
            return False
        return (self.inventory.lookup(host, str(orig), ts) or
                self.inventory.lookup_any_host(str(orig), ts)) is None

    def release_held(self, force: bool = False) -> int:
        """Retry held Zeek records: those now attributable, those held for hold_s, or all."""
        if not self._held:
            return 0
        now = time.monotonic()
        keep: deque = deque()
        n = 0
        for item in self._held:
            t, stream, rec, sensor = item
            if force or now - t >= self.hold_s or not self._should_hold(rec, sensor or self.host):
                self.feed_zeek(stream, rec, sensor, _retry=True)
                n += 1
            else:
                keep.append(item)
        self._held = keep
        return n

    def zeek_to_net(self, stream: str, d: dict[str, Any], host: str) -> NetRecord | None:
        ts = d.get("ts")
        if type(ts) is not float:
            ts = _f(ts, math.nan) if ts is not None else math.nan
        if ts != ts:                # NaN: no usable time
            return None
        orig = d.get("id.orig_h") or d.get("orig_h") or d.get("src") or ""
        if type(orig) is not str:
            orig = str(orig)
        if not orig:
            return None
        kind = "geo" if stream == "container_geo" else stream
        domain = ""
        if stream == "dns":
            domain = d.get("query") or ""
        elif stream == "http":
            domain = rules_strip_port(d.get("host") or "")
        elif stream == "ssl":
            domain = d.get("server_name") or ""
        elif stream == "container_geo":
            domain = d.get("domain") or d.get("query") or d.get("host") or d.get("name") or ""
        cid = str(d.get("container_id") or "")
        image = str(d.get("image") or "")
        if cid and self.inventory.get(host, cid) is None:
            st = next((c for h in self.inventory.hosts() if (c := self.inventory.get(h, cid))), None)
            if st is not None:
                host = st.host or host
        if not cid:
            st = self.inventory.lookup(host, orig, float(ts)) or \
                self.inventory.lookup_any_host(orig, float(ts))
            if st is not None:
                # The alert is about the container's host, whatever the sensor calls itself.
                cid, image, host = st.container_id, st.image, st.host or host
        return NetRecord(
            ts=float(ts), kind=kind, container_id=cid, image=image, orig_h=orig,
            resp_h=str(d.get("id.resp_h") or d.get("resp_h") or ""),
            resp_p=_i(d.get("id.resp_p")), orig_p=_i(d.get("id.orig_p")),
            proto=str(d.get("proto") or ("tcp" if stream in ("http", "ssl") else "")), uid=str(d.get("uid") or ""), host=host,
            domain=str(domain or ""), rcode=str(d.get("rcode_name") or ""),
            conn_state=str(d.get("conn_state") or ""), bytes_out=_i(d.get("orig_bytes")),
            bytes_in=_i(d.get("resp_bytes")), uri=str(d.get("uri") or ""),
            user_agent=str(d.get("user_agent") or ""),
            geo_service=str(d.get("service") or "") if stream == "container_geo" else "")

    def _bad(self, source: str, n: int = 1) -> None:
        self.stats.bad_input[source] = self.stats.bad_input.get(source, 0) + n

    # ----------------------------------------------------------------------------- windows
    # Windows are container-anchored like model.features' default: container c's window k is
    # [origin_c + k*W, origin_c + (k+1)*W) with origin_c its creation time (or first sighting), so a
    # start-up always looks the same. Records are buffered per open window; when data time passes a
    # window's end it is closed, and closed windows are built and scored in one batch at `flush`.

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
        cid = rec.container_id
        if not cid:
            return
        if kind == "l" and not self.windows_only:
            self._life_recent.append(rec)
        origin = self._origin(cid, ts)
        k = int(math.floor((ts - origin) / self.window_s))
        if k <= self._last_closed.get(cid, -1 << 62) or (cid, k) in self._skip:
            # Late record for a window already scored, or a window the daemon was holding when
            # it stopped (incomplete: not scored rather than scored wrong).
            if not self.windows_only:
                self.stats.late_records += 1
            return
        cw = self._cw.get(cid)
        if cw is not None and cw["k"] < k:
            self._close(cid)
            cw = None
        if cw is None:
            if self.windows_only and (cid, k) not in self._rebuild:
                return  # that window was scored before the checkpoint
            cw = self._cw[cid] = {"origin": origin, "k": k, "p": [], "n": [], "l": []}
            heapq.heappush(self._heap, (origin + (k + 1) * self.window_s, cid, k))
            self._win_pos.setdefault((cid, k), self.cur_pos)
        cw[kind].append(rec)

    def _close(self, cid: str) -> None:
        cw = self._cw.pop(cid, None)
        if cw is None:
            return
        self._last_closed[cid] = max(self._last_closed.get(cid, -1 << 62), cw["k"])
        self._win_pos.pop((cid, cw["k"]), None)
        self._closed.append((cid, cw))

    def _advance(self, ts: float) -> None:
        """Data time moved to `ts`: windows that ended before it are complete."""
        if ts <= self.data_time:
            return
        self.data_time = ts
        heap = self._heap
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

    def _score_closed(self) -> None:
        if not self._closed:
            return
        from model.features import build_windows, FeatureWindows  # heavy: only when scoring

        closed, self._closed = self._closed, []
        # One build for the whole batch (a per-window call costs ~0.3 ms of fixed overhead): all
        # closed windows' records, restricted to the span the batch covers, then keep exactly the
        # (container, window) rows that closed. Rows depend only on their own container's records
        # and the lifecycle events inside their window, so batching does not change a feature.
        procs: list = []
        nets: list = []
        infos: dict[str, ContainerInfo] = {}
        wanted: set[tuple[str, int]] = set()
        start, end = math.inf, -math.inf
        for cid, cw in closed:
            ws = cw["origin"] + cw["k"] * self.window_s
            start, end = min(start, ws), max(end, ws + self.window_s)
            procs.extend(cw["p"])
            nets.extend(cw["n"])
            wanted.add((cid, cw["k"]))
            if cid not in infos:
                st = self.inventory.get(self.host, cid)
                infos[cid] = ContainerInfo(container_id=cid,
                                           image=(st.image if st else "") or _img(cw),
                                           name=st.name if st else "", host=self.host,
                                           created=cw["origin"], environment=self.environment)
        life = [r for r in self._life_recent if start <= r.ts < end]
        fw_all = build_windows(procs, nets, life, list(infos.values()), window_s=self.window_s,
                               start=start, end=end, environment=self.environment)
        by_key = {(cid, cw["k"]): cw for cid, cw in closed}
        keep = []
        for i, (cid, ws) in enumerate(zip(fw_all.container_id, fw_all.window_start)):
            info = infos.get(cid)
            if info is not None and \
                    (cid, int(round((float(ws) - info.created) / self.window_s))) in wanted:
                keep.append(i)
        parts = [fw_all.select(keep)] if keep else []
        horizon = self.data_time - 3 * self.window_s
        while self._life_recent and self._life_recent[0].ts < horizon:
            self._life_recent.popleft()
        fw = FeatureWindows.concat(parts)
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
                    cw = by_key.get((r.container_id, k))
                    if cw is not None:
                        cand.evidence.extend(rules.window_samples(cw["p"], cw["n"], devs))
                self._add(cand)

    # ----------------------------------------------------------------------------- alerts
    def _add(self, cand: rules.Candidate) -> None:
        self.aggregator.add(cand, wall=time.time())

    def flush(self, force: bool = False, wall: float | None = None) -> list[Alert]:
        self.release_held(force=force)
        if force:
            self.close_windows()
        self._score_closed()
        out = self.aggregator.flush(self.data_time, force=force, wall=wall)
        self.stats.alerts += len(out)
        return out

    def process(self, items: Iterable[Any], finish: bool = True) -> list[Alert]:
        """Feed a batch (sorted by time here) and return the alerts; `finish` closes everything."""
        batch = sorted(_timed_items(items), key=lambda x: (x[0], x[1]))
        # Inventory first, so network records of a container that started in this batch attribute.
        for _, _, kind, payload in batch:
            if kind == "osq" and payload.table in ("container_inventory", "container_events"):
                self.inventory.observe(payload)
        for _, _, kind, payload in batch:
            self._dispatch(kind, payload)
        return self.flush(force=finish)

    def _dispatch(self, kind: str, payload: Any, observe: bool = False) -> None:
        if kind == "osq":
            # Batch callers (process, replay) observe the inventory up front.
            self.feed_osquery_row(payload, observe=observe)
        elif kind == "zeek":
            stream, rec = payload
            self.feed_zeek(stream, rec)
        elif kind == "proc":
            self.feed_process(payload)
        elif kind == "net":
            self.feed_net(payload)
        elif kind == "life":
            self.feed_lifecycle(payload)
        elif kind == "info":
            c: ContainerInfo = payload
            st = self.inventory._state(c.host or self.host, c.container_id)
            st.name, st.image = c.name or st.name, c.image or st.image
            st.created = c.created if c.created is not None else st.created
            for ip in c.ip_addresses:
                self.inventory._add_ip(st, ip)

    def prune(self, before_ts: float) -> None:
        """Forget per-container window bookkeeping of containers the inventory no longer has."""
        keep = {c.container_id for c in self.inventory.containers()} | set(self._cw)
        for d in (self._origins, self._last_closed):
            for cid in [c for c in d if c not in keep]:
                del d[cid]
        self.aggregator.prune(self.data_time)
        self.churn.prune(self.data_time)
        self._prune_proc_seen(self.data_time)

    # ----------------------------------------------------------------------------- state
    def dump_state(self) -> dict[str, Any]:
        return {
            "aggregator": self.aggregator.dump_state(),
            "churn": self.churn.dump_state(),
            "data_time": self.data_time,
            "risky_seen": [list(x) for x in sorted(self._risky_seen)],
            "open_windows": [[c, k, p] for (c, k), p in sorted(self._win_pos.items())],
            "held": [[stream, rec, sensor] for _, stream, rec, sensor in self._held],
            "origins": self._origins,
            "last_closed": self._last_closed,
            "life_recent": [[r.ts, r.container_id, r.image, r.action, r.name, r.host]
                            for r in self._life_recent],
            "stats": self.stats.to_dict(),
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.aggregator.load_state(st.get("aggregator", {}))
        self.churn.load_state(st.get("churn", []))
        self.data_time = float(st.get("data_time", 0.0))
        self._risky_seen = {tuple(x) for x in st.get("risky_seen", [])}
        self._rebuild = {(c, int(k)) for c, k, _ in st.get("open_windows", [])}
        now = time.monotonic()
        self._held = deque((now, stream, rec, sensor) for stream, rec, sensor in st.get("held", []))
        self._origins = {k: float(v) for k, v in st.get("origins", {}).items()}
        self._last_closed = {k: int(v) for k, v in st.get("last_closed", {}).items()}
        self._life_recent = deque(LifecycleRecord(ts=t, container_id=c, image=i, action=a, name=n,
                                                  host=h) for t, c, i, a, n, h in
                                  st.get("life_recent", []))
        for k, v in st.get("stats", {}).items():
            setattr(self.stats, k, v)


def _deviation_text(text: str, fallback: bool) -> str:
    """The model's explanation without its cold-start preamble ("<image> has N training windows
    (< M): scored by the environment-wide model of '<env>'; ..."): the fallback is stated
    separately on the alert, and the deviations are what a table has room for."""
    if fallback and "environment-wide model" in text and "; " in text:
        return text.split("; ", 1)[1]
    return text


@dataclass(frozen=True)
class _GeoFromLog:
    """A container_geo.log record's verdict, shaped like geo_stock.GeoDetection."""

    service: str
    method: str
    category: str


def _img(cw: dict[str, Any]) -> str:
    for kind in ("p", "n", "l"):
        for r in cw[kind]:
            if r.image:
                return r.image
    return ""


def rules_strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def item_time(kind: str, payload: Any) -> float:
    if kind == "osq":
        row: OsqueryRow = payload
        col = row.columns
        if row.table in ("container_events", "container_process_events"):
            return event_time(col) or row.unix_time
        if row.table == "container_processes":
            return _f(col.get("start_time")) or row.unix_time
        if row.table == "container_inventory":
            return _f(col.get("started")) or _f(col.get("created")) or row.unix_time
        return row.unix_time
    if kind == "zeek":
        return _f(payload[1].get("ts"))
    if kind == "info":
        return payload.created or 0.0
    return float(payload.ts)


def _timed_items(items: Iterable[Any]) -> Iterator[tuple[float, int, str, Any]]:
    for seq, it in enumerate(items):
        if isinstance(it, OsqueryRow):
            kind = "osq"
        elif isinstance(it, tuple) and len(it) == 2 and isinstance(it[1], dict):
            kind = "zeek"
        elif isinstance(it, ProcessRecord):
            kind = "proc"
        elif isinstance(it, NetRecord):
            kind = "net"
        elif isinstance(it, LifecycleRecord):
            kind = "life"
        elif isinstance(it, ContainerInfo):
            kind = "info"
        else:
            raise TypeError(f"cannot process {type(it).__name__}")
        yield item_time(kind, it), seq, kind, it


# =============================================================================================
# Batch replay of a recording


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


def load_recording_items(rec_dir: str | Path, stats: dict[str, Any] | None = None,
                         streams: Iterable[str] = ZEEK_STREAMS) -> tuple[Any, list[tuple]]:
    """All items of a recording in one deterministic time order: [(ts, seq, kind, payload)].

    Deterministic order is what makes a resumed replay produce the same alert ids."""
    from .recording import Recording
    from .zeeklog import ParseStats as ZeekStats

    rec = Recording(rec_dir)
    ostats = OsqueryStats()
    zstats = ZeekStats()
    items: list[tuple] = []
    seq = 0
    for row in rec.iter_osquery_rows(ostats):
        items.append((item_time("osq", row), 0, seq, "osq", row))
        seq += 1
    for si, stream in enumerate(streams):
        for d in rec.iter_zeek(stream, zstats):
            items.append((item_time("zeek", (stream, d)), 1 + si, seq, "zeek", (stream, d)))
            seq += 1
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    if stats is not None:
        stats["osquery"] = {"lines": ostats.lines, "rows": ostats.rows,
                            "malformed": ostats.malformed}
        stats["zeek"] = {k: v for k, v in vars(zstats).items()
                         if isinstance(v, (int, float, dict))} if hasattr(zstats, "__dict__") else \
            {f: getattr(zstats, f) for f in getattr(zstats, "__slots__", ())}
    return rec, [(t, k, p) for t, _, _, k, p in items]


class ReplayStore:
    """Replay state + alert outbox in the collectors' StateStore (one SQLite file)."""

    def __init__(self, path: str | Path) -> None:
        from .state import StateStore

        self.store = StateStore(path)
        self.store.ensure_schema(PIPELINE_SCHEMA)

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
            for a in alerts:
                conn.execute("INSERT OR IGNORE INTO alert_outbox(id, time, rule, container, body, "
                             "source) VALUES (?,?,?,?,?,?)",
                             (a.id, a.time, a.rule, a.container.id or a.container.name,
                              a.to_json(), name))
            conn.execute("INSERT OR REPLACE INTO pipeline_state(name, data, updated) VALUES (?,?,?)",
                         (name, json.dumps(state, default=str), time.time()))

    def pending(self) -> list[Alert]:
        from .alerts import alert_from_dict

        rows = self.store.conn.execute(
            "SELECT body FROM alert_outbox WHERE delivered=0 ORDER BY time, id").fetchall()
        return [alert_from_dict(json.loads(r[0])) for r in rows]

    def mark_delivered(self, ids: list[str]) -> None:
        with self.store.transaction() as conn:
            conn.executemany("UPDATE alert_outbox SET delivered=1 WHERE id=?", [(i,) for i in ids])

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


def deliver_outbox(store: ReplayStore, sinks: Any) -> int:
    """Hand undelivered alerts to the sinks, then mark them (sinks drop known ids on a repeat)."""
    pending = store.pending()
    if not pending:
        return 0
    if sinks is not None:
        sinks.emit(pending)
    store.mark_delivered([a.id for a in pending])
    return len(pending)


def replay(rec_dir: str | Path, config: Config | None = None, baselines: Any = None, *,
           sinks: Any = None, state_db: str | Path | None = None, chunk: int = 2000,
           progress: bool = False, resume: bool = True, collect_windows: bool = False,
           after_chunk: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay one recording through a fresh pipeline.

    With `state_db`, progress is committed per chunk (see module docstring) and a later call with
    the same db resumes where a killed run stopped. `after_chunk(i)` is a test hook."""
    config = config or Config()
    stats: dict[str, Any] = {}
    rec, items = load_recording_items(rec_dir, stats)
    name = f"replay:{rec.name}"
    pipe = Pipeline(config, baselines, host=rec.host or config.host_name,
                    environment=rec.meta.environment if config.environment == "default"
                    else config.environment)
    pipe.collect_windows = collect_windows
    # Inventory history first: a record is attributed with everything the recording knows.
    for _, kind, payload in items:
        if kind == "osq" and payload.table in ("container_inventory", "container_events"):
            pipe.inventory.observe(payload)
    pipe.inventory.close_snapshots()

    store = ReplayStore(state_db) if state_db else None
    start = 0
    if store is not None:
        st = store.load(name) if resume else None
        if st is not None:
            pipe.load_state(st["pipeline"])
            start = int(st["position"])
            # Rebuild the windows that were open at the checkpoint from their first item on.
            # Rebuild what the killed run held in memory by re-feeding, without rules, the items
            # of the last REFEED_HORIZON_S before the earliest open window: the open windows
            # themselves, the stock-log geo detector's DNS answers (TTL) and the process dedupe.
            wpos = [p for _, _, p in st["pipeline"].get("open_windows", [])]
            first = min(wpos) if wpos else start
            if 0 < start <= len(items):
                t_from = min(items[min(first, start - 1)][0], items[start - 1][0]) - REFEED_HORIZON_S
                i0 = bisect.bisect_left([it[0] for it in items[:start]], t_from)
                pipe.windows_only = True
                for i in range(i0, start):
                    pipe.cur_pos = i
                    pipe._dispatch(items[i][1], items[i][2])
                pipe.windows_only = False
                pipe._rebuild = set()
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
    while pos < len(items):
        end = min(len(items), pos + chunk)
        for i in range(pos, end):
            pipe.cur_pos = i
            pipe._dispatch(items[i][1], items[i][2])
        done = end >= len(items)
        out = pipe.flush(force=done)
        alerts.extend(out)
        reps = pipe.aggregator.take_repeats()
        repeats.extend(reps)
        if store is not None:
            state = {"pipeline": pipe.dump_state(), "position": end}
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
        from .alerts import alert_from_dict
        alerts = [alert_from_dict(d) for d in all_alerts]
    return ReplayResult(name=rec.name, alerts=alerts, stats=stats, resumed_from=start,
                        items=len(items), windows=pipe.collected, environment=pipe.environment,
                        repeats=repeats)


def train_from_recordings(rec_dirs: Iterable[str | Path], config: Config | None = None,
                          progress: bool = False, model_dir: str | Path | None = None) -> Any:
    """Per-image baselines from benign recordings, built from exactly the windows the pipeline
    scores (same code path, same window length), optionally saved to the model store."""
    from model.baseline import EnvironmentBaselines
    from model.features import FeatureWindows

    config = config or Config()
    parts, env = [], None
    for d in rec_dirs:
        res = replay(d, config, None, progress=progress, collect_windows=True)
        parts.extend(res.windows)
        env = env or res.environment
    fw = FeatureWindows.concat(parts)
    env = env or config.environment
    fw.environment = env
    eb = EnvironmentBaselines(env, min_windows=config.model.min_windows).fit(fw)
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
