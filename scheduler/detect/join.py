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

Behind NAT: a sensor on the host's uplink sees the host's address, not the container's. When the
originator is no container address, the record is matched against the host's conntrack flows
(container_nat_flows rows, scheduler.detect.nat_join) on (host address, port, protocol, far end,
time); a DNS query the host's resolver made upstream is tied to the one container that asked it,
where only one did. NetRecord.attribution says which join named the container.

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
from scheduler.detect.inventory import ContainerState, Inventory, event_time
from scheduler.detect.nat_join import (JOIN_ADDRESS, JOIN_NAT, JOIN_RESOLVER, TABLE as NAT_TABLE,
                                       NatFlow, NatFlows)
from scheduler.collect.osquery_results import OsqueryRow, normalise_action

log = logging.getLogger(__name__)

STREAM_KIND = {"conn": "conn", "dns": "dns", "http": "http", "ssl": "ssl",
               "container_geo": "geo", "geo": "geo"}
GEO_CATEGORIES = {"ip_geolocation", "ip_echo", "dns_echo"}
_DEFAULT_SUBNETS = ("172.17.0.0/16", "10.88.0.0/16")


# ---- small value helpers (Zeek readers differ in types: str from TSV, numbers from JSON,
# ---- datetimes from zat/pandas) -------------------------------------------------------------
def _missing(v: Any) -> bool:
    t = type(v)
    if t is str:
        return v in ("", "-", "(empty)")
    if v is None:
        return True
    if t is float:
        return v != v                     # NaN
    if t is int:
        return False
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and v in ("", "-", "(empty)"):
        return True
    return type(v).__name__ == "NaTType"  # pandas.NaT, without importing pandas per value


def to_ts(v: Any) -> float | None:
    """Epoch seconds from a Zeek ts value (float, string, datetime, pandas Timestamp)."""
    if type(v) is float:                  # scheduler.collect.zeeklog's ts: the hot path
        return None if v != v else v
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
    if type(v) is int:                    # zeeklog converts counts and ports
        return v
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
    if type(v) is str:
        return "" if v in ("-", "(empty)") else v
    if _missing(v):
        return ""
    if isinstance(v, (list, tuple, set)):
        return ",".join(str(x) for x in v)
    return str(v)


def _get(rec: dict[str, Any], *keys: str) -> Any:
    """First present key; also accepts nested JSON ({"id": {"orig_h": ...}})."""
    for key in keys:
        v = rec.get(key)
        if v is not None and not _missing(v):
            return v
        if "." in key:
            head, tail = key.split(".", 1)
            sub = rec.get(head)
            if isinstance(sub, dict) and tail in sub and not _missing(sub[tail]):
                return sub[tail]
    return None


_NOT_TEXT = frozenset(("", "-", "(empty)"))


def _s(rec: dict[str, Any], key: str, *alts: str) -> str:
    """Text field: the plain value in one lookup when it is there (parsed logs), else `_get`."""
    v = rec.get(key)
    if type(v) is str and v not in _NOT_TEXT:
        return v
    if v is None and not alts and "." not in key:
        return ""
    return _str(_get(rec, key, *alts))


def _n(rec: dict[str, Any], key: str, *alts: str) -> int:
    """Count/port field: the int in one lookup when it is there (parsed logs), else `_get`."""
    v = rec.get(key)
    if type(v) is int:
        return v
    return _int(_get(rec, key, *alts))


def strip_port(host: str) -> str:
    """HTTP Host header -> name: ``ipinfo.io:80`` -> ``ipinfo.io``, ``[2001:db8::1]:8080`` ->
    ``2001:db8::1`` (case kept: the record says what the client sent)."""
    host = host.strip()
    if ":" not in host:
        return host
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


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


def _subnet_test(addr: str, subnets: Sequence[Any]) -> bool:
    """The shared indicator test (brackets, zone ids and IPv4-mapped IPv6 handled there)."""
    try:
        from osquery_ext.indicators import in_container_subnet
        return bool(in_container_subnet(addr, subnets))
    except ImportError:  # pragma: no cover - extension package absent: plain membership
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in subnets)


def factorize(values: Any) -> tuple[Any, list[Any]]:
    """(codes, uniques) of an array, hash-based (`model.codes.factorize`): a batch's few
    distinct addresses and names are judged once each, whatever the number of rows."""
    from model.codes import factorize as codes_of

    codes, uniques = codes_of(values)
    return codes, uniques.tolist()


def per_unique(values: Any, fn: Callable[[Any], Any], dtype: Any = bool,
               codes: tuple[Any, Any] | None = None) -> Any:
    """`fn(v)` for every element of `values`, calling `fn` once per distinct value. `codes`:
    the column's (codes, uniques) when the caller has them (`ZeekBatch.codes`, taken at the
    rows: `uniques[codes]` equal to `values`), so nothing is hashed again; `fn` then also runs
    for uniques no row uses (`values` may then be None)."""
    import numpy as np

    from model.codes import per_code

    if codes is None:
        if len(values) == 0:
            return np.zeros(0, dtype=dtype)
        codes = factorize(values)
    return per_code(codes, fn, dtype)


def groups(codes: Any, n_groups: int) -> Iterable[tuple[int, Any]]:
    """(group, row indices in row order) of each group of `codes` (factorize's)."""
    import numpy as np

    from model.codes import stable_order

    order = stable_order(np.asarray(codes), n_groups)
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    for k in range(n_groups):
        if bounds[k] < bounds[k + 1]:
            yield k, order[bounds[k]:bounds[k + 1]]


@dataclass(slots=True)
class JoinStats:
    processes: int = 0
    lifecycle: int = 0
    inventory: int = 0
    net: int = 0
    net_attributed: int = 0
    net_unknown: int = 0        # in a container subnet, no known container
    net_nat: int = 0            # attributed through a NAT flow (or the host's resolver)
    net_not_container: int = 0  # neither side a container address
    duplicates: int = 0
    malformed: int = 0          # no usable time or originator address


class Joiner:
    """Stateful join over a stream of osquery rows and Zeek records for one deployment."""

    def __init__(self, inventory: Inventory | None = None, environment: str = "default",
                 subnets: Sequence[Any] | None = None, hold_s: float = 30.0,
                 default_host: str = "", dedupe_window_s: float = 3600.0,
                 inbound: bool = True, geo_from_names: bool = True,
                 nat: NatFlows | None = None) -> None:
        """`inbound`: attribute an outside client's connection to the container it reached (the
        model's view of a published service); the alerting pipeline judges outbound only.
        `geo_from_names`: fill NetRecord.geo_service from the shared domain list (the model's
        view); the pipeline leaves that to its detectors (geo_stock, container_geo.log), which
        also give the method and category an alert reports."""
        self.inventory = inventory if inventory is not None else Inventory()
        self.environment = environment
        self.subnets = [ipaddress.ip_network(str(s)) for s in subnets] if subnets else _load_subnets()
        self.hold_s = hold_s
        self.default_host = default_host
        self.dedupe_window_s = dedupe_window_s
        self.inbound = inbound
        self.geo_from_names = geo_from_names
        self.stats = JoinStats()
        self.nat = nat if nat is not None else NatFlows()
        self._match_domain = _domain_matcher() if geo_from_names else (lambda name: None)
        # held records: (hold time, stream, record, sensor host); the hold time is record time for
        # feed_zeek/release and whatever clock the caller uses with hold/due (the daemon: wall)
        self._held: deque[tuple[float, str, dict[str, Any], Any]] = deque()
        self._subnet_memo: dict[str, bool] = {}
        self._portless: dict[str, str] = {}     # HTTP Host header -> name (few distinct values)
        self._seen_procs: OrderedDict[tuple[str, str, int, str], float] = OrderedDict()

    # -- addresses --------------------------------------------------------------------------------
    def in_container_subnet(self, addr: str) -> bool:
        """Is `addr` in a container subnet (memoised: a deployment sees few distinct sources)."""
        hit = self._subnet_memo.get(addr)
        if hit is None:
            hit = _subnet_test(addr, self.subnets)
            if len(self._subnet_memo) >= 100_000:
                self._subnet_memo.clear()
            self._subnet_memo[addr] = hit
        return hit

    def _lookup(self, host: str, addr: str, ts: float) -> ContainerState | None:
        """The container holding `addr` at `ts`: on the sensor's host, else on the one host that
        had it (a sensor may call itself something else than osquery's hostIdentifier)."""
        if not addr:
            return None
        inv = self.inventory
        return (inv.lookup(host, addr, ts) if host else None) or inv.lookup_any_host(addr, ts)

    def attribute_many(self, host: str, orig: Any, ts: Any, codes: tuple[Any, Any] | None = None
                       ) -> tuple[Any, list[ContainerState], Any]:
        """`_lookup(host, orig[i], ts[i])` and `in_container_subnet` for many rows at once:
        (holder index per row, -1 for none; the holders; in-subnet-or-held per row). One
        interval lookup per distinct address (Inventory.pick_many), the batch engine's join.
        `codes`: orig's (codes, uniques) when the caller has them (`ZeekBatch.codes` at the
        rows), else orig is factorized here."""
        import numpy as np

        host = host or self.default_host
        n = len(orig)
        hid = np.full(n, -1, dtype=np.int64)
        inside = np.zeros(n, dtype=bool)
        holders: list[ContainerState] = []
        codes, uniques = codes if codes is not None else factorize(orig)
        codes = np.asarray(codes)
        inv = self.inventory
        # An address whose one holder still holds it and held it before each of its rows (the
        # common case: Inventory.pick_many's first test) takes all its rows in one assignment
        # below; the others are looked up one address at a time. Holders are listed in address
        # order either way, so the result is the per-address loop's.
        sole = [inv.sole_holder(host, a) if host and a else None for a in list(uniques)]
        fast = [False] * len(uniques)
        if any(st is not None for st in sole):
            begin = np.array([st.begin if st is not None else np.nan for st in sole], dtype=float)
            late = ~(ts >= begin[codes])                   # NaN (no sole holder) fails too
            bad = np.bincount(codes[late], minlength=len(uniques)).tolist()
            fast = [st is not None and not b for st, b in zip(sole, bad)]
        slot = np.full(len(uniques), -1, dtype=np.int64)  # a fast address's holder index
        rest = np.flatnonzero(~np.asarray(fast, dtype=bool)[codes])  # the others' rows
        by_addr = dict(groups(codes[rest], len(uniques)))
        present = np.bincount(codes, minlength=len(uniques)).tolist()
        for k in range(len(uniques)):
            if not present[k]:
                continue
            if fast[k]:
                slot[k] = len(holders)
                holders.append(sole[k])
                continue
            rows = rest[by_addr[k]]
            addr = uniques[k]
            if not addr:
                continue
            t = ts[rows]
            if host:
                pick, hs = inv.pick_many(host, addr, t)
            else:
                pick, hs = np.full(len(rows), -1, dtype=np.int64), []
            miss = pick < 0
            if miss.any():
                p2, hs2 = inv.pick_any_host_many(addr, t[miss])
                pick[miss] = np.where(p2 >= 0, p2 + len(hs), -1)
                hs = hs + hs2
            hit = pick >= 0
            hid[rows[hit]] = pick[hit] + len(holders)
            holders.extend(hs)
            inside[rows] = hit | self.in_container_subnet(addr)
        if len(rest) < n:                              # some address took the fast path
            on = slot[codes]
            fast_row = on >= 0
            hid[fast_row] = on[fast_row]
            inside[fast_row] = True
        return hid, holders, inside

    def _container(self, host: str, container_id: str) -> ContainerState | None:
        """A container by id, on `host` or on any host."""
        st = self.inventory.get(host, container_id)
        if st is None:
            st = next((c for h in self.inventory.hosts()
                       if (c := self.inventory.get(h, container_id))), None)
        return st

    # -- osquery ----------------------------------------------------------------------------------
    def observe_nat(self, row: OsqueryRow, host: str = "") -> None:
        """Learn one container_nat_flows row (the NAT join's input)."""
        if row.action != "removed":
            self.nat.observe(row.columns, row.host or host or self.default_host)

    def from_osquery(self, row: OsqueryRow) -> list[ProcessRecord | LifecycleRecord | ContainerInfo]:
        """Records derived from one osquery row (inventory rows also update the Inventory)."""
        if row.table == NAT_TABLE:
            self.observe_nat(row)
            return []
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
        if row.table == "container_process_events":
            ts = event_time(c) or row.unix_time
        else:
            ts = to_ts(c.get("start_time")) or row.unix_time
        key = (row.host, c.get("container_id", ""), _int(c.get("pid")), c.get("cmdline", ""))
        prev = self._seen_procs.get(key)
        if prev is not None and abs(ts - prev) < self.dedupe_window_s:
            self.stats.duplicates += 1
            return None
        self._remember(key, ts)
        self.stats.processes += 1
        return self.process_from_row(row, row.host, ts)

    def process_from_row(self, row: OsqueryRow, host: str,
                         ts: float | None = None) -> ProcessRecord:
        """ProcessRecord of a container_processes / container_process_events row, no dedupe
        (the pipeline dedupes across both tables itself); the image from the inventory when
        the row has none."""
        c = row.columns
        if ts is None:
            if row.table == "container_process_events":
                ts = event_time(c) or row.unix_time
            else:
                ts = to_ts(c.get("start_time")) or row.unix_time
        cid = c.get("container_id", "")
        image = c.get("image", "")
        if not image and cid:
            known = self.inventory.get(host, cid)
            image = known.image if known else ""
        return ProcessRecord(ts=ts, container_id=cid, image=image, pid=_int(c.get("pid")),
                             ppid=_int(c.get("ppid")), name=c.get("name", ""),
                             path=c.get("path", ""), cmdline=c.get("cmdline", ""), host=host,
                             location_discovery=c.get("location_discovery") in ("1", "true", "True"),
                             indicator=c.get("indicator", ""))

    def _remember(self, key: tuple[str, str, int, str], ts: float) -> None:
        self._seen_procs[key] = ts
        self._seen_procs.move_to_end(key)
        while len(self._seen_procs) > 200_000:
            self._seen_procs.popitem(last=False)

    # -- Zeek ---------------------------------------------------------------------------------------
    def net_record(self, stream: str, rec: dict[str, Any], host: str = "",
                   keep_non_container: bool = False) -> NetRecord | None:
        """Attribute one Zeek record now. None if it is not container traffic (unless kept) or
        has no usable time or originator address (counted in `stats.malformed`).

        A record that names its container (container_geo.log, from the address map the daemon
        writes for the Zeek package) keeps that id. Otherwise the originator address is looked
        up at the record's time. The record takes its container's host: the alert is about the
        container's host, whatever the sensor calls itself."""
        g = rec.get
        ts = g("ts")
        if type(ts) is not float or ts != ts:
            ts = to_ts(ts)
        # Text fields: a parsed log's plain value is taken as is (the hot path); anything else
        # (unset markers, other readers' types, nested JSON, alternative names) goes through _s.
        v = g("id.orig_h")
        orig_h = v if type(v) is str and v not in _NOT_TEXT else _s(rec, "id.orig_h", "orig_h", "src")
        if ts is None or not orig_h:
            self.stats.malformed += 1
            return None
        host = host or self.default_host
        v = g("id.resp_h")
        resp_h = v if type(v) is str and v not in _NOT_TEXT else _s(rec, "id.resp_h", "resp_h")
        self.stats.net += 1
        cid = g("container_id")
        if cid is not None:
            cid = _s(rec, "container_id")
        attribution = container_addr = ""
        if cid:
            attribution = JOIN_ADDRESS  # the Zeek package named it from the bridge address map
            image = _str(_get(rec, "image", "container_image"))
            known = self._container(host, cid)
            if known is not None:
                host = known.host or host
                self.stats.net_attributed += 1
            else:
                self.stats.net_unknown += 1
        else:
            cid = image = ""
            holder = self._lookup(host, orig_h, ts)
            in_subnet = holder is not None or self.in_container_subnet(orig_h)
            nat = None
            if holder is None and not in_subnet and len(self.nat):
                nat, attribution = self._nat_lookup(stream, rec, host, orig_h, ts)
            if nat is not None:
                cid, host = nat.container_id, nat.host or host
                known = self._container(host, cid) if cid else None
                image = nat.image or (known.image if known else "")
                container_addr = f"{nat.container_addr}:{nat.container_port}"
                self.stats.net_nat += 1
                if cid:
                    self.stats.net_attributed += 1
                else:
                    self.stats.net_unknown += 1
            elif holder is None and self.inbound and not in_subnet:
                # inbound: an outside client talking to a container's published service
                holder = self._lookup(host, resp_h, ts)
            if nat is not None:
                pass
            elif holder is not None:
                cid, image, host = holder.container_id, holder.image, holder.host or host
                attribution = JOIN_ADDRESS
                self.stats.net_attributed += 1
            elif in_subnet:
                self.stats.net_unknown += 1
            else:
                self.stats.net_not_container += 1
                if not keep_non_container:
                    return None
        proto = _s(rec, "proto") or ("tcp" if stream in ("http", "ssl") else "")
        resp_p, orig_p, uid = g("id.resp_p"), g("id.orig_p"), g("uid")
        out = NetRecord(ts=ts, kind=STREAM_KIND.get(stream, stream), container_id=cid,
                        image=image, orig_h=orig_h, resp_h=resp_h,
                        resp_p=resp_p if type(resp_p) is int else _n(rec, "id.resp_p", "resp_p"),
                        orig_p=orig_p if type(orig_p) is int else _n(rec, "id.orig_p", "orig_p"),
                        proto=proto,
                        uid=uid if type(uid) is str and uid not in _NOT_TEXT else _s(rec, "uid"),
                        host=host, uri=_s(rec, "uri"), user_agent=_s(rec, "user_agent"),
                        attribution=attribution, container_addr=container_addr)
        self._fill_kind(out, stream, rec)
        return out

    def _nat_lookup(self, stream: str, rec: dict[str, Any], host: str, orig_h: str,
                    ts: float) -> tuple[NatFlow | None, str]:
        """(the container flow an uplink record was, the join that found it) or (None, "")."""
        g = rec.get
        orig_p, resp_p = g("id.orig_p"), g("id.resp_p")
        orig_p = orig_p if type(orig_p) is int else _n(rec, "id.orig_p", "orig_p")
        resp_p = resp_p if type(resp_p) is int else _n(rec, "id.resp_p", "resp_p")
        proto = _s(rec, "proto") or ("tcp" if stream in ("http", "ssl") else
                                     "udp" if stream == "dns" else "")
        resp_h = _s(rec, "id.resp_h", "resp_h")
        nf = self.nat.match(host, orig_h, orig_p, proto, ts, resp_h, resp_p)
        if nf is not None:
            return nf, JOIN_NAT
        if stream == "dns" and self.nat.is_nat_address(orig_h):
            nf = self.nat.resolver_flow(host, ts)
            if nf is not None:
                return nf, JOIN_RESOLVER
        return None, ""

    def _fill_kind(self, out: NetRecord, stream: str, rec: dict[str, Any]) -> None:
        if stream == "conn":
            out.conn_state = _str(rec.get("conn_state"))
            out.bytes_out = _int(rec.get("orig_bytes"))
            out.bytes_in = _int(rec.get("resp_bytes"))
        elif stream == "dns":
            out.domain = _str(rec.get("query"))
            out.rcode = _str(rec.get("rcode_name")) or _str(rec.get("rcode"))
        elif stream == "http":
            raw = _s(rec, "host")
            domain = self._portless.get(raw)
            if domain is None:
                domain = strip_port(raw)
                if len(self._portless) >= 100_000:
                    self._portless.clear()
                self._portless[raw] = domain
            out.domain = domain
        elif stream == "ssl":
            out.domain = _str(rec.get("server_name"))
        elif stream in ("container_geo", "geo"):
            out.domain = _str(_get(rec, "domain", "query", "server_name", "host", "name"))
            out.geo_service = _str(_get(rec, "service", "geo_service"))
            if self.geo_from_names and not out.geo_service:
                out.geo_service = "unknown"
        if self.geo_from_names and out.domain and not out.geo_service:
            m = self._match_domain(out.domain.rstrip("."))
            if m is not None and getattr(m, "category", "") in GEO_CATEGORIES:
                out.geo_service = getattr(m, "service", "") or out.domain

    # -- holding records of containers osquery has not reported yet --------------------------------
    def should_hold(self, rec: dict[str, Any], host: str = "") -> bool:
        """A record from a container subnet that no known container held at its time (and that
        does not name its container): osquery may report that container later. Likewise a
        record from a host's uplink address (one NAT flows left through) that no NAT flow
        explains yet: the host reports its conntrack flows on osquery's schedule too."""
        if rec.get("container_id"):
            return False
        ts = to_ts(rec.get("ts"))
        orig = _str(_get(rec, "id.orig_h", "orig_h"))
        if ts is None or not orig:
            return False
        if not self.in_container_subnet(orig):
            if not self.nat.is_nat_address(orig) or ts < self.nat.latest - self.nat.skew_s:
                return False  # not an uplink address, or the host's flows are past this time
            stream = "dns" if "query" in rec else "http" if "uri" in rec else "conn"
            return self._nat_lookup(stream, rec, host or self.default_host, orig, ts)[0] is None
        return self._lookup(host or self.default_host, orig, ts) is None

    def hold(self, stream: str, rec: dict[str, Any], host: Any, at: float) -> None:
        """Keep a record for later (`at`: hold time on the caller's clock)."""
        self._held.append((at, stream, rec, host))

    def due(self, now: float | None = None, force: bool = False) -> list[tuple[str, dict[str, Any], Any]]:
        """Take the held records to retry: those attributable now, those held `hold_s` (on the
        clock of `now`), or all when forced; (stream, record, host) in arrival order."""
        out: list[tuple[str, dict[str, Any], Any]] = []
        keep: deque[tuple[float, str, dict[str, Any], Any]] = deque()
        for item in self._held:
            at, stream, rec, host = item
            if force or (now is not None and now - at >= self.hold_s) \
                    or not self.should_hold(rec, host or ""):
                out.append((stream, rec, host))
            else:
                keep.append(item)
        self._held = keep
        return out

    def held_records(self) -> list[tuple[str, dict[str, Any], Any]]:
        """(stream, record, host) of every held record (for a persisted state)."""
        return [(stream, rec, host) for _, stream, rec, host in self._held]

    def feed_zeek(self, stream: str, rec: dict[str, Any], host: str = "") -> list[NetRecord]:
        """Streaming join: attributed records now; unknown-container records after `hold_s`
        of record time."""
        out: list[NetRecord] = []
        ts = to_ts(rec.get("ts"))
        if self.hold_s > 0 and self.should_hold(rec, host):
            self.hold(stream, rec, host, ts)
        else:
            nr = self.net_record(stream, rec, host)
            if nr is not None:
                out.append(nr)
        if ts is not None:
            out.extend(self.release(ts))
        return out

    def release(self, now_ts: float | None = None, force: bool = False) -> list[NetRecord]:
        """Retry held records: those now attributable, and (after hold_s or when forced) the rest."""
        out: list[NetRecord] = []
        for stream, rec, host in self.due(now_ts, force):
            nr = self.net_record(stream, rec, host)
            if nr is not None:
                out.append(nr)
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
