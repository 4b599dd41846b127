"""The engine: osquery rows and Zeek records in, alerts out.

    collect (osquery_results / tailer / recording) -> inventory + join (address -> container at time)
      -> rules (T1614 host + network, churn, risky config) -> feature windows -> baseline scores
      -> AlertAggregator (merge host+network evidence, suppress repeats) -> sinks

The parts live apart: attribution (osquery rows -> records, Zeek record -> container at that time,
holding records of containers osquery has not reported yet) is `scheduler.detect.join.Joiner`; the feature
windows and their scoring are `scheduler.detect.windowing`; batch replay, training from recordings and the
ground-truth check are `scheduler.replay` (which imports this module; this one never imports it).

Two ways to drive the engine:

* incremental (`Pipeline.feed_*` then `Pipeline.flush()`): the daemon feeds whatever the tailers
  produced since the last tick; windows are scored when data time passes their end.
* batch (`scheduler.replay.replay(recording, ...)`), checkpointed per chunk.

For the emulator and tests the short form is `Pipeline(config).process(items) -> list[Alert]`, where
items are OsqueryRow, (stream, zeek_dict) tuples or model.records objects.
"""
from __future__ import annotations

import base64
import heapq
import ipaddress
import json
import logging
import time
from collections import deque
from itertools import groupby, repeat
from operator import is_, itemgetter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from model.records import (NET_FIELDS, ContainerInfo, LifecycleRecord, NetColumns, NetRecord,
                           ProcessRecord)
from model.codes import (constant, distinct_codes, factorize as codes_of,
                         last_rows_in_first_order, nonempty)
from model.window_agg import NetWindowAgg, concat_columns

from scheduler.collect.osquery_results import OsqueryRow
from scheduler.config import Config
from scheduler.detect import rules
from scheduler.detect.inventory import Inventory, event_time
from scheduler.detect.join import STREAM_KIND, Joiner, per_unique, strip_port, to_ts
from scheduler.detect.nat_join import JOIN_ADDRESS
from scheduler.detect.k8s_join import K8sJoin
from scheduler.detect.k8s_rules import K8sRules, K8sRuleSettings
from scheduler.collect.k8s_audit import OrchestrationRecord
from scheduler.detect.misuse import MisuseDetector, answer_addresses
from scheduler.detect.windowing import WindowingMixin, attributed_rows, sorted_codes
from scheduler.alerting.alerts import Alert, AlertAggregator, ContainerRef, UNKNOWN_CONTAINER_NAME

log = logging.getLogger(__name__)

#: osquery tables the batch callers observe before the items around them (`observe_up_front`):
#: the inventory's history and the NAT flows
CONTAINER_TABLES = ("container_inventory", "container_events", "container_nat_flows")

try:
    from scheduler.detect.geo_stock import GeoStockDetector
except Exception:  # pragma: no cover
    GeoStockDetector = None  # type: ignore

PIPELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_state (
    name   TEXT PRIMARY KEY,      -- 'daemon' or 'replay:<recording>'
    data   TEXT NOT NULL,         -- JSON: aggregator, churn, windows, position
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS window_chunks (
    name   TEXT NOT NULL,         -- as pipeline_state.name
    seq    INTEGER NOT NULL,      -- the chunk's place in the close-lag queue
    data   TEXT NOT NULL,         -- JSON columns of the chunk as queued (EngineState.save)
    PRIMARY KEY (name, seq)
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

ZEEK_STREAMS = ("conn", "dns", "http", "ssl", "container_geo", "stratum")

# The Zeek fields the engine reads (the join's attribution and NetRecord, the stock-log geo
# detector's rules), per stock stream. Readers feeding the engine ask for these only, which
# spares converting the other two thirds of an http.log line; "id" keeps nested-JSON records'
# addresses. container_geo (the package's own log, small) is read whole.
_JOIN_FIELDS = ("ts", "uid", "id", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "orig_h",
                "orig_p", "resp_h", "resp_p", "src", "proto", "container_id", "image",
                "container_image")
INGEST_FIELDS: dict[str, frozenset[str]] = {
    "conn": frozenset(_JOIN_FIELDS + ("conn_state", "orig_bytes", "resp_bytes", "service")),
    "dns": frozenset(_JOIN_FIELDS + ("query", "qtype_name", "rcode", "rcode_name", "answers",
                                     "TTLs")),
    "http": frozenset(_JOIN_FIELDS + ("method", "host", "uri", "user_agent")),
    "ssl": frozenset(_JOIN_FIELDS + ("server_name",)),
}


#: Of those, the text fields the batch path never reads as a column (`_zeek_run`): they reach
#: NetColumns (uid, uri, user_agent) or only records (method), and only the rows made records
#: (evidence samples, the rules' records, the daemon's queue) are ever read, so the reader may
#: leave them deferred: no Python str per row. `PASSIVE_FIELDS` are not even parsed (read from
#: the lines of the rows asked for: an http or ssl log's rows are almost never records);
#: `KEPT_FIELDS` are parsed and kept in pyarrow's hands (a quarter of a conn.log's rows and
#: many of a dns.log's reach an evidence sample, which reads their uid).
PASSIVE_FIELDS: dict[str, frozenset[str]] = {
    "http": frozenset({"uid", "method", "uri", "user_agent"}),
    "ssl": frozenset({"uid"}),
}
KEPT_FIELDS: dict[str, frozenset[str]] = {
    "conn": frozenset({"uid"}),
    "dns": frozenset({"uid"}),
}


def ingest_fields(stream: str) -> frozenset[str] | None:
    """Fields to read of `stream` for the engine; None: all of them."""
    return INGEST_FIELDS.get(stream)


def passive_fields(stream: str) -> frozenset[str]:
    """Fields of `stream` the engine reads for the rows made records only, few of them
    (`PASSIVE_FIELDS`: the reader's `lazy`)."""
    return PASSIVE_FIELDS.get(stream, frozenset())


def kept_fields(stream: str) -> frozenset[str]:
    """Fields of `stream` the engine reads for the rows made records only, many of them
    (`KEPT_FIELDS`: the reader's `kept`)."""
    return KEPT_FIELDS.get(stream, frozenset())


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
    k8s_records: int = 0
    bad_input: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Pipeline(WindowingMixin):
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
                self.geo = GeoStockDetector(conn_after_name=True)   # order-independent
            except Exception as exc:  # indicator data or classifier missing
                log.info("stock-log geo detector unavailable (%s); using domain rules only", exc)
        self.baselines = baselines
        self.stats = PipelineStats()
        self._init_windows(det.window_s)
        self._proc_seen: dict[tuple[str, int, str], float] = {}
        self._wqueue: list[tuple[float, int, str, Any]] = []   # window input waiting (close lag)
        self._wseq = 0
        self._wqueue_rows = 0           # network rows in the queue (records and chunk rows)
        self.window_queue_overflows = 0
        self._risky_seen: set[tuple[str, str, str]] = set()
        # Runs of Zeek rows shorter than this take the per-record path (see feed_zeek_rows).
        self.batch_min_rows = BATCH_MIN_ROWS
        # Attribution (address -> container at a time, process rows, the hold of records whose
        # container osquery has not reported yet) is the join's; the engine judges outbound
        # traffic only and takes geo verdicts from its detectors, not from bare names.
        self.joiner = _LiveJoiner(self.inventory, self.environment, hold_s=0.0,
                             default_host=self.host, inbound=False, geo_from_names=False)
        self.joiner.subnets += [ipaddress.ip_network(n, strict=False)
                                for n in det.container_subnets]
        # Kubernetes audit records: their own rules, and the join that names the requester
        # on alerts about containers in pods (docs/kubernetes.md).
        k8s = self.config.kubernetes
        misuse = getattr(det, "misuse", None)     # one registry allow-list for both sides
        self.k8s_rules = K8sRules(K8sRuleSettings(
            churn_n=k8s.churn_n, churn_t_s=k8s.churn_t_s, baseline_s=k8s.baseline_s,
            allowed_registries=list(getattr(misuse, "allowed_registries", []) or []),
            trusted_users=list(k8s.trusted_users)), default_host=k8s.cluster)
        self.k8s_join = K8sJoin(after_s=k8s.join_after_s, trusted_users=k8s.trusted_users)
        if self.geo is not None:   # uplink sensors: the host's NAT address speaks for containers
            self.geo.also_source = self.joiner.nat.is_nat_address
        # Named misuse rules (reverse shell, tunnels, beaconing, ...); the destinations each
        # image contacted in training come with the baselines (replay.train_from_recordings).
        self.misuse = MisuseDetector(
            det.misuse, baseline=getattr(baselines, "misuse_baseline", None),
            internal=self.joiner.in_container_subnet, known_address=self._address_ever_held,
            baseline_images=list(getattr(baselines, "models", None) or ()))

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
        if row.unix_time > self.joiner.osquery_until.get(host, 0.0):
            self.joiner.osquery_until[host] = row.unix_time
        if t == "container_nat_flows":   # the NAT join's input (batch callers observe it first)
            if observe:
                self.joiner.observe_nat(row, host)
            return
        if t == "container_inventory" and row.action != "removed":
            if not self.windows_only:
                self._inventory_rules(host, row)
                if not self.collect_windows:
                    self._misuse_inventory(host, row)
                if col.get("pod_name") or "io.kubernetes.pod" in str(col.get("labels", "")):
                    self.k8s_join.observe_inventory(col.get("id", ""), col)
        elif t == "container_events":
            ts = event_time(col) or row.unix_time
            rec = LifecycleRecord(ts=ts, container_id=col.get("container_id", ""),
                                  image=col.get("image", ""), action=col.get("action", "").lower(),
                                  name=col.get("name", ""), host=host,
                                  exit_code=_i(col["exit_code"]) if col.get("exit_code") else None)
            self.feed_lifecycle(rec)
        elif t in ("container_process_events", "container_processes") and row.action != "removed":
            rec = self.joiner.process_from_row(row, host)
            if col.get("pod_uid"):
                self.k8s_join.observe_process(rec.container_id, col["pod_uid"])
            # A snapshot lists long-running processes again and again, and at start-up lists
            # processes that began long ago: those are not new in any open window.
            # (Live, data time runs ahead of the windows by the close lag: measured from there.)
            stale = t == "container_processes" and \
                rec.ts < self.data_time - self.close_lag_s - self.window_s
            self.feed_process(rec, window=not stale)
            if not self.windows_only and not self.collect_windows:
                for cand in self.misuse.process(
                        col, rec, lambda: self.container_ref(host, rec.container_id, rec.image)):
                    self._add(cand)

    def _misuse_inventory(self, host: str, row: OsqueryRow) -> None:
        col = row.columns
        ts = _f(col.get("started")) or _f(col.get("created")) or row.unix_time
        for cand in self.misuse.inventory(col, ts, host, lambda: self.container_ref(
                host, col.get("id", ""), col.get("image", ""))):
            self._add(cand)

    def _address_ever_held(self, addr: str) -> bool:
        """Did any container, on any host, ever hold `addr` (spoofed-source rule)?

        With no host view at all (Zeek-only input, `osquery_mode = "none"`, or osquery not yet
        reporting any container address) no address is "unknown": every container would look
        spoofed, so the rule has nothing to compare with and stays silent (counted as known)."""
        hosts = self.inventory.hosts()
        if not any(c.ips for h in hosts for c in self.inventory.containers(h)):
            return True
        return any(self.inventory.holders(h, addr) for h in hosts)

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

    # ----------------------------------------------------------------------------- window order
    def _window_add(self, kind: str, ts: float, rec: Any) -> None:
        """With a close lag (the daemon), window input waits in a time-ordered queue until data
        time passes it by the lag: records that arrive a little out of order (osquery reports on
        its schedule, Zeek logs a connection when it ends) then reach their windows in time
        order, as in a replay, instead of as late records. Rules are not delayed."""
        if self.close_lag_s <= 0 or self.windows_only:
            WindowingMixin._window_add(self, kind, ts, rec)
            return
        self._wseq += 1
        heapq.heappush(self._wqueue, (ts, self._wseq, kind, rec))
        if kind == "n":
            self._wqueue_rows += 1

    def _window_add_nets(self, nets: NetColumns, rows: Any = None) -> None:
        """The batch engine's window input (rows `rows` of `nets`, or all): with a close lag,
        each container's rows wait in the same queue as one item (a NetColumns chunk, not a
        NetRecord per row), released in time order with the other window input (see
        `_release_window_input`)."""
        if self.close_lag_s <= 0 or self.windows_only:
            WindowingMixin._window_add_nets(self, nets, rows)
            return
        if not self.windows_enabled or not len(nets):
            return
        idx, ccodes, cvalues = attributed_rows(nets, rows)
        if not idx.size:
            return
        nets = _shared_strings(nets.take(idx).materialized())
        ts = np.asarray(nets.ts, dtype=float)
        _, inv = sorted_codes(ccodes, cvalues)
        order = np.lexsort((np.arange(idx.size), ts, inv))             # cid, time, row
        cuts = np.flatnonzero(np.diff(inv[order])) + 1
        for part in np.split(order, cuts):
            self._wseq += 1
            heapq.heappush(self._wqueue, (float(ts[part[0]]), self._wseq, "N",
                                          _constant_columns(nets.take(part))))
            self._wqueue_rows += int(part.size)
        if self._wqueue_rows > WINDOW_QUEUE_MAX_ROWS:
            # Bounded: past the cap the queue is handed over now (the lag is not waited for),
            # so a burst costs some late records rather than memory.
            self.window_queue_overflows += 1
            log.warning("window queue over %d rows: released without the close lag",
                        WINDOW_QUEUE_MAX_ROWS)
            self._release_window_input(self.data_time)

    def _release_window_input(self, until: float) -> None:
        """Hand queued window input up to data time `until` to the windows, in time order.

        A container's windows are anchored at its creation (inventory); a record of a container
        osquery has not reported yet waits (up to one more window length) so the anchor is the
        creation time, as in a replay that knows the inventory up front, not the record's time.

        Network chunks (`_window_add_nets`) release their rows up to `until`; a container's rows
        are then fed, a run at a time, between that container's other records in (time,
        arrival) order: the order each container's windows would have seen record by record
        (containers' windows do not depend on each other's order)."""
        q = self._wqueue
        waiting = []
        released: set[str] = set()     # containers whose input went to the windows here
        items: list[tuple[float, int, str, Any]] = []
        chunks: dict[str, list[tuple[int, Any]]] = {}
        while q and q[0][0] <= until:
            item = heapq.heappop(q)
            ts, seq, kind, rec = item
            cid = rec.container_id[0] if kind == "N" else rec.container_id
            if cid and cid not in released and cid not in self._origins \
                    and self.inventory.get(self.host, cid) is None \
                    and ts > until - self.window_s and until != float("inf"):
                waiting.append(item)
                continue
            if cid and self.windows_enabled:
                released.add(cid)
            if kind != "N":
                items.append(item)
                continue
            n = int(np.searchsorted(rec.ts, until, side="right"))
            if n < len(rec):
                heapq.heappush(q, (float(rec.ts[n]), seq, "N", rec.take(slice(n, None))))
                rec = rec.take(slice(0, n))
            self._wqueue_rows -= n
            chunks.setdefault(cid, []).append((seq, rec))
        for item in waiting:
            heapq.heappush(q, item)
        runs = {cid: _NetRun(parts) for cid, parts in chunks.items()}
        for ts, seq, kind, rec in items:
            run = runs.get(rec.container_id)
            if run is not None:
                self._feed_net_run(run.before(ts, seq))
            if kind == "n":
                self._wqueue_rows -= 1
            WindowingMixin._window_add(self, kind, ts, rec)
        for cid in sorted(runs):
            self._feed_net_run(runs[cid].rest())
        if self._pending:
            self._count_pending()

    def _feed_net_run(self, cols: NetColumns | None) -> None:
        if cols is not None and len(cols):
            WindowingMixin._window_add_nets(self, cols)

    def _advance(self, ts: float) -> None:
        if ts <= self.data_time:
            return
        if self._wqueue:
            self._release_window_input(ts - self.close_lag_s)
        WindowingMixin._advance(self, ts)

    def close_windows(self) -> None:
        self._release_window_input(float("inf"))
        WindowingMixin.close_windows(self)

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
        if not self.collect_windows:
            for cand in self.misuse.lifecycle(rec):
                self._add(cand)

    def feed_k8s(self, rec: OrchestrationRecord) -> None:
        """A Kubernetes audit record: the k8s rules, and the join's memory of who made or
        entered which pod (used when alerts on containers in pods are written)."""
        if self.windows_only:
            return      # a resumed replay restores both from the saved state
        self.stats.k8s_records += 1
        self._advance(rec.ts)
        self.k8s_join.observe(rec)
        for cand in self.k8s_rules.observe(rec):
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
                if rec.kind == "geo":   # the Zeek package's own record: say so, with its map image
                    cand.evidence[0]["summary"] = geo_log_summary(rec, detection.method)
            self._add(cand)

    def feed_zeek(self, stream: str, rec: dict[str, Any], sensor_host: str | None = None,
                  _retry: bool = False) -> None:
        """A Zeek record (field names as Zeek writes them) from one of the streams."""
        host = sensor_host or self.host
        joiner = self.joiner
        if joiner.hold_s > 0 and not _retry and not self.windows_only \
                and joiner.should_hold(rec, host):
            # Live only: osquery reports a new container on its schedule, Zeek may log the
            # container's first connection before that. Hold the record, retry it when the
            # inventory learns something, release it as "container unknown" after hold_s
            # (wall time: the daemon's collect cycles).
            joiner.hold(stream, rec, sensor_host, time.monotonic())
            return
        dets = []
        if self.geo is not None and stream in ("dns", "http", "ssl", "conn"):
            try:
                dets = self.geo.feed(stream, rec)   # stateful (DNS answers): fed in both modes
            except Exception as exc:
                log.warning("geo_stock failed on a %s record: %s", stream, exc)
        net = joiner.net_record(stream, rec, host, keep_non_container=True)
        if self.windows_only:
            if net is not None and net.container_id:
                if dets:
                    net.geo_service = net.geo_service or dets[0].service
                self._window_add("n", net.ts, net)
            return
        self.stats.zeek_records += 1
        if net is None:
            self._bad(f"zeek:{stream}")
            return
        if not net.container_id and not joiner.in_container_subnet(net.orig_h):
            return  # not from a container: outside our scope
        if not net.container_id:
            self.stats.nets_unattributed += 1
        if stream == "container_geo" and not dets:
            # The Zeek package's own detection: method/category come with the record.
            dets = [_GeoFromLog(str(rec.get("service") or ""), str(rec.get("method") or "geo"),
                                str(rec.get("category") or ""))]
        if dets:
            net.geo_service = net.geo_service or dets[0].service
        if self.collect_windows:
            self.misuse.learn(net)      # training: the destinations each image contacts
        else:
            def container(net: NetRecord = net) -> ContainerRef:   # built only for a hit
                return self.container_ref(net.host or self.host, net.container_id, net.image,
                                          address=net.orig_h)
            for cand in self.misuse.net(stream, rec, net, container):
                self._add(cand)
        if stream == "stratum":
            self.stats.nets += 1        # the misuse rules' own stream: no window feature
            self._advance(net.ts)
            return
        if not dets and (stream == "conn" or (self.geo is not None and stream != "container_geo")):
            # No geo hit: only window input. (A plain conn is never one by itself; with the
            # stock-log detector present it has already judged dns/http/ssl with the same list.)
            self.stats.nets += 1
            self._advance(net.ts)
            if net.container_id:
                self._window_add("n", net.ts, net)
            return
        self.feed_net(net, dets[0] if dets else None)

    # ----------------------------------------------------------------------------- Zeek batches
    def feed_zeek_rows(self, batch: Any, rows: Any, sensor_host: str | None = None) -> None:
        """Rows `rows` (index array or slice, in feeding order) of a scheduler.collect.zeekbatch
        ZeekBatch: the effect of `feed_zeek(batch.stream, batch.record(i), sensor_host)` for
        each row i in order, computed a batch at a time.

        Why: the per-record path costs ~20 us a line. Here attribution is one interval lookup
        per distinct source address, and the geo detector's and misuse rules' interest is one
        verdict per distinct name/address. A row a rule may act on or keep state from (a listed
        name, an address a DNS answer made known, an explicit container id, a NAT or held row,
        conn/dns rows while the misuse rules keep per-connection state, a Kubernetes API name)
        goes through `feed_zeek` with its record, so every verdict has one implementation. The
        rows between two such rows (a segment) only count, advance data time and reach the
        windows as one NetColumns; segments and record rows are applied in row order, so a
        record row sees the state it would have seen row by row. A run shorter than
        `batch_min_rows` takes the record path whole: the batch path has a fixed cost per run
        (~1 ms here) that only a long run repays (a replay interleaves its streams by time, so
        its runs are often a few rows)."""
        idx = np.arange(len(batch))[rows] if isinstance(rows, slice) \
            else np.asarray(rows, dtype=np.int64)
        if idx.size == 0:
            return
        stream = batch.stream
        if idx.size < self.batch_min_rows or not self._batchable(batch):
            for i in idx.tolist():
                self.feed_zeek(stream, batch.record(i), sensor_host)
            return
        run = self._zeek_run(batch, idx, sensor_host)
        lo, n = 0, len(idx)
        for s in np.flatnonzero(run["slow"]).tolist() + [n]:
            if s > lo:
                self._zeek_segment(stream, run, lo, s)
            if s < n:
                self.feed_zeek(stream, batch.record(int(idx[s])), sensor_host)
            lo = s + 1

    def _batchable(self, batch: Any) -> bool:
        """Can this batch take the fast path at all? (Else every row is a record row.)"""
        return not self.windows_only and batch.stream in _BATCH_STREAMS \
            and not any(c in batch.columns for c in _ALT_COLUMNS) \
            and (self.geo is not None or batch.stream == "conn") and not self.joiner.inbound

    def _zeek_run(self, batch: Any, idx: Any, sensor_host: str | None,
                  names_ahead: dict[tuple[str, str], set[str]] | None = None) -> dict[str, Any]:
        """The columns and verdicts of a run of rows: NetRecord's fields as `Joiner.net_record`
        would fill them, attribution, `slow` (the rows that take `feed_zeek`) and `geo` (the
        rows the stock-log geo detector takes). `names_ahead`: for a conn run among other
        streams' rows, the names those rows may teach the misuse rules before a conn row
        (`MisuseDetector.rows_of_interest`)."""
        stream, n = batch.stream, len(idx)
        idx = _whole(idx, len(batch))
        joiner, inv = self.joiner, self.inventory
        host = sensor_host or self.host
        jhost = host or joiner.default_host
        text: dict[str, Any] = {}

        def col(name: str) -> Any:
            if name not in text:
                text[name] = _text_col(batch, name, idx)
            return text[name]

        def passive(name: str) -> Any:     # a column only rows made records read
            lazy = batch.deferred.get(name)
            return lazy[idx] if lazy is not None else col(name)

        coded: dict[str, Any] = {}

        def codes(name: str) -> Any:
            if name not in coded:
                coded[name] = _run_codes(batch, name, idx)
            return coded[name]

        ts = np.asarray(batch.column("ts")[idx], dtype=np.float64)
        orig, resp = col("id.orig_h"), col("id.resp_h")
        hid, holders, inside = joiner.attribute_many(host, orig, ts, codes=codes("id.orig_h"))
        attributed = hid >= 0
        ocodes = codes("id.orig_h")
        slow = np.isnan(ts) | (~nonempty(ocodes) if ocodes is not None else orig == "")
        if "container_id" in batch.columns:
            slow |= col("container_id") != ""          # the Zeek package named the container
        nat = joiner.nat
        if len(nat):
            slow |= ~inside                             # an uplink row: the NAT join's
        if joiner.hold_s > 0:
            # Rows the live hold may keep (joiner.should_hold), judged loosely: unknown
            # container-subnet sources, uplink addresses, addresses several containers held.
            slow |= inside & ~attributed
            slow |= per_unique(orig, lambda a: nat.is_nat_address(a)
                               or len(inv.holders(jhost, a)) > 1, codes=codes("id.orig_h"))
        if self.geo is not None:
            geo_rows = self.geo.rows_of_interest(stream, col, n, codes=codes)
            slow |= geo_rows
        else:
            geo_rows = np.zeros(n, dtype=bool)
        dcodes = None                                   # the domain column's (codes, uniques)
        if stream == "dns":
            domain, dcodes = col("query"), codes("query")
        elif stream == "http":
            dcodes = codes("host")
            if dcodes is not None:                      # strip_port once per distinct Host
                hc, hu = dcodes
                du = np.empty(len(hu), dtype=object)
                du[:] = [strip_port(h) for h in hu]
                dcodes = (hc, du)
                domain = du[hc]
            else:
                domain = per_unique(col("host"), strip_port, dtype=object)
        elif stream == "ssl":
            domain, dcodes = col("server_name"), codes("server_name")
        else:
            domain = constant(n, "")
        misuse = self.misuse
        learning = self.collect_windows or misuse.learning
        hcodes = np.where(hid < 0, len(holders), hid)       # _table's index of each row
        cid_tab = _table([h.container_id for h in holders], "")
        image_tab = _table([h.image for h in holders], "")
        cid, image = cid_tab[hcodes], image_tab[hcodes]
        resp_p = _count_col(batch, "id.resp_p", idx)
        if not learning:
            unknown = inside & ~attributed
            if unknown.any():
                slow |= unknown & per_unique(orig, misuse.may_flag_source,
                                             codes=codes("id.orig_h"))
            if stream in ("conn", "dns"):
                # the rows a misuse rule may report on; the rest only add to its state
                # (`_zeek_segment`: MisuseDetector.absorb)
                slow |= attributed & misuse.rows_of_interest(
                    stream, cid, image, resp, resp_p, domain, names_ahead,
                    codes={"cids": (hcodes, cid_tab), "images": (hcodes, image_tab),
                           "domains": dcodes})
            else:
                slow |= attributed & per_unique(domain, misuse.may_name_api_server,
                                                codes=dcodes)
        hosts_tab = _table([h.host or jhost for h in holders], jhost)
        hosts = hosts_tab[hcodes]
        empty = constant(n, "")
        if stream in ("http", "ssl"):
            proto = _filled(codes("proto"), col("proto"), "tcp") if "proto" in batch.columns \
                else constant(n, "tcp")
        else:
            proto = col("proto")
        rcode = empty
        if stream == "dns":
            numeric = per_unique(batch.column("rcode")[idx],
                                 lambda v: "" if v == -1 else str(v), dtype=object)
            rcode = np.where(col("rcode_name") != "", col("rcode_name"), numeric).astype(object)
        conn = stream == "conn"
        zero = np.zeros(n, dtype=np.int64)
        nets = NetColumns(
            ts=ts, kind=constant(n, STREAM_KIND[stream]), container_id=cid,
            image=image, orig_h=orig, resp_h=resp, resp_p=resp_p,
            orig_p=_count_col(batch, "id.orig_p", idx), proto=proto, uid=passive("uid"),
            host=hosts,
            domain=domain, rcode=rcode, conn_state=col("conn_state") if conn else empty,
            bytes_out=_count_col(batch, "orig_bytes", idx) if conn else zero,
            bytes_in=_count_col(batch, "resp_bytes", idx) if conn else zero,
            uri=passive("uri"), user_agent=passive("user_agent"), geo_service=empty,
            attribution=_ATTRIBUTION[np.where(attributed, 0, 1)],
            container_addr=empty)
        # the factorizations in hand (NetColumns.codes): the windows group and count by them
        nets.codes.update(container_id=(hcodes, cid_tab), image=(hcodes, image_tab),
                          host=(hcodes, hosts_tab), kind=_constant_codes(n, STREAM_KIND[stream]),
                          geo_service=_constant_codes(n, ""))
        if dcodes is not None:
            nets.codes["domain"] = dcodes
        if codes("id.resp_h") is not None:
            nets.codes["resp_h"] = codes("id.resp_h")
        if stream not in ("http", "ssl") and codes("proto") is not None:
            nets.codes["proto"] = codes("proto")
        extra = {}
        if stream == "dns" and not learning:     # what MisuseDetector.absorb keeps of a query
            extra = {"answers": col("answers") if "answers" in batch.columns else None,
                     "qtype": col("qtype_name") if "qtype_name" in batch.columns else None}
        return {"slow": slow, "inside": inside, "attributed": attributed, "nets": nets,
                "learning": learning, "geo": geo_rows, **extra}

    def _zeek_segment(self, stream: str, run: dict[str, Any], lo: int, hi: int) -> None:
        """Rows lo..hi-1 of a run, none of which a rule acts on: what `feed_zeek` does for such
        a row, for all of them (`_segment_state`, then `_segment_windows`)."""
        kept = self._segment_state(stream, run, lo, hi)
        if kept.size:
            self._segment_windows(run["nets"], kept, run["attributed"][kept])

    def _segment_state(self, stream: str, run: dict[str, Any], lo: int, hi: int,
                       pos: Any = None, names_out: list | None = None) -> Any:
        """Rows lo..hi-1 of a run, none a rule acts on: counters, and the training
        destinations or what the misuse rules keep of them. Returns the rows from inside the
        container subnets (the ones data time and the windows take), as run indices.
        `names_out` (a mixed run, with `pos` the rows' places in it): the names the misuse
        rules learn are listed as (place, key, name), to be kept in the mixed order."""
        n = hi - lo
        inside = run["inside"][lo:hi]
        attributed = run["attributed"][lo:hi]
        n_in, n_att = int(inside.sum()), int(attributed.sum())
        js = self.joiner.stats
        js.net += n
        js.net_attributed += n_att
        js.net_unknown += n_in - n_att
        js.net_not_container += n - n_in
        self.stats.zeek_records += n
        self.stats.nets_unattributed += n_in - n_att
        if not n_in:
            return np.zeros(0, dtype=np.int64)      # none from a container: outside our scope
        nets = run["nets"]
        kept = np.flatnonzero(inside) + lo
        if run["learning"]:
            self.misuse.learn_many(STREAM_KIND[stream], nets.container_id[kept],
                                   nets.image[kept], nets.resp_h[kept], nets.resp_p[kept],
                                   nets.domain[kept])
        elif stream in ("http", "ssl") and n_att:
            named = np.flatnonzero(attributed) + lo
            if pos is None:
                named = named[_last_name_rows(nets, named)]
            self.misuse.remember_names(nets.container_id[named], nets.resp_h[named],
                                       nets.domain[named],
                                       None if pos is None else pos[named], names_out)
        elif stream in ("conn", "dns") and n_att:
            rows = np.flatnonzero(attributed) + lo
            self.misuse.absorb(stream, rows, nets, run.get("answers"), run.get("qtype"),
                               None if pos is None else pos[rows], names_out)
        self.stats.nets += len(kept)
        return kept

    def _segment_windows(self, nets: NetColumns, kept: Any, attributed: Any) -> None:
        """Data time and the windows for rows `kept` of `nets` (in feeding order; `attributed`
        says which of them have a container), per stretch (`_late_cuts`): advance to the first
        row's time, add the stretch's rows, advance to its newest. Row by row the same windows
        close (a row's own window ends after it; an older open window of its container is
        closed by the row itself), only possibly in another order within one flush."""
        ts = nets.ts[kept]
        windows = self.windows_enabled
        cuts = self._late_cuts(nets.container_id[kept], ts) if windows and len(ts) > 1 else []
        for a, b in zip([0] + cuts, cuts + [len(kept)]):
            self._advance(float(ts[a]))
            if windows:
                rows = kept[a:b][attributed[a:b]]
                if len(rows):
                    self._window_add_nets(nets, rows)
            self._advance(float(ts[a:b].max()))
        if self._pending:
            self._count_pending()

    def dispatch(self, items: Iterable[tuple[str, Any]], pos: int | None = None) -> None:
        """Feed (kind, payload) items in order: the one dispatch of the replay and the daemon.
        Consecutive "zrow" items (payload (ZeekBatch, row)) go through the batch path together
        (`_feed_run`), whatever their streams; a "zrun" item is such a run already as arrays
        (payload (batches, each row's index into them, each row's row number): the replay's
        rows, which it keeps without an object per row), and counts as one position per row;
        every other item goes through `_dispatch`. `pos`: the stream position of the first
        item (the replay's `cur_pos` bookkeeping; a run of rows counts at its first row's
        position); None leaves `cur_pos` alone (the daemon)."""
        at = pos if pos is not None else 0
        for kind, group in groupby(items, key=_KIND):      # runs of one kind, grouped in C
            if kind == "zrow":
                zrows = list(map(_PAYLOAD, group))
                self._feed_run(*_batch_codes(zrows), at if pos is not None else None)
                at += len(zrows)
                continue
            if kind == "zrun":
                for _, (batches, gbid, row) in group:
                    self._feed_run(*_local_batches(batches, gbid), row,
                                   at if pos is not None else None)
                    at += len(row)
                continue
            for _, payload in group:
                if pos is not None:
                    self.cur_pos = at
                self._dispatch(kind, payload)
                at += 1

    def _feed_run(self, batches: list[Any], bid: Any, row: Any, pos: int | None) -> None:
        """Consecutive Zeek rows of the dispatch (`bid`: each row's batch in `batches`, `row`:
        its row there): one batch's rows through `feed_zeek_rows`; rows of several batches
        interleaved in short stretches (a sensor's streams sorted by time) through
        `_feed_mixed`, unless the run is short or a mode needs row order within each stream
        (training learns names a conn row reads; a resumed replay's re-feed): then each
        stretch of one batch's rows through `feed_zeek_rows`."""
        if pos is not None:
            self.cur_pos = pos
        if len(batches) == 1:
            b = batches[0]
            self.feed_zeek_rows(b, row, b.meta.get("sensor_host"))
            return
        cuts = (np.flatnonzero(bid[1:] != bid[:-1]) + 1).tolist()
        bounds = [0] + cuts + [len(row)]
        # Batches one after the other (a tailer's blocks of one log, a quiet second stream)
        # take the batch path stretch by stretch, which is row order already; rows of
        # several batches interleaved in short stretches are judged together instead.
        interleaved = min(b - a for a, b in zip(bounds, bounds[1:])) < self.batch_min_rows
        if interleaved and len(row) >= self.batch_min_rows and not (
                self.windows_only or self.collect_windows or self.misuse.learning):
            self._feed_mixed(batches, bid, row)
            return
        for lo, hi in zip(bounds, bounds[1:]):
            b = batches[int(bid[lo])]
            self.feed_zeek_rows(b, row[lo:hi], b.meta.get("sensor_host"))

    def _feed_mixed(self, batches: list[Any], bid: Any, row: Any) -> None:
        """Rows of several ZeekBatches in the order given (`bid`: each row's batch in
        `batches`, `row`: its row there; streams interleaved by time): the effect of
        `feed_zeek` on each in that order, a batch at a time.

        Each batch's rows get their verdicts as in `feed_zeek_rows` (`_zeek_run`); the rows a
        rule acts on go through `feed_zeek` in the mixed order, and the rows between two such
        rows (a segment, of any streams) are counted per stream and reach data time and the
        windows as one NetColumns in the mixed order. What one stream's rows teach that
        another's verdicts read is kept exact: the names http/ssl/dns rows give addresses
        (read by conn's beacon verdicts) are handed to the conn verdicts as names that may
        come (`names_ahead`) and are learned in the mixed order; a DNS answer the geo
        detector keeps (read by conn/http/ssl verdicts) ends the part of the run judged
        together, and the rows after it are judged again."""
        start, n = 0, len(bid)
        while start < n:
            start += self._mixed_part(batches, bid[start:], row[start:])

    def _mixed_part(self, batches: list[Any], bid: Any, row: Any) -> int:
        """Judge the rows (`bid`: batch, `row`: row in it) together up to the first DNS row the
        geo detector takes (included), and feed them; returns how many rows were fed."""
        n = len(bid)
        where = {k: p for k in range(len(batches)) if (p := np.flatnonzero(bid == k)).size}
        runs: dict[int, dict[str, Any] | None] = {}
        for k in sorted(where, key=lambda k: batches[k].stream == "conn"):  # conn last
            b = batches[k]
            if not self._batchable(b):
                runs[k] = None                  # every row a record row
                continue
            ahead = self._names_ahead(batches, runs) if b.stream == "conn" else None
            runs[k] = self._zeek_run(b, row[where[k]], b.meta.get("sensor_host"), ahead)
        slow = np.ones(n, dtype=bool)
        horizon = n
        for k, p in where.items():
            r = runs[k]
            if r is None:
                continue
            slow[p] = r["slow"]
            if batches[k].stream == "dns" and r["geo"].any():
                horizon = min(horizon, int(p[np.flatnonzero(r["geo"])[0]]) + 1)
        lo = 0
        for s in np.flatnonzero(slow[:horizon]).tolist() + [horizon]:
            if s > lo:
                self._mixed_segment(batches, runs, where, lo, s)
            if s < horizon:
                b = batches[int(bid[s])]
                self.feed_zeek(b.stream, b.record(int(row[s])), b.meta.get("sensor_host"))
            lo = s + 1
        return horizon

    def _names_ahead(self, batches: list[Any], runs: dict[int, Any]
                     ) -> dict[tuple[str, str], set[str]] | None:
        """The names the other streams' rows of a mixed part may teach the misuse rules:
        (container, address) -> names (http/ssl: the Host/SNI of the address they reach; dns:
        the query, for each answer address)."""
        out: dict[tuple[str, str], set[str]] = {}
        for k, r in runs.items():
            if r is None:
                continue
            stream, nets = batches[k].stream, r["nets"]
            rows = np.flatnonzero(r["attributed"] & (nets.domain != ""))
            if not rows.size:
                continue
            cids, doms = nets.container_id[rows].tolist(), nets.domain[rows].tolist()
            if stream in ("http", "ssl"):
                for key, d in zip(zip(cids, nets.resp_h[rows].tolist()), doms):
                    out.setdefault(key, set()).add(d)
            elif stream == "dns" and r.get("answers") is not None:
                for cid, a, d in zip(cids, r["answers"][rows].tolist(), doms):
                    for x in answer_addresses(a) if a else ():
                        out.setdefault((cid, x), set()).add(d)
        return out or None

    def _mixed_segment(self, batches: list[Any], runs: dict[int, Any],
                       where: dict[int, Any], lo: int, hi: int) -> None:
        """Places lo..hi-1 of a mixed part, none of which a rule acts on: each stream's rows
        counted (`_segment_state`), the names learned in the mixed order, then data time and
        the windows over all of them as one NetColumns in the mixed order."""
        names: list[tuple[int, tuple[str, str], str]] = []
        parts: list[tuple[Any, NetColumns, Any]] = []
        for k, p in where.items():
            a, b = int(np.searchsorted(p, lo)), int(np.searchsorted(p, hi))
            if a == b:
                continue
            r = runs[k]
            kept = self._segment_state(batches[k].stream, r, a, b, p, names)
            if kept.size:
                parts.append((p[kept], r["nets"].take(kept), r["attributed"][kept]))
        if names:
            names.sort(key=lambda x: x[0])          # stable: a row's answers in their order
            self.misuse.keep_names((key, d) for _, key, d in names)
        if not parts:
            return
        if len(parts) == 1:
            _, nets, att = parts[0]
        else:
            order = np.argsort(np.concatenate([pp for pp, _, _ in parts]), kind="stable")
            nets = concat_columns([c for _, c, _ in parts]).take(order)
            att = np.concatenate([a for _, _, a in parts])[order]
        self._segment_windows(nets, np.arange(len(nets)), att)

    @property
    def hold_s(self) -> float:
        """Attribution hold in seconds (daemon only; batch replays know the inventory up front)."""
        return self.joiner.hold_s

    @hold_s.setter
    def hold_s(self, value: float) -> None:
        self.joiner.hold_s = value

    def release_held(self, force: bool = False) -> int:
        """Retry held Zeek records: those now attributable, those held for hold_s, or all."""
        if not self.joiner.held:
            return 0
        items = self.joiner.due(time.monotonic(), force)
        for stream, rec, sensor in items:
            self.feed_zeek(stream, rec, sensor, _retry=True)
        return len(items)

    def _bad(self, source: str, n: int = 1) -> None:
        self.stats.bad_input[source] = self.stats.bad_input.get(source, 0) + n

    # ----------------------------------------------------------------------------- alerts
    def _add(self, cand: rules.Candidate) -> None:
        self.aggregator.add(cand, wall=time.time())

    def flush(self, force: bool = False, wall: float | None = None) -> list[Alert]:
        self.release_held(force=force)
        if force:
            self.close_windows()
        self._score_closed()
        out = self.aggregator.flush(self.data_time, force=force, wall=wall)
        if self.k8s_join.pods:
            for a in out:
                self.k8s_join.finish_alert(a)
        self.stats.alerts += len(out)
        return out

    def process(self, items: Iterable[Any], finish: bool = True) -> list[Alert]:
        """Feed a batch (sorted by time here) and return the alerts; `finish` closes everything."""
        batch = sorted(_timed_items(items), key=lambda x: (x[0], x[1]))
        # Inventory first, so network records of a container that started in this batch attribute.
        for _, _, kind, payload in batch:
            if kind == "osq":
                self.observe_up_front(payload)
        for _, _, kind, payload in batch:
            self._dispatch(kind, payload)
        return self.flush(force=finish)

    def observe_up_front(self, row: OsqueryRow) -> None:
        """A container record (`CONTAINER_TABLES`) taken before the items around it are fed, as
        the batch callers do (`process`, the replay, the daemon's collect): the inventory's
        history, or a NAT flow for the join, so that network records of a container that
        started in the batch are attributed. Other rows: nothing."""
        if row.table == "container_nat_flows":
            self.joiner.observe_nat(row)
        elif row.table in CONTAINER_TABLES:
            self.inventory.observe(row)

    def _dispatch(self, kind: str, payload: Any, observe: bool = False) -> None:
        if kind == "osq":
            # Batch callers (process, replay) observe the inventory up front.
            self.feed_osquery_row(payload, observe=observe)
        elif kind == "zeek":
            stream, rec = payload
            self.feed_zeek(stream, rec)
        elif kind == "zrow":            # one row of a ZeekBatch, as its record
            batch, i = payload
            self.feed_zeek(batch.stream, batch.record(i), batch.meta.get("sensor_host"))
        elif kind == "proc":
            self.feed_process(payload)
        elif kind == "net":
            self.feed_net(payload)
        elif kind == "life":
            self.feed_lifecycle(payload)
        elif kind == "k8s":
            self.feed_k8s(payload)
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
        for d in (self._origins, self._last_closed, self._stopped):
            for cid in [c for c in d if c not in keep]:
                del d[cid]
        self.aggregator.prune(self.data_time)
        self.churn.prune(self.data_time)
        self.k8s_rules.prune(self.data_time)
        self.k8s_join.prune(self.data_time, keep_s=max(self.data_time - before_ts, 0.0),
                            containers=keep)
        self.misuse.prune(self.data_time)
        self._prune_proc_seen(self.data_time)

    # ----------------------------------------------------------------------------- state
    def dump_state(self, full: bool = False, chunks_apart: bool = False) -> dict[str, Any]:
        """The engine's memory as plain JSON. `full` (the daemon) adds what a resumed replay
        rebuilds by re-reading its input and a daemon cannot: the records of the open windows,
        the join's memory and the stock-log geo detector's DNS answers (see `EngineState`).
        `chunks_apart`: the close-lag queue's network chunks are named ([seq, rows left]), not
        written; EngineState stores each chunk once, when it is new (at 20,000 lines/s the
        queue holds ~200k rows: writing them all on every collect was most of its time)."""
        if self._pending:
            self._count_pending()
        st = {
            "aggregator": self.aggregator.dump_state(),
            "churn": self.churn.dump_state(),
            "misuse": self.misuse.dump_state(),
            "data_time": self.data_time,
            "risky_seen": [list(x) for x in sorted(self._risky_seen)],
            "open_windows": [[c, k, p] for (c, k), p in sorted(self._win_pos.items())],
            "held": [[stream, rec, sensor] for stream, rec, sensor in self.joiner.held_records()],
            "origins": self._origins,
            "last_closed": self._last_closed,
            "stopped": self._stopped,
            "life_recent": [[r.ts, r.container_id, r.image, r.action, r.name, r.host]
                            for r in self._life_recent],
            "stats": self.stats.to_dict(),
            "k8s_rules": self.k8s_rules.dump_state(),
            "k8s_join": self.k8s_join.dump_state(),
        }
        if full:
            st["osquery_until"] = self.joiner.osquery_until
            st["windows"] = {cid: {"origin": cw["origin"], "k": cw["k"],
                                   **{kind: [_record_to_list(r) for r in cw[kind]]
                                      for kind in ("p", "l")},
                                   "n": cw["n"].to_json()}
                             for cid, cw in self._cw.items()}
            # The process dedupe only matters for processes the rules could still act on (the
            # suppression window) or a window could still take: older entries are not saved
            # (the state is written every collect; a busy host's full memory is megabytes).
            keep = self.data_time - self.config.detection.suppression_s - self.window_s \
                - self.close_lag_s
            st["proc_seen"] = [[c, pid, cmd, t] for (c, pid, cmd), t in self._proc_seen.items()
                               if t >= keep]
            if chunks_apart:
                st["window_queue"] = _queue_to_lists([it for it in self._wqueue if it[2] != "N"])
                st["window_chunks"] = [[seq, len(rec)] for _, seq, kind, rec in
                                       sorted(self._wqueue, key=lambda it: it[1]) if kind == "N"]
                st["wseq"] = self._wseq
            else:
                st["window_queue"] = _queue_to_lists(self._wqueue)
            st["geo"] = _geo_state(self.geo, self.data_time) if self.geo is not None else None
        return st

    def load_state(self, st: dict[str, Any],
                   chunks: dict[int, NetColumns] | None = None) -> None:
        """Restore `dump_state`; `chunks` holds the queued network chunks a state written with
        `chunks_apart` names (seq -> the chunk as first stored; its last rows are still due)."""
        self.aggregator.load_state(st.get("aggregator", {}))
        self.churn.load_state(st.get("churn", []))
        self.misuse.load_state(st.get("misuse", {}))
        self.data_time = float(st.get("data_time", 0.0))
        self._risky_seen = {tuple(x) for x in st.get("risky_seen", [])}
        self._rebuild = {(c, int(k)) for c, k, _ in st.get("open_windows", [])}
        now = time.monotonic()
        for stream, rec, sensor in st.get("held", []):
            self.joiner.hold(stream, rec, sensor, now)
        self._origins = {k: float(v) for k, v in st.get("origins", {}).items()}
        self._last_closed = {k: int(v) for k, v in st.get("last_closed", {}).items()}
        self._stopped = {k: float(v) for k, v in st.get("stopped", {}).items()}
        self._life_recent = deque(LifecycleRecord(ts=t, container_id=c, image=i, action=a, name=n,
                                                  host=h) for t, c, i, a, n, h in
                                  st.get("life_recent", []))
        for k, v in st.get("stats", {}).items():
            setattr(self.stats, k, v)
        self.k8s_rules.load_state(st.get("k8s_rules", {}))
        self.k8s_join.load_state(st.get("k8s_join", {}))
        if "windows" in st:          # a full state: the open windows come back whole
            self.joiner.osquery_until = {h: float(t) for h, t in
                                         st.get("osquery_until", {}).items()}
            self._load_windows(st["windows"], st.get("open_windows", []))
            self._proc_seen = {(c, int(pid), cmd): float(t) for c, pid, cmd, t in
                               st.get("proc_seen", [])}
            self._wqueue, self._wqueue_rows = [], 0
            for entry in st.get("window_queue", []):
                ts, kind, values = entry[:3]
                self._wseq = int(entry[3]) if len(entry) > 3 else self._wseq + 1
                self._wqueue.append((float(ts), self._wseq, kind, _record_from_list(kind, values)))
                self._wqueue_rows += kind == "n"
            for seq, left in st.get("window_chunks", []):
                rec = (chunks or {})[int(seq)]
                rec = rec.take(slice(len(rec) - int(left), None))
                self._wqueue.append((float(rec.ts[0]), int(seq), "N", rec))
                self._wqueue_rows += int(left)
            self._wseq = max([self._wseq, int(st.get("wseq", 0))] +
                             [seq for _, seq, _, _ in self._wqueue])
            heapq.heapify(self._wqueue)
            if self.geo is not None and st.get("geo"):
                _load_geo_state(self.geo, st["geo"])

    def _load_windows(self, windows: dict[str, Any], positions: list[Any]) -> None:
        """Re-open the windows that were open at the save, with their process and lifecycle
        records and their network accumulator, so they are completed by the records still to
        come and scored once (not skipped, not twice). A state saved before the accumulators
        (a list of network records) is counted into one."""
        pos = {(c, int(k)): int(p) for c, k, p in positions}
        self._cw, self._heap, self._rebuild = {}, [], set()
        for cid, w in sorted(windows.items()):
            k = int(w["k"])
            n = w.get("n", [])
            self._cw[cid] = {"origin": float(w["origin"]), "k": k,
                             **{kind: [_record_from_list(kind, x) for x in w.get(kind, [])]
                                for kind in ("p", "l")},
                             "n": NetWindowAgg.from_json(n) if isinstance(n, dict) else
                             NetWindowAgg.of_records(_record_from_list("n", x) for x in n)}
            heapq.heappush(self._heap, (float(w["origin"]) + (k + 1) * self.window_s, cid, k))
            self._win_pos[(cid, k)] = pos.get((cid, k), 0)


class _LiveJoiner(Joiner):
    """The engine's join, which live (hold_s > 0) also holds a record whose address several
    containers have held (churn reuses addresses) until osquery has reported past the record's
    time: before that, the inventory may not know yet that the old holder died and a new one
    took the address, and the record would go to the wrong container. A batch replay knows the
    whole inventory up front and never holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.osquery_until: dict[str, float] = {}   # host -> newest osquery result time read

    def should_hold(self, rec: dict[str, Any], host: str = "") -> bool:
        if super().should_hold(rec, host):
            return True
        if self.hold_s <= 0 or rec.get("container_id"):
            return False
        ts = to_ts(rec.get("ts"))
        orig = rec.get("id.orig_h") or rec.get("orig_h")
        if ts is None or not isinstance(orig, str) or not orig:
            return False
        h = host or self.default_host
        until = self.osquery_until.get(h)
        if until is None:
            until = max(self.osquery_until.values(), default=0.0)
        return ts > until and len(self.inventory.holders(h, orig)) > 1


class EngineState:
    """Everything the engine reads, saved and restored as ONE object (the daemon's restart).

    Why one object: the engine's parts share state by reference (the join and the misuse rules
    read the pipeline's Inventory; the geo detector reads the join's NAT flows). Restoring them
    field by field once left the join reading an empty inventory after every restart, so Zeek
    records no longer reached their containers. Here the inventory is loaded *into* the object
    the parts already hold, and the rest (held records, open windows with their records, join
    and detector memory, aggregator, churn...) comes from one JSON document written in the same
    SQLite transaction as the tail checkpoints and the alert outbox.

    The inventory lives in the state DB's `containers` table (saved incrementally: only the
    containers that changed), the rest in `pipeline_state` under `name`.
    """

    def __init__(self, pipeline: "Pipeline", name: str) -> None:
        self.pipeline = pipeline
        self.name = name
        self._stored: set[int] | None = None   # seqs in window_chunks (None: read them first)

    def save(self, store: Any, conn: Any) -> None:
        """Write the state inside the caller's transaction. The close-lag queue's network
        chunks go to `window_chunks`, each once (a chunk never changes; its released rows are
        its first ones, so the state names it by seq and rows left): a save costs the new rows,
        not the whole queue."""
        p = self.pipeline
        st = p.dump_state(full=True, chunks_apart=True)
        live = {int(seq) for seq, _ in st["window_chunks"]}
        stored = self._stored_seqs(conn)
        for _, seq, kind, rec in p._wqueue:
            if kind == "N" and seq not in stored:
                conn.execute("INSERT OR REPLACE INTO window_chunks(name, seq, data) "
                             "VALUES (?,?,?)", (self.name, seq, chunk_to_json(rec)))
        conn.executemany("DELETE FROM window_chunks WHERE name=? AND seq=?",
                         [(self.name, seq) for seq in stored - live])
        conn.execute("INSERT OR REPLACE INTO pipeline_state(name, data, updated) VALUES (?,?,?)",
                     (self.name, json.dumps(st, default=str), time.time()))
        p.inventory.save(store, conn=conn)
        self._stored = live

    def forget(self) -> None:
        """After a rolled-back transaction: what `window_chunks` holds is read again."""
        self._stored = None

    def _stored_seqs(self, conn: Any) -> set[int]:
        if self._stored is None:
            self._stored = {int(r[0]) for r in conn.execute(
                "SELECT seq FROM window_chunks WHERE name=?", (self.name,))}
        return self._stored

    def load(self, store: Any) -> bool:
        """Restore a saved state into the pipeline; False when there is none."""
        import json

        p = self.pipeline
        inv = Inventory.load(store, grace_before=p.inventory.grace_before,
                             grace_after=p.inventory.grace_after)
        p.inventory.__dict__.update(inv.__dict__)   # in place: every part holds this object
        row = store.conn.execute("SELECT data FROM pipeline_state WHERE name=?",
                                 (self.name,)).fetchone()
        if not row:
            return len(inv) > 0
        st = json.loads(row[0])
        wanted = {int(seq) for seq, _ in st.get("window_chunks", [])}
        chunks = {int(seq): chunk_from_json(data) for seq, data in store.conn.execute(
            "SELECT seq, data FROM window_chunks WHERE name=?", (self.name,))
            if int(seq) in wanted}
        p.load_state(st, chunks=chunks)
        self._stored = None
        if "windows" not in st:
            # A state written before windows were saved whole: those windows lost their
            # records, so they are skipped rather than scored incomplete.
            p._skip, p._rebuild = set(p._rebuild), set()
        return True


_RECORD_TYPES = {"p": ProcessRecord, "n": NetRecord, "l": LifecycleRecord}
_RECORD_FIELDS = {k: tuple(f for f in t.__dataclass_fields__) for k, t in _RECORD_TYPES.items()}


def _record_to_list(rec: Any) -> list[Any]:
    """A window record as a JSON list in field order (compact: windows are saved every cycle)."""
    return [getattr(rec, f) for f in rec.__dataclass_fields__]


def _record_from_list(kind: str, values: list[Any]) -> Any:
    return _RECORD_TYPES[kind](**dict(zip(_RECORD_FIELDS[kind], values)))


#: Network rows the daemon's close-lag queue may hold before it releases them without the lag.
WINDOW_QUEUE_MAX_ROWS = 500_000


def _queue_to_lists(queue: list[tuple[float, int, str, Any]]) -> list[list[Any]]:
    """The close-lag queue as [ts, kind, record fields(, seq)] in release order; a network
    chunk is written as its rows (kind "n"), so the saved form is the same as record by record.
    A queue without chunks keeps each item's seq (its place among chunks saved apart)."""
    if all(kind != "N" for _, _, kind, _ in queue):
        return [[ts, kind, _record_to_list(rec), seq] for ts, seq, kind, rec in sorted(
            queue, key=lambda it: it[:2])]
    rows = []
    for ts, seq, kind, rec in queue:
        if kind == "N":
            # Column by column (tolist: plain Python values), not a NetRecord per row: the
            # queue holds lag_s of rows (200k at 20k lines/s) and is saved every collect.
            values = list(zip(*(getattr(rec, f).tolist() for f in NET_FIELDS)))
            rows.extend((values[i][0], seq, i, "n", values[i]) for i in range(len(values)))
        else:
            rows.append((ts, seq, 0, kind, _record_to_list(rec)))
    rows.sort(key=lambda x: x[:3])
    return [[ts, kind, list(r)] for ts, _, _, kind, r in rows]


_INT_FIELDS = frozenset(("resp_p", "orig_p", "bytes_out", "bytes_in"))
#: Text columns whose values repeat (hosts, agents, addresses, containers), not per-row ids.
_REPEATED_TEXT = tuple(f for f in NET_FIELDS if f not in _INT_FIELDS and f not in ("ts", "uid"))


def _shared_strings(cols: NetColumns) -> NetColumns:
    """The same rows with one str object per distinct value of each repeated text column.

    Why: a parsed batch has a str per row and field (~60-100 B each); the close-lag queue holds
    lag_s of rows (~200k at 20,000 lines/s), and those copies were most of the daemon's RSS."""
    out = {f: getattr(cols, f) for f in NET_FIELDS}
    for f in _REPEATED_TEXT:
        col = out[f]
        if col.dtype == object and len(col) > 1:
            codes, uniques = codes_of(col)
            out[f] = uniques[codes]
    return NetColumns(**out)


def _constant_columns(cols: NetColumns) -> NetColumns:
    """The same rows with each column that holds one value throughout as a read-only view of
    that value (stride 0: no memory per row).

    Why: a queued chunk is one container's rows, so its container, image, host, kind and, for
    http, a dozen more columns are constant; at 20,000 lines/s the close-lag queue holds ~200k
    rows, whose 21 columns of 8-byte pointers were ~34 MiB of the daemon's RSS."""
    n = len(cols)
    if n < 2:
        return cols
    out = {}
    for f in NET_FIELDS:
        col = getattr(cols, f)
        if col.strides != (0,) and _is_constant(col):
            col = np.broadcast_to(col[:1].copy(), (n,))   # not a view: the column goes
        out[f] = col
    return NetColumns(**out)


def _is_constant(col: Any) -> bool:
    """Does a non-empty column hold one value throughout (stored once: `_constant_columns`,
    `chunk_to_json`)?"""
    return col.strides == (0,) or bool((col == col[0]).all())


def chunk_to_json(cols: NetColumns) -> str:
    """A queued network chunk as JSON columns. A column with one value throughout (container,
    image, kind... in a chunk of one container) is written once; the time and the integer
    columns as their little-endian bytes in base64 (exact, and no float written in decimal: a
    JSON number a row and field made this about a fifth of the daemon's CPU); text as a list.
    Each chunk is written once (`EngineState.save`), but every network row the daemon reads
    passes here."""
    n = len(cols)
    out: dict[str, Any] = {"rows": n}
    for f in NET_FIELDS:
        col = getattr(cols, f)
        if n and _is_constant(col):
            out[f] = {"all": col[0].item() if hasattr(col[0], "item") else col[0]}
        elif f == "ts" or f in _INT_FIELDS:
            kind = "f8" if f == "ts" else "i8"
            raw = np.ascontiguousarray(col, dtype="<" + kind).tobytes()
            out[f] = {kind: base64.b64encode(raw).decode("ascii")}
        else:
            out[f] = col.tolist()
    return json.dumps(out, separators=(",", ":"))


def chunk_from_json(text: str) -> NetColumns:
    """`chunk_to_json` read back, with NetColumns' dtypes (float ts, int64 ports and bytes);
    also a chunk an earlier version wrote (a JSON list per column)."""
    d = json.loads(text)
    n = int(d["rows"])
    cols = {}
    for f in NET_FIELDS:
        v = d[f]
        dtype = float if f == "ts" else np.int64 if f in _INT_FIELDS else object
        if isinstance(v, dict) and "all" in v:  # one value throughout (`_constant_columns`)
            arr = np.empty(1, dtype=dtype)
            arr[:] = [v["all"]]
            arr = np.broadcast_to(arr, (n,))
        elif isinstance(v, dict) and ("f8" in v or "i8" in v):
            kind = "f8" if "f8" in v else "i8"
            arr = np.frombuffer(base64.b64decode(v[kind]), dtype="<" + kind).astype(dtype)
        else:
            arr = np.empty(n, dtype=dtype)
            arr[:] = v
        if len(arr) != n:
            raise ValueError(f"queued chunk: column {f} has {len(arr)} rows, not {n}")
        cols[f] = arr
    return NetColumns(**cols)


class _NetRun:
    """One container's released network chunks, in (time, arrival, row) order, handed out in
    the runs that fall between the container's other queued records."""

    def __init__(self, parts: list[tuple[int, NetColumns]]) -> None:
        self.cols = concat_columns([c for _, c in parts])
        self.seq = np.concatenate([np.full(len(c), s, dtype=np.int64) for s, c in parts])
        order = np.lexsort((np.arange(len(self.seq)), self.seq, np.asarray(self.cols.ts)))
        self.cols, self.seq = self.cols.take(order), self.seq[order]
        self.ts = np.asarray(self.cols.ts, dtype=float)
        self.pos = 0

    def before(self, ts: float, seq: int) -> NetColumns | None:
        """The rows not yet handed out that come before (ts, seq)."""
        lo = int(np.searchsorted(self.ts, ts, side="left"))
        hi = int(np.searchsorted(self.ts, ts, side="right"))
        end = lo + int(np.searchsorted(self.seq[lo:hi], seq, side="left"))
        return self._upto(end)

    def rest(self) -> NetColumns | None:
        return self._upto(len(self.seq))

    def _upto(self, end: int) -> NetColumns | None:
        if end <= self.pos:
            return None
        out = self.cols.take(slice(self.pos, end))
        self.pos = end
        return out


def _geo_state(geo: Any, now: float, keep_ids: int = 20_000) -> dict[str, Any]:
    """The stock-log geo detector's memory: unexpired DNS answers for listed names, and the
    most recent uids / (uid, query) pairs it already reported (so a restart neither forgets
    that an address belongs to a geolocation service nor reports a connection twice)."""
    resolved = [[addr, [[e.start, e.expires, e.name, e.service, e.category] for e in bucket
                        if e.expires >= now]] for addr, bucket in geo.resolved.items()]
    return {"resolved": [r for r in resolved if r[1]],
            "named_uids": list(geo._named_uids)[-keep_ids:],
            "dns_seen": [list(k) for k in list(geo._dns_seen)[-keep_ids:]]}


def _load_geo_state(geo: Any, st: dict[str, Any]) -> None:
    from collections import OrderedDict

    from scheduler.detect.geo_stock import _Resolved

    geo.resolved = OrderedDict((addr, [_Resolved(*e) for e in bucket])
                               for addr, bucket in st.get("resolved", []))
    geo._resolved_count = sum(len(b) for b in geo.resolved.values())
    geo._named_uids = OrderedDict((u, None) for u in st.get("named_uids", []))
    geo._dns_seen = OrderedDict((tuple(k), None) for k in st.get("dns_seen", []))


def geo_log_summary(rec: NetRecord, method: str) -> str:
    """Evidence text of a container_geo.log record: method, name, service and the image the
    package's address map gave (absent when the map did not know the address)."""
    text = f"container_geo {method} {rec.domain or rec.resp_h} ({rec.geo_service})"
    return f"{text} image={rec.image}" if rec.image else text


@dataclass(frozen=True)
class _GeoFromLog:
    """A container_geo.log record's verdict, shaped like geo_stock.GeoDetection."""

    service: str
    method: str
    category: str


# The batch engine's streams (the rest are small and take the record path), and columns that
# mean a reader kept addresses or ports where the batch's "id.*" columns are not (nested JSON,
# other readers' names): such batches take the record path too.
_BATCH_STREAMS = frozenset(("conn", "dns", "http", "ssl"))
#: The shortest run of rows the batch path takes (measured: at 128 rows a run costs about what
#: the per-record path does, at 2,000 rows a fifth of it; windows aside).
BATCH_MIN_ROWS = 128
_ALT_COLUMNS = ("id", "orig_h", "orig_p", "resp_h", "resp_p", "src")


def _whole(idx: Any, n: int) -> Any:
    """`slice(0, n)` when the rows `idx` are every row of an n-row batch in order (a replay
    chunk of one log takes its batches whole), else `idx`. Columns read with it are views of
    the batch's (no copy of six object columns a batch); nothing writes to them."""
    if len(idx) == n and n and idx[0] == 0 and idx[-1] == n - 1 and \
            bool((np.diff(idx) == 1).all()):
        return slice(0, n)
    return idx


def _rows_of(idx: Any) -> int:
    """How many rows `idx` (an index array or `_whole`'s slice) selects."""
    return idx.stop - idx.start if isinstance(idx, slice) else len(idx)


def _text_col(batch: Any, name: str, idx: Any) -> Any:
    """A text column of the rows `idx`, Zeek's unset markers as "" (what the join reads). From
    the reader's dictionary when it has one no larger than the run: the markers are replaced
    once per distinct value, not looked for in every row (and with no marker among them, the
    batch's own column is that already)."""
    coded = _run_codes(batch, name, idx)
    if coded is not None:
        c, u = coded
        if isinstance(idx, slice) and u is batch.dicts[name][1] and name in batch.columns:
            return batch.columns[name][idx]             # uniques[codes], made by the reader
        return u[c]
    if name not in batch.columns and name not in batch.deferred:   # the log has no such field
        return constant(_rows_of(idx), "")
    col = batch.column(name)[idx]
    unset = (col == "-") | (col == "(empty)")
    if unset.any():
        col = col.copy()
        col[unset] = ""
    return col


def _run_codes(batch: Any, name: str, idx: Any) -> tuple[Any, Any] | None:
    """(codes, uniques) of a text column at the rows `idx`, as `_text_col` reads it (Zeek's
    unset markers as ""), when the reader has them for free (read dictionary-encoded) and the
    batch's distinct values are no more than the run's rows (a verdict per distinct value of
    the whole batch must not cost more than hashing the run); else None (the caller hashes)."""
    got = batch.dicts.get(name)
    if got is None or len(got[1]) > _rows_of(idx):
        return None
    c, u = got
    unset = (u == "-") | (u == "(empty)")
    if unset.any():
        u = u.copy()
        u[unset] = ""
    return c[idx], u


def _count_col(batch: Any, name: str, idx: Any) -> Any:
    """A port/count column of the rows `idx`, unset (-1) as 0 (the join's default)."""
    col = np.asarray(batch.column(name)[idx], dtype=np.int64)
    return np.where(col == -1, 0, col)


def _last_name_rows(nets: NetColumns, rows: Any) -> Any:
    """Of `rows` (http/ssl rows with a container), those `MisuseDetector.remember_names` needs:
    rows with a name, the last of each (container, address), in the order each pair first
    appears. The names it keeps end up the same, in the same order, with a Python tuple per
    pair instead of one per row (a run of health checks is a few pairs)."""
    sel = np.flatnonzero(nonempty(nets.coded("domain", rows)))
    if sel.size < 2:
        return sel
    cc, _ = distinct_codes(*nets.coded("container_id", rows[sel]))
    rc, nr = distinct_codes(*nets.coded("resp_h", rows[sel]))
    return sel[last_rows_in_first_order(cc * nr + rc)]


#: NetRecord.attribution of a row the address join attributed, and of one it did not.
_ATTRIBUTION = np.array([JOIN_ADDRESS, ""], dtype=object)


def _filled(coded: tuple[Any, Any] | None, values: Any, fill: str) -> Any:
    """A text column with `fill` where it is "" (an unset proto of an http/ssl row is tcp),
    from its (codes, values) when the reader has them: replaced once per distinct value."""
    if coded is not None:
        c, u = coded
        return np.where(u == "", fill, u).astype(object)[c]
    return np.where(values == "", fill, values).astype(object)


def _constant_codes(n: int, value: str) -> tuple[Any, Any]:
    """(codes, values) of a column of `n` rows that all hold `value` (NetColumns.codes)."""
    return np.zeros(n, dtype=np.int64), constant(1, value)


def _table(values: list[Any], missing: Any) -> Any:
    """An object array of `values` + [missing]: index -1 (no holder) picks `missing`."""
    out = np.empty(len(values) + 1, dtype=object)
    out[:] = values + [missing]
    return out


_KIND, _PAYLOAD = itemgetter(0), itemgetter(1)


def _batch_codes(zrows: list[tuple[Any, int]]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """(the distinct batches in order of first appearance, each row's index into them, each
    row's row number) of (ZeekBatch, row) payloads: a run's rows as arrays, in C where it can
    (identity, not equality: a batch's columns do not compare)."""
    bs, rows = zip(*zrows)
    n = len(rows)
    row = np.fromiter(rows, np.int64, n)
    first = bs[0]
    if all(map(is_, bs, repeat(first))):
        return [first], np.zeros(n, dtype=np.int64), row
    # a live object's id is its address: distinct batches, distinct ids
    firsts, bid = _by_first_appearance(np.fromiter(map(id, bs), np.int64, n))
    return [bs[i] for i in firsts], bid, row


def _local_batches(batches: list[Any], gbid: Any) -> tuple[list[Any], np.ndarray]:
    """(the batches of `batches` a run's rows come from, in order of first appearance, each
    row's index into them): a "zrun" item's rows as `_batch_codes` gives a run of "zrow"
    items."""
    gbid = np.asarray(gbid, dtype=np.int64)
    first = int(gbid[0])
    if bool((gbid == first).all()):
        return [batches[first]], np.zeros(gbid.size, dtype=np.int64)
    firsts, bid = _by_first_appearance(gbid)
    return [batches[int(gbid[i])] for i in firsts], bid


def _by_first_appearance(keys: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(the row where each distinct key first appears, in that order; each row's index into
    that list)."""
    _, at, inv = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(at)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return at[order].tolist(), rank[inv.reshape(-1)]


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
    if kind == "zrow":
        batch, i = payload
        t = float(batch.column("ts")[i])
        return t if t == t else _f(batch.record(i).get("ts"))
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
        elif isinstance(it, OrchestrationRecord):
            kind = "k8s"
        else:
            raise TypeError(f"cannot process {type(it).__name__}")
        yield item_time(kind, it), seq, kind, it
