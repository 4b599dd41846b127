"""Join: osquery rows and Zeek records -> normalised records (model/records.py).

Host side: container_processes / container_process_events rows become ProcessRecord (they already
name their container); container_events rows become LifecycleRecord; container_inventory rows
become ContainerInfo and feed the Inventory.

Network side: a Zeek record names addresses only. It is attributed to the container that held the
originator address at the record's time (Inventory.lookup); when the originator is not a container
but the responder is (inbound traffic to a published service), to the responder. If the address lies
in a container subnet (osquery_ext.indicators.in_container_subnet) but no known container held it,
the record keeps container_id "" so the pipeline can still alert ("container unknown"). Records with
no container address at all (the host's own traffic) are not container records: `net_record`
returns None for them.

Ordering: osquery reports a container some seconds after it started (its inventory interval), while
Zeek may log the container's first connection before that. `Joiner.feed_zeek` therefore holds an
unattributed container-subnet record for up to `hold_s` seconds (of record time, or until `flush`)
and retries it when the inventory learns something; only then is it released with container_id "".
Batch replays that ingest all osquery rows first can call `net_record` directly.
"""
from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from model.records import ContainerInfo, LifecycleRecord, NetRecord, ProcessRecord
from scheduler.inventory import ContainerState, Inventory, event_time
from scheduler.osquery_results import OsqueryRow

log = logging.getLogger(__name__)

STREAM_KIND = {"conn": "conn", "dns": "dns", "http": "http", "ssl": "ssl",
               "container_geo": "geo", "geo": "geo"}
GEO_CATEGORIES = {"ip_geolocation", "ip_echo", "dns_echo"}
# The same vocabulary as osquery_ext/events.py (Docker's verbs; Podman's aliases mapped).
ACTION_ALIASES = {"died": "die", "remove": "destroy", "removed": "destroy", "exec_died": "exec_die",
                  "exec_start": "exec"}
_DEFAULT_SUBNETS = ("172.17.0.0/16", "10.88.0.0/16")


# ---- small value helpers (Zeek readers differ in types: str from TSV, numbers from JSON,
# ---- datetimes from zat/pandas) -------------------------------------------------------------
def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and v in ("", "-", "(empty)"):
        return True
    try:
        import pandas as pd  # noqa: WPS433
        if v is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def to_ts(v: Any) -> float | None:
    """Epoch seconds from a Zeek ts value (float, string, datetime, pandas Timestamp)."""
    if _missing(v):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, datetime):
        # naive datetimes (zat, pandas) are UTC in Zeek's world
        return v.timestamp() if v.tzinfo else v.replace(tzinfo=timezone.utc).timestamp()
    if hasattr(v, "timestamp"):
        return float(v.timestamp())
    try:
        return float(v)
    except (TypeError, ValueError):
        try:
            d = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            return to_ts(d)
        except ValueError:
            return None


def _int(v: Any) -> int:
    if _missing(v):
        return 0
    try:
        return int(float(v))
    except (TypeError, ValueError):
        try:  # timedelta-like / pandas types
            return int(v)
        except Exception:  # noqa: BLE001
            return 0


def _str(v: Any) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (list, tuple, set)):
        return ",".join(str(x) for x in v)
    return str(v)


def _get(rec: dict[str, Any], *keys: str) -> Any:
    """First present key; also accepts nested JSON ({"id": {"orig_h": ...}})."""
    for key in keys:
        if key in rec and not _missing(rec[key]):
            return rec[key]
        if "." in key:
            head, tail = key.split(".", 1)
            sub = rec.get(head)
            if isinstance(sub, dict) and tail in sub and not _missing(sub[tail]):
                return sub[tail]
    return None


# ---- classifiers (owned by the classifier developer; imported lazily so the join works alone) ---
def _load_subnets() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        from osquery_ext import indicators
        return list(indicators.load_container_subnets())
    except Exception as exc:  # noqa: BLE001 - missing module or data: fall back, but say so
        log.info("container subnets from defaults (%s)", exc)
        return [ipaddress.ip_network(s) for s in _DEFAULT_SUBNETS]


def _domain_matcher() -> Callable[[str], Any]:
    try:
        from osquery_ext.classifier import match_domain
        return match_domain
    except Exception as exc:  # noqa: BLE001
        log.info("no domain classifier (%s): geo_service from container_geo only", exc)
        return lambda name: None


def normalise_action(action: str) -> str:
    """Podman/Docker event names to the contract's (died -> die, remove -> destroy)."""
    a = (action or "").split(":", 1)[0].strip().lower()
    return ACTION_ALIASES.get(a, a)


@dataclass(slots=True)
class JoinStats:
    processes: int = 0
    lifecycle: int = 0
    inventory: int = 0
    net: int = 0
    net_attributed: int = 0
    net_unknown: int = 0        # in a container subnet, no known container
    net_not_container: int = 0  # neither side a container address
    duplicates: int = 0


class Joiner:
    """Stateful join over a stream of osquery rows and Zeek records for one deployment."""

    def __init__(self, inventory: Inventory | None = None, environment: str = "default",
                 subnets: Sequence[Any] | None = None, hold_s: float = 30.0,
                 default_host: str = "", dedupe_window_s: float = 3600.0) -> None:
        self.inventory = inventory if inventory is not None else Inventory()
        self.environment = environment
        self.subnets = [ipaddress.ip_network(str(s)) for s in subnets] if subnets else _load_subnets()
        self.hold_s = hold_s
        self.default_host = default_host
        self.dedupe_window_s = dedupe_window_s
        self.stats = JoinStats()
        self._match_domain = _domain_matcher()
        self._held: deque[tuple[float, str, dict[str, Any], str]] = deque()
        self._seen_procs: OrderedDict[tuple[str, str, int, str], float] = OrderedDict()

    # -- addresses --------------------------------------------------------------------------------
    def in_container_subnet(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.subnets)

    def _lookup(self, host: str, addr: str, ts: float) -> ContainerState | None:
        if not addr:
            return None
        if host:
            return self.inventory.lookup(host, addr, ts)
        return self.inventory.lookup_any_host(addr, ts)

    # -- osquery ----------------------------------------------------------------------------------
    def from_osquery(self, row: OsqueryRow) -> list[ProcessRecord | LifecycleRecord | ContainerInfo]:
        """Records derived from one osquery row (inventory rows also update the Inventory)."""
        if row.table == "container_inventory":
            self.inventory.observe(row)
            if row.action == "removed":
                return []
            self.stats.inventory += 1
            return [self.container_info(row)]
        if row.table == "container_events":
            self.inventory.observe(row)
            rec = self.lifecycle_record(row)
            return [rec] if rec is not None else []
        if row.table in ("container_processes", "container_process_events"):
            if row.action == "removed":
                return []  # a process that ended: not a new process
            rec = self.process_record(row)
            return [rec] if rec is not None else []
        return []

    def container_info(self, row: OsqueryRow) -> ContainerInfo:
        c = row.columns
        created = c.get("created") or c.get("started")
        return ContainerInfo(container_id=c.get("id", ""), image=c.get("image", ""),
                             name=c.get("name", ""), host=row.host,
                             image_id=c.get("image_id", ""),
                             created=float(created) if created not in (None, "", "0") else None,
                             environment=self.environment,
                             ip_addresses=[a for a in c.get("ip_addresses", "").split(",") if a])

    def lifecycle_record(self, row: OsqueryRow) -> LifecycleRecord | None:
        c = row.columns
        action = normalise_action(c.get("action", ""))
        if not action:
            return None
        ts = event_time(c) or row.unix_time
        exit_code: int | None
        try:
            exit_code = int(c["exit_code"]) if c.get("exit_code", "") not in ("", None) else None
        except ValueError:
            exit_code = None
        image = c.get("image", "")
        cid = c.get("container_id", "")
        if not image and cid:
            known = self.inventory.get(row.host, cid)
            image = known.image if known else ""
        self.stats.lifecycle += 1
        return LifecycleRecord(ts=ts, container_id=cid, image=image, action=action,
                               name=c.get("name", ""), host=row.host, exit_code=exit_code)

    def process_record(self, row: OsqueryRow) -> ProcessRecord | None:
        """ProcessRecord for a process row; None for a process already reported.

        container_processes snapshots repeat every running process each interval and the event table
        reports the same exec, so a process is reported once per (container, pid, start, cmdline).
        """
        c = row.columns
        cid = c.get("container_id", "")
        pid = _int(c.get("pid"))
        cmdline = c.get("cmdline", "")
        if row.table == "container_process_events":
            ts = event_time(c) or row.unix_time
        else:
            ts = to_ts(c.get("start_time")) or row.unix_time
        key = (row.host, cid, pid, cmdline)
        prev = self._seen_procs.get(key)
        if prev is not None and abs(ts - prev) < self.dedupe_window_s:
            self.stats.duplicates += 1
            return None
        self._remember(key, ts)
        image = c.get("image", "")
        if not image and cid:
            known = self.inventory.get(row.host, cid)
            image = known.image if known else ""
        self.stats.processes += 1
        return ProcessRecord(ts=ts, container_id=cid, image=image, pid=pid, ppid=_int(c.get("ppid")),
                             name=c.get("name", ""), path=c.get("path", ""), cmdline=cmdline,
                             host=row.host, location_discovery=c.get("location_discovery") in ("1", "true", "True"),
                             indicator=c.get("indicator", ""))

    def _remember(self, key: tuple[str, str, int, str], ts: float) -> None:
        self._seen_procs[key] = ts
        self._seen_procs.move_to_end(key)
        while len(self._seen_procs) > 200_000:
            self._seen_procs.popitem(last=False)

    # -- Zeek ---------------------------------------------------------------------------------------
    def net_record(self, stream: str, rec: dict[str, Any], host: str = "",
                   keep_non_container: bool = False) -> NetRecord | None:
        """Attribute one Zeek record now. None if it is not container traffic (unless kept)."""
        kind = STREAM_KIND.get(stream, stream)
        ts = to_ts(_get(rec, "ts"))
        if ts is None:
            return None
        host = host or self.default_host
        orig_h = _str(_get(rec, "id.orig_h", "orig_h"))
        resp_h = _str(_get(rec, "id.resp_h", "resp_h"))
        self.stats.net += 1
        holder = self._lookup(host, orig_h, ts)
        if holder is None and not self.in_container_subnet(orig_h):
            # inbound: an outside client talking to a container's published service
            holder = self._lookup(host, resp_h, ts)
        cid, image = "", ""
        if holder is not None:
            cid, image = holder.container_id, holder.image
            host = host or holder.host
            self.stats.net_attributed += 1
        elif self.in_container_subnet(orig_h) or (stream == "container_geo" and _get(rec, "container_id")):
            cid = _str(_get(rec, "container_id"))  # the Zeek package's own map, if it had one
            image = _str(_get(rec, "image", "container_image"))
            self.stats.net_unknown += 1
        else:
            self.stats.net_not_container += 1
            if not keep_non_container:
                return None
        out = NetRecord(ts=ts, kind=kind, container_id=cid, image=image, orig_h=orig_h, resp_h=resp_h,
                        resp_p=_int(_get(rec, "id.resp_p", "resp_p")),
                        orig_p=_int(_get(rec, "id.orig_p", "orig_p")),
                        proto=_str(_get(rec, "proto")), uid=_str(_get(rec, "uid")), host=host)
        self._fill_kind(out, stream, rec)
        return out

    def _fill_kind(self, out: NetRecord, stream: str, rec: dict[str, Any]) -> None:
        if stream == "conn":
            out.conn_state = _str(_get(rec, "conn_state"))
            out.bytes_out = _int(_get(rec, "orig_bytes"))
            out.bytes_in = _int(_get(rec, "resp_bytes"))
        elif stream == "dns":
            out.domain = _str(_get(rec, "query"))
            out.rcode = _str(_get(rec, "rcode_name")) or _str(_get(rec, "rcode"))
        elif stream == "http":
            out.domain = _str(_get(rec, "host"))
            out.uri = _str(_get(rec, "uri"))
            out.user_agent = _str(_get(rec, "user_agent"))
        elif stream == "ssl":
            out.domain = _str(_get(rec, "server_name"))
        elif stream in ("container_geo", "geo"):
            out.domain = _str(_get(rec, "domain", "query", "server_name", "host", "name"))
            out.geo_service = _str(_get(rec, "service", "geo_service")) or "unknown"
            out.uri = _str(_get(rec, "uri"))
        if out.domain and not out.geo_service:
            m = self._match_domain(out.domain.rstrip("."))
            if m is not None and getattr(m, "category", "") in GEO_CATEGORIES:
                out.geo_service = getattr(m, "service", "") or out.domain

    def feed_zeek(self, stream: str, rec: dict[str, Any], host: str = "") -> list[NetRecord]:
        """Streaming join: attributed records now; unknown-container records after `hold_s`."""
        out: list[NetRecord] = []
        nr = self.net_record(stream, rec, host)
        if nr is not None:
            if nr.container_id or not self.in_container_subnet(nr.orig_h) or self.hold_s <= 0:
                out.append(nr)
            else:
                self.stats.net -= 1
                self.stats.net_unknown -= 1
                self._held.append((nr.ts, stream, rec, host))
            out.extend(self.release(nr.ts))
        return out

    def release(self, now_ts: float | None = None, force: bool = False) -> list[NetRecord]:
        """Retry held records: those now attributable, and (after hold_s or when forced) the rest."""
        out: list[NetRecord] = []
        keep: deque[tuple[float, str, dict[str, Any], str]] = deque()
        while self._held:
            ts, stream, rec, host = self._held.popleft()
            nr = self.net_record(stream, rec, host)
            if nr is None:
                continue
            expired = force or (now_ts is not None and now_ts - ts >= self.hold_s)
            if nr.container_id or expired:
                out.append(nr)
            else:
                self.stats.net -= 1
                self.stats.net_unknown -= 1
                keep.append((ts, stream, rec, host))
        self._held = keep
        return out

    def flush(self) -> list[NetRecord]:
        """Release everything held (end of a replay, shutdown)."""
        return self.release(force=True)

    @property
    def held(self) -> int:
        return len(self._held)


def join_batch(rows: Iterable[OsqueryRow], zeek: dict[str, Iterable[dict[str, Any]]],
               host: str = "", environment: str = "default",
               subnets: Sequence[Any] | None = None) -> tuple[list[Any], list[NetRecord], Joiner]:
    """Batch join (replay, tests): all osquery rows first, then every Zeek record.

    Returns (host-side records, network records sorted by time, the Joiner for its stats/inventory).
    """
    joiner = Joiner(environment=environment, subnets=subnets, default_host=host, hold_s=0)
    host_records: list[Any] = []
    for row in rows:
        host_records.extend(joiner.from_osquery(row))
    joiner.inventory.close_snapshots()
    net: list[NetRecord] = []
    for stream, records in zeek.items():
        for rec in records:
            nr = joiner.net_record(stream, rec, host)
            if nr is not None:
                net.append(nr)
    net.sort(key=lambda r: r.ts)
    return host_records, net, joiner
