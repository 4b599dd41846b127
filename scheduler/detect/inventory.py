"""Container history per host: which container held which address when.

Zeek sees addresses, not containers. To attribute a network record we need the container that held
the source address *at the record's time*, and addresses are reused: a `podman restart` keeps id and
IP, a redeploy gives a new container the old IP, and short-lived `--rm` containers hand their IP on
within seconds. So the inventory keeps, per (host, container id), when the container began (create /
start) and when it ended (destroy event, or disappearance from a full inventory snapshot), and its
addresses; `lookup(host, addr, ts)` picks the holder whose tenure contains `ts`.

Inputs are osquery rows (scheduler/osquery_results.OsqueryRow):
  * container_inventory (snapshot or differential): names, images, addresses, created/started, state;
  * container_events: create/start/die/destroy times, so tenures have sub-second bounds even when
    a container lived shorter than the inventory interval.

`lookup` tries, in order: a holder whose own tenure contains ts (latest begin wins); a holder that
ended less than `grace_after` before ts (a record logged just after its container stopped); a holder
that began less than `grace_before` after ts (clock skew between the sensor and the host).

The address-map file the Zeek package reads is written by `write_address_map` (atomic rename).
"""
from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from model.records import ContainerInfo
from scheduler.collect.osquery_results import OsqueryRow

log = logging.getLogger(__name__)

# File name and columns as the Zeek package reads them (zeek_scripts/config.zeek,
# `Stowaway::container_addresses_file`; zeek_scripts/input.zeek). The address column is `ip`, not
# `addr`, because `addr` is a type keyword in Zeek and cannot name a record field. "-" = unknown.
ADDRESS_MAP_FIELDS = ("ip", "container_id", "container_name", "image")
ADDRESS_MAP_NAME = "container_addresses.tsv"

RUNNING_STATES = {"running", "up", "restarting", "created", "configured", "paused", "initialized"}
END_ACTIONS = {"destroy", "remove"}
DIE_ACTIONS = {"die", "died", "stop", "kill", "oom"}
BEGIN_ACTIONS = {"create", "init", "start", "restart"}


def _f(value: Any) -> float | None:
    """Epoch seconds from a column value; None when absent/zero/unparsable."""
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _ips(value: str) -> list[str]:
    return [p.strip() for p in (value or "").replace(";", ",").split(",") if p.strip()]


_first = operator.itemgetter(0)


@dataclass(slots=True)
class ContainerState:
    """Everything we know about one container on one host."""

    host: str
    container_id: str
    name: str = ""
    image: str = ""
    image_id: str = ""
    runtime: str = ""
    ips: list[str] = field(default_factory=list)
    created: float | None = None
    started: float | None = None
    first_seen: float | None = None     # earliest time any source mentioned it
    last_seen: float | None = None      # latest inventory row saying it exists
    died: float | None = None           # latest die event
    destroyed: float | None = None      # destroy event
    gone: float | None = None           # missing from a full snapshot (no destroy event seen)
    state: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # last container_inventory row
    ev_created: float | None = None     # create event (ns precision, preferred over `created`)
    ev_started: float | None = None     # first start/init event

    @property
    def begin(self) -> float:
        """Start of the tenure: creation (the address is assigned between create and start).

        Event times are preferred: inventory times are whole seconds, which would let a
        redeployed container's tenure start before its predecessor's ended.
        """
        for precise in (self.ev_created, self.ev_started):
            if precise is not None:
                return precise
        candidates = [t for t in (self.created, self.started, self.first_seen) if t is not None]
        return min(candidates) if candidates else 0.0

    @property
    def end(self) -> float | None:
        """End of the tenure, None while the container exists."""
        if self.destroyed is not None:
            return self.destroyed
        return self.gone

    def info(self, environment: str = "default") -> ContainerInfo:
        return ContainerInfo(container_id=self.container_id, image=self.image, name=self.name,
                             host=self.host, image_id=self.image_id, created=self.created,
                             environment=environment, ip_addresses=list(self.ips))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContainerState":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}  # type: ignore[attr-defined]
        return cls(**known)


class Inventory:
    """Container history for all hosts, fed with osquery rows; optional persistence in StateStore."""

    def __init__(self, grace_before: float = 1.0, grace_after: float = 5.0) -> None:
        self.grace_before = grace_before
        self.grace_after = grace_after
        self._containers: dict[tuple[str, str], ContainerState] = {}
        self._by_addr: dict[tuple[str, str], list[str]] = {}   # (host, addr) -> container ids
        self._addr_hosts: dict[str, set[str]] = {}             # addr -> hosts with a holder
        self._hosts: set[str] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._snapshot_seen: dict[tuple[str, float], set[str]] = {}
        self._last_snapshot: dict[str, float] = {}
        self._short_index: dict[tuple[str, str], str] = {}

    # -- access -------------------------------------------------------------------------------------
    def get(self, host: str, container_id: str) -> ContainerState | None:
        c = self._containers.get((host, container_id))
        if c is None and container_id and len(container_id) < 64:
            full = self._short_index.get((host, container_id[:12]))
            if full:
                c = self._containers.get((host, full))
        return c

    def containers(self, host: str | None = None) -> list[ContainerState]:
        return [c for (h, _), c in self._containers.items() if host is None or h == host]

    def hosts(self) -> list[str]:
        return sorted(self._hosts)

    def __len__(self) -> int:
        return len(self._containers)

    def _state(self, host: str, container_id: str) -> ContainerState:
        key = (host, container_id)
        c = self._containers.get(key)
        if c is None:
            c = ContainerState(host=host, container_id=container_id)
            self._containers[key] = c
            self._short_index[(host, container_id[:12])] = container_id
            self._hosts.add(host)
        self._dirty.add(key)
        return c

    def _add_ip(self, c: ContainerState, addr: str) -> None:
        if addr in c.ips:
            return
        c.ips.append(addr)
        holders = self._by_addr.setdefault((c.host, addr), [])
        if c.container_id not in holders:
            holders.append(c.container_id)
        self._addr_hosts.setdefault(addr, set()).add(c.host)

    @staticmethod
    def _seen(c: ContainerState, ts: float | None) -> None:
        if ts is None:
            return
        if c.first_seen is None or ts < c.first_seen:
            c.first_seen = ts

    # -- feeding ----------------------------------------------------------------------------------
    def observe(self, row: OsqueryRow) -> bool:
        """Feed one osquery row; returns True if the row was inventory-relevant."""
        if row.table == "container_inventory":
            self.observe_inventory(row.host, row.unix_time, row.action, row.columns)
            return True
        if row.table == "container_events":
            col = row.columns
            ts = _event_time(col) or row.unix_time
            self.observe_event(row.host, ts, col.get("action", ""), col.get("container_id", ""),
                               col.get("name", ""), col.get("image", ""))
            return True
        return False

    def observe_rows(self, rows: Iterable[OsqueryRow]) -> None:
        """Feed many rows; full snapshots also mark containers that vanished from them as gone."""
        for row in rows:
            self.observe(row)
        self.close_snapshots()

    def observe_inventory(self, host: str, unix_time: float, action: str,
                          columns: dict[str, str]) -> None:
        cid = columns.get("id") or columns.get("container_id") or ""
        if not cid:
            return
        if action == "removed":
            c = self._containers.get((host, cid))
            # A changed row arrives as removed(old)+added(new); only an unchanged row vanishing means
            # the container is gone.
            if c is not None and c.columns == columns and c.destroyed is None:
                c.gone = unix_time
                self._dirty.add((host, cid))
            return
        c = self._state(host, cid)
        c.columns = dict(columns)
        c.name = columns.get("name") or c.name
        c.image = columns.get("image") or c.image
        c.image_id = columns.get("image_id") or c.image_id
        c.runtime = columns.get("runtime") or c.runtime
        created, started = _f(columns.get("created")), _f(columns.get("started"))
        if created is not None:
            c.created = created
        if started is not None and (c.started is None or started < c.started):
            c.started = started
        c.state = (columns.get("state") or c.state).lower()
        for addr in _ips(columns.get("ip_addresses", "")):
            self._add_ip(c, addr)
        self._seen(c, min(t for t in (c.created, c.started, unix_time) if t is not None))
        if c.last_seen is None or unix_time > c.last_seen:
            c.last_seen = unix_time
        if c.state in ("removing", "removed", "dead") and c.destroyed is None and c.gone is None:
            c.gone = unix_time
        elif c.destroyed is None:
            c.gone = None  # present again: not gone
        if action == "snapshot":
            # a snapshot of a later time for this host means the earlier one is complete
            older = [k for k in self._snapshot_seen if k[0] == host and k[1] < unix_time]
            if older:
                self.close_snapshots(older)
            self._snapshot_seen.setdefault((host, unix_time), set()).add(cid)

    def close_snapshots(self, keys: list[tuple[str, float]] | None = None) -> None:
        """After all rows of a snapshot were fed: containers of that host missing from it are gone.

        Called automatically when the next snapshot of a host starts; call it at the end of a batch
        to settle the last one.
        """
        pending = {k: self._snapshot_seen[k] for k in (keys or list(self._snapshot_seen))}
        for (host, unix_time), ids in sorted(pending.items(), key=lambda kv: kv[0][1]):
            self._snapshot_seen.pop((host, unix_time), None)
            if unix_time < self._last_snapshot.get(host, 0.0):
                continue
            self._last_snapshot[host] = unix_time
            for c in self.containers(host):
                if c.container_id in ids or c.end is not None:
                    continue
                if c.last_seen is not None and c.last_seen < unix_time:
                    c.gone = unix_time
                    self._dirty.add((host, c.container_id))

    def observe_info(self, info: ContainerInfo, host: str = "") -> ContainerState:
        """Feed a ContainerInfo (e.g. from the model's fixture loader or another collector)."""
        c = self._state(info.host or host, info.container_id)
        c.name = info.name or c.name
        c.image = info.image or c.image
        c.image_id = info.image_id or c.image_id
        if info.created is not None:
            c.created = info.created
        for addr in info.ip_addresses:
            self._add_ip(c, addr)
        self._seen(c, info.created)
        return c

    def observe_event(self, host: str, ts: float, action: str, container_id: str,
                      name: str = "", image: str = "") -> None:
        if not container_id:
            return
        action = action.lower()
        c = self._state(host, container_id)
        c.name = c.name or name
        c.image = c.image or image
        self._seen(c, ts)
        if action == "create":
            c.ev_created = ts if c.ev_created is None else min(c.ev_created, ts)
        elif action in ("start", "init"):
            if c.ev_started is None or ts < c.ev_started:
                c.ev_started = ts
            c.state = "running"
            c.gone = None
        elif action in DIE_ACTIONS:
            c.died = ts
            c.state = "exited"
        elif action in END_ACTIONS:
            c.destroyed = ts
            c.state = "removed"

    # -- queries ------------------------------------------------------------------------------------
    def holders(self, host: str, addr: str) -> list[ContainerState]:
        ids = self._by_addr.get((host, addr), [])
        return sorted((self._containers[(host, i)] for i in ids), key=lambda c: c.begin)

    def lookup(self, host: str, addr: str, ts: float) -> ContainerState | None:
        """The container that held `addr` on `host` at `ts`, or None."""
        ids = self._by_addr.get((host, addr))
        if not ids:
            return None
        if len(ids) == 1:
            # The common case (one tenure per address): the rules below on a single candidate,
            # without sorting and list building on every network record.
            c = self._containers[(host, ids[0])]
            begin, end = c.begin, c.end
            if begin <= ts and (end is None or ts <= end):
                return c
            if end is not None and begin <= ts <= end + self.grace_after:
                return c
            if begin - self.grace_before <= ts < begin:
                return c
            return None
        # Several tenures (a redeploy reused the address), in order of their beginning: the
        # latest one holding it at ts; else the latest that just ended (grace_after); else the
        # earliest about to begin (grace_before).
        inside = after = before = None
        tenures = []
        for i in ids:
            c = self._containers[(host, i)]
            tenures.append((c.begin, c.end, c))
        tenures.sort(key=_first)
        for begin, end, c in tenures:
            if begin <= ts and (end is None or ts <= end):
                inside = c
            if end is not None and begin <= ts <= end + self.grace_after:
                after = c
            if before is None and begin - self.grace_before <= ts < begin:
                before = c
        if inside is not None:
            return inside
        return after if after is not None else before

    def pick_many(self, host: str, addr: str, ts: Any) -> tuple[Any, list[ContainerState]]:
        """`lookup(host, addr, t)` for every t of the float array `ts`, at once: (an int array,
        the index of each row's holder in the list, -1 for none; the address's holders).

        Why: the batch engine attributes a log's rows per unique source address. The holders of
        one address are few (churn reuses some), so the rules of `lookup` run as one array
        comparison per tenure instead of once per row; the result equals `lookup` row by row
        (tests/test_lookup_many.py)."""
        import numpy as np

        ts = np.asarray(ts, dtype=np.float64)
        ids = self._by_addr.get((host, addr))
        if not ids:
            return np.full(ts.shape, -1, dtype=np.int64), []
        states = [self._containers[(host, i)] for i in ids]
        if len(states) == 1 and states[0].end is None and ts.size and \
                bool(ts.min() >= states[0].begin):
            # the common case: one container holds the address, since before every row
            return np.zeros(ts.shape, dtype=np.int64), states
        tenures = sorted(((c.begin, c.end, c) for c in states), key=_first)
        inside = np.full(ts.shape, -1, dtype=np.int64)
        after = np.full(ts.shape, -1, dtype=np.int64)
        before = np.full(ts.shape, -1, dtype=np.int64)
        for j, (begin, end, _) in enumerate(tenures):
            started = begin <= ts
            if end is None:
                inside[started] = j                     # the latest tenure holding it wins
            else:
                inside[started & (ts <= end)] = j
                after[started & (ts <= end + self.grace_after)] = j
            before[(before < 0) & (begin - self.grace_before <= ts) & (ts < begin)] = j
        pick = np.where(inside >= 0, inside, np.where(after >= 0, after, before))
        return pick, [c for _, _, c in tenures]

    def sole_holder(self, host: str, addr: str) -> ContainerState | None:
        """The one container that ever held `addr` on `host`, when it still holds it (no end):
        then `pick_many` gives it for every time from its begin on (its common case)."""
        ids = self._by_addr.get((host, addr))
        if not ids or len(ids) != 1:
            return None
        st = self._containers[(host, ids[0])]
        return st if st.end is None else None

    def lookup_many(self, host: str, addr: str, ts: Any) -> Any:
        """`lookup` for every time of `ts`: an object array of ContainerState or None."""
        import numpy as np

        pick, holders = self.pick_many(host, addr, ts)
        out = np.full(pick.shape, None, dtype=object)
        if holders:
            table = np.empty(len(holders), dtype=object)
            table[:] = holders
            out[pick >= 0] = table[pick[pick >= 0]]
        return out

    def pick_any_host_many(self, addr: str, ts: Any) -> tuple[Any, list[ContainerState]]:
        """`lookup_any_host(addr, t)` for every t of `ts`, as `pick_many` gives it: the one
        host with a holder at that time, else none."""
        import numpy as np

        ts = np.asarray(ts, dtype=np.float64)
        pick = np.full(ts.shape, -1, dtype=np.int64)
        holders: list[ContainerState] = []
        count = np.zeros(ts.shape, dtype=np.int64)
        for h in sorted(self._addr_hosts.get(addr) or ()):
            p, hs = self.pick_many(h, addr, ts)
            hit = p >= 0
            count += hit
            first = hit & (count == 1)
            pick[first] = p[first] + len(holders)
            holders.extend(hs)
        pick[count != 1] = -1
        return pick, holders

    def lookup_any_host(self, addr: str, ts: float) -> ContainerState | None:
        """Lookup when the sensor's host is unknown: the only host with a holder, if unambiguous."""
        hosts = self._addr_hosts.get(addr)
        if not hosts:
            return None
        found = [c for h in sorted(hosts) if (c := self.lookup(h, addr, ts)) is not None]
        return found[0] if len(found) == 1 else None

    def current_map(self, host: str | None = None) -> list[tuple[str, ContainerState]]:
        """(addr, container) for every container still alive, newest holder per address."""
        out: dict[tuple[str, str], ContainerState] = {}
        for c in self.containers(host):
            if c.end is not None or c.state in ("exited", "stopped", "dead"):
                continue
            for addr in c.ips:
                prev = out.get((c.host, addr))
                if prev is None or c.begin >= prev.begin:
                    out[(c.host, addr)] = c
        return sorted(((a, c) for (_, a), c in out.items()), key=lambda ac: ac[0])

    def write_address_map(self, path: str | Path, host: str | None = None) -> int:
        """Write the Zeek Input-framework TSV atomically; returns the number of rows."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.current_map(host)
        lines = ["#fields\t" + "\t".join(ADDRESS_MAP_FIELDS)]
        for addr, c in rows:
            vals = [addr, c.container_id, c.name or "-", c.image or "-"]
            lines.append("\t".join(v.replace("\t", " ").replace("\n", " ") for v in vals))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name, dir=str(path.parent))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)  # readers see the old or the new file, never half of one
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return len(rows)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, store: Any, conn: sqlite3.Connection | None = None) -> int:
        """Write changed containers to a StateStore (inside the caller's transaction if given)."""
        n = 0
        for key in sorted(self._dirty):
            c = self._containers.get(key)
            if c is None:
                continue
            store.save_container(c.host, c.container_id, c.to_dict(), c.begin or c.first_seen,
                                 c.end, conn=conn)
            n += 1
        self._dirty.clear()
        return n

    @classmethod
    def load(cls, store: Any, **kwargs: Any) -> "Inventory":
        inv = cls(**kwargs)
        for host, cid, data in store.load_containers():
            c = ContainerState.from_dict(data)
            inv._containers[(host, cid)] = c
            inv._short_index[(host, cid[:12])] = cid
            inv._hosts.add(host)
            for addr in c.ips:
                inv._by_addr.setdefault((host, addr), []).append(cid)
                inv._addr_hosts.setdefault(addr, set()).add(host)
        return inv

    def prune(self, before_ts: float) -> int:
        """Drop containers whose tenure ended before `before_ts` (memory bound for the daemon)."""
        drop = [k for k, c in self._containers.items() if c.end is not None and c.end < before_ts]
        for key in drop:
            c = self._containers.pop(key)
            for addr in c.ips:
                ids = self._by_addr.get((c.host, addr), [])
                if c.container_id in ids:
                    ids.remove(c.container_id)
                if not ids:
                    self._by_addr.pop((c.host, addr), None)
                    self._addr_hosts.get(addr, set()).discard(c.host)
            self._dirty.discard(key)
        return len(drop)


def _event_time(columns: dict[str, str]) -> float | None:
    """Event time with sub-second precision: time_nano when present (epoch ns), else time."""
    nano = columns.get("time_nano")
    if nano:
        try:
            v = int(nano)
            if v >= 10**9:      # epoch nanoseconds (the extension's convention)
                return v / 1e9
            if v > 0 and _f(columns.get("time")):  # nanoseconds within the second (other producers)
                return float(int(float(columns["time"]))) + v / 1e9
        except ValueError:
            pass
    return _f(columns.get("time"))


def event_time(columns: dict[str, str]) -> float | None:
    """Public alias used by join.py."""
    return _event_time(columns)

