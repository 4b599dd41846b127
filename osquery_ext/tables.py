"""The five osquery tables (names and columns fixed in .coord/CONTRACTS.md).

Each table is a thin `osquery.TablePlugin` over a pure generate function that takes a `Sources`
object (where /proc is, the runtime clients, the event buffers), so the logic is unit-testable with
fakes and the plugins stay trivial. All row values are strings, as osquery's Thrift API carries them.

Why the generate functions filter on osquery's constraints themselves: osquery re-applies every
constraint after the extension answers, so filtering here is never needed for correctness, only for
cost: `WHERE time > N` on the event tables avoids shipping the whole ring buffer over Thrift on each
scheduled run, and `container_id = X` on the process / socket tables skips reading four of the five
/proc files of every process outside that container.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from osquery import STRING, INTEGER, TableColumn, TablePlugin

from osquery_ext import conntrack, stdio_sockets
from osquery_ext.cmdline import format_cmdline
from osquery_ext.events import RingBuffer
from osquery_ext.runtimes import ContainerMeta, Runtimes

log = logging.getLogger(__name__)

# osquery's ConstraintOperator values (osquery/core/tables.h) as sent in the context JSON.
OP_EQUALS = 2
OP_GREATER_THAN = 4
OP_LESS_THAN_OR_EQUALS = 8
OP_LESS_THAN = 16
OP_GREATER_THAN_OR_EQUALS = 32

# -- columns --------------------------------------------------------------------------------------
T = TableColumn
COLUMNS: dict[str, list[TableColumn]] = {
    "container_processes": [
        T("pid", INTEGER), T("ppid", INTEGER), T("name", STRING), T("path", STRING),
        T("cmdline", STRING), T("uid", INTEGER), T("start_time", INTEGER),
        T("container_id", STRING), T("runtime", STRING), T("pod_uid", STRING),
        T("netns", STRING), T("container_name", STRING), T("image", STRING),
        T("cgroup_path", STRING), T("location_discovery", INTEGER), T("indicator", STRING),
        T("tool", STRING), T("stdio_socket", STRING), T("stdio_remote", STRING),
        T("raw_sockets", STRING)],
    "container_inventory": [
        T("id", STRING), T("name", STRING), T("image", STRING), T("image_id", STRING),
        T("state", STRING), T("created", INTEGER), T("started", INTEGER),
        T("ip_addresses", STRING), T("networks", STRING), T("privileged", INTEGER),
        T("network_mode", STRING), T("pid_mode", STRING), T("ipc_mode", STRING),
        T("runtime_socket_mounted", INTEGER), T("host_root_mounted", INTEGER),
        T("labels", STRING), T("pod_name", STRING), T("pod_namespace", STRING),
        T("pid", INTEGER), T("runtime", STRING), T("source", STRING), T("cap_add", STRING)],
    "container_events": [
        T("time", "BIGINT"), T("time_nano", "BIGINT"), T("action", STRING),
        T("container_id", STRING), T("name", STRING), T("image", STRING),
        T("exit_code", STRING), T("runtime", STRING)],
    "container_process_events": [
        T("time", "BIGINT"), T("time_nano", "BIGINT"), T("pid", INTEGER), T("ppid", INTEGER),
        T("uid", INTEGER), T("name", STRING), T("cmdline", STRING), T("path", STRING),
        T("container_id", STRING), T("container_name", STRING), T("image", STRING),
        T("runtime", STRING), T("location_discovery", INTEGER), T("indicator", STRING),
        T("tool", STRING), T("stdio_socket", STRING), T("stdio_remote", STRING),
        T("raw_sockets", STRING)],
    "container_sockets": [
        T("container_id", STRING), T("pid", INTEGER), T("netns", STRING),
        T("protocol", STRING), T("family", INTEGER), T("local_address", STRING),
        T("local_port", INTEGER), T("remote_address", STRING), T("remote_port", INTEGER),
        T("state", STRING)],
    "container_nat_flows": [T(n, t) for n, t in conntrack.COLUMNS],
}
TABLE_NAMES = tuple(COLUMNS)

# osquery's ColumnOptions. Current osqueryd passes a WHERE constraint to a table (and so to an
# extension) only for columns marked INDEX, REQUIRED or ADDITIONAL; for any other column it lets
# SQLite filter the full result ("not indexed, let sqlite filter it" in xBestIndex). The SDK
# advertises every column with option 0, so without this `WHERE time > N` would never reach us.
COLUMN_INDEX = 1
INDEXED: dict[str, frozenset[str]] = {
    "container_processes": frozenset({"container_id"}),
    "container_inventory": frozenset({"id"}),
    "container_events": frozenset({"time", "container_id"}),
    "container_process_events": frozenset({"time", "container_id"}),
    "container_sockets": frozenset({"container_id"}),
    "container_nat_flows": frozenset({"time", "container_id"}),
}


# -- attribution and classification glue ---------------------------------------------------------
Attribute = Callable[[str], "dict[str, str] | None"]
Classify = Callable[[list[str]], "dict[str, Any]"]


def default_attribute(cgroup_text: str) -> dict[str, str] | None:
    """Container attribution of one /proc/<pid>/cgroup text via osquery_ext.cgroup."""
    from osquery_ext import cgroup  # every runtime's path layout, cgroup v1 and v2
    return cgroup.attribution_columns(cgroup_text)


def default_classify(argv: list[str]) -> dict[str, Any]:
    """T1614 verdict for one argv via osquery_ext.classifier."""
    try:
        from osquery_ext import classifier
    except ImportError as exc:  # keep the tables up even if the classifier is broken
        _warn_once("classifier", f"T1614 classifier unavailable ({exc}); location_discovery=0")
        return {}
    try:
        m = classifier.classify_command(argv)
    except Exception:  # one odd command line must not empty the whole table
        log.debug("classifier failed on %r", argv[:3], exc_info=True)
        _warn_once("classifier-error", "T1614 classifier raised on a command line (details at "
                   "debug level); that row gets location_discovery=0")
        return {}
    return {"location_discovery": bool(m.location_discovery), "indicator": m.indicator or "",
            "tool": m.tool or ""}


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s", message)


class Memo:
    """Bounded memo of a pure function keyed by its (hashable) argument: many processes share one
    cgroup text (all of a container's) or one cmdline (25 x `sleep 3600`), so each distinct value
    is parsed or classified once, not once per process per query."""

    def __init__(self, fn: Callable[[Any], Any], maxsize: int = 8192) -> None:
        self.fn = fn
        self.maxsize = maxsize
        self._d: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any) -> Any:
        try:
            return self._d[key]
        except KeyError:
            pass
        val = self.fn(key)
        with self._lock:
            if len(self._d) >= self.maxsize:
                self._d.clear()
            self._d[key] = val
        return val


@dataclass
class Sources:
    """Everything the tables read; the extension builds one, tests build fakes."""

    proc: str = "/proc"
    runtimes: Runtimes | None = None
    events: RingBuffer = field(default_factory=lambda: RingBuffer(10000))
    process_events: RingBuffer = field(default_factory=lambda: RingBuffer(50000))
    nat_flows: RingBuffer = field(default_factory=lambda: RingBuffer(50000))
    attribute: Attribute = default_attribute
    classify: Classify = default_classify
    connector: Any = None

    def __post_init__(self) -> None:
        attribute, classify = self.attribute, self.classify
        self._attr_bytes = Memo(lambda raw: attribute(raw.decode("utf-8", "replace")))
        self._attr_text = Memo(attribute)
        self._classify_argv = Memo(lambda argv: classify(list(argv)))
        self._huge_verdicts: dict[bytes, dict[str, Any]] = {}

    def attribute_raw(self, raw: bytes) -> dict[str, str] | None:
        return self._attr_bytes(raw)

    def attribute_raw_text(self, text: str) -> dict[str, str] | None:
        return self._attr_text(text)

    def classify_argv(self, argv: tuple[str, ...]) -> dict[str, Any]:
        """Memoised verdict. Huge command lines are keyed by a digest in a small memo of their
        own: the classifier reads all of a command line (linear, but up to ~2 s of CPU per MB
        for pathological shapes), so a long-lived padded process must cost that once, not on
        every container_processes query, and the main memo never holds megabyte keys."""
        if sum(map(len, argv)) > 4096:
            key = hashlib.blake2b("\0".join(argv).encode("utf-8", "surrogatepass"),
                                  digest_size=16).digest()
            hit = self._huge_verdicts.get(key)
            if hit is None:
                hit = self.classify(list(argv))
                if len(self._huge_verdicts) >= 64:
                    self._huge_verdicts.clear()
                self._huge_verdicts[key] = hit
            return hit
        return self._classify_argv(argv)

    def classify_list(self, argv: list[str]) -> dict[str, Any]:
        return self.classify_argv(tuple(argv))

    def name_image(self, cid: str) -> tuple[str, str]:
        """(name, image) known for a container id (runtime cache / events), no blocking I/O."""
        if self.runtimes is None:
            return "", ""
        meta = self.runtimes.lookup(cid)
        return (meta.name, meta.image) if meta else ("", "")

    def refresh_names(self, ids: Iterable[str]) -> None:
        """Ask the runtimes (deadline-bounded) only when a container id is not yet known."""
        if self.runtimes is None:
            return
        if any(self.runtimes.lookup(c) is None for c in ids):
            self.runtimes.refresh_names()


# -- osquery query context -------------------------------------------------------------------------
def parse_constraints(context: Any) -> list[tuple[str, int, str]]:
    """(column, op, expr) triples from osquery's query context (a dict or its JSON text).

    osquery sends {"constraints": [{"name": col, "affinity": "...", "list": [{"op": 4,
    "expr": "123"}]}], ...}; columns without constraints may come with an empty list.
    """
    if isinstance(context, (str, bytes)):
        try:
            context = json.loads(context or "{}")
        except ValueError:
            return []
    if not isinstance(context, dict):
        return []
    out = []
    for c in context.get("constraints") or []:
        if not isinstance(c, dict):
            continue
        name = str(c.get("name", ""))
        for item in c.get("list") or []:
            try:
                out.append((name, int(item.get("op")), str(item.get("expr", ""))))
            except (TypeError, ValueError, AttributeError):
                continue
    return out


def _cmp(value: int, op: int, ref: int) -> bool:
    if op == OP_EQUALS:
        return value == ref
    if op == OP_GREATER_THAN:
        return value > ref
    if op == OP_GREATER_THAN_OR_EQUALS:
        return value >= ref
    if op == OP_LESS_THAN:
        return value < ref
    if op == OP_LESS_THAN_OR_EQUALS:
        return value <= ref
    return True  # LIKE, GLOB, ... : osquery filters those itself


def time_filter(constraints: list[tuple[str, int, str]], column: str = "time"
                ) -> Callable[[dict[str, str]], bool]:
    """A row predicate for the numeric constraints on `column` (non-numeric ones are ignored)."""
    checks = []
    for name, op, expr in constraints:
        if name != column:
            continue
        try:
            checks.append((op, int(float(expr))))
        except ValueError:
            continue
    if not checks:
        return lambda row: True

    def pred(row: dict[str, str]) -> bool:
        try:
            v = int(row.get(column) or 0)
        except ValueError:
            return True
        return all(_cmp(v, op, ref) for op, ref in checks)
    return pred


def equals_values(constraints: list[tuple[str, int, str]], column: str) -> set[str] | None:
    """The set of values in `column = X` constraints (several = an IN list), None if unconstrained."""
    vals = {expr for name, op, expr in constraints if name == column and op == OP_EQUALS}
    return vals or None


# -- /proc readers -------------------------------------------------------------------------------
def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _pids(proc: str) -> list[str]:
    try:
        return [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []


@functools.lru_cache(maxsize=4)
def _boot_time(proc: str) -> float:
    raw = _read(proc + "/stat") or b""
    for line in raw.splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    return time.time() - float((_read(proc + "/uptime") or b"0").split()[0])


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _uid_from_status(raw: bytes) -> str:
    i = raw.find(b"\nUid:")
    if i < 0:
        return ""
    return raw[i + 5:raw.find(b"\n", i + 5)].split()[0].decode()


def _netns(proc: str, pid: str) -> str:
    try:
        link = os.readlink(f"{proc}/{pid}/ns/net")  # "net:[4026531840]"
    except OSError:
        return ""
    return link[5:-1] if link.startswith("net:[") else link


def scan_containers(src: Sources, want: set[str] | None = None
                    ) -> Iterable[tuple[str, dict[str, str], bytes]]:
    """(pid, attribution, cgroup bytes) for every process in a container (optionally only `want`).

    Reads only /proc/<pid>/cgroup; processes that vanish mid-scan are skipped.
    """
    proc = src.proc
    for pid in _pids(proc):
        raw = _read(f"{proc}/{pid}/cgroup")
        if not raw:
            continue
        att = src.attribute_raw(raw)
        if att is None or (want is not None and att["container_id"] not in want):
            continue
        yield pid, att, raw


def generate_container_processes(src: Sources, context: Any = None) -> list[dict[str, str]]:
    """container_processes rows: one per process in a container."""
    cons = parse_constraints(context)
    want = equals_values(cons, "container_id")
    proc = src.proc
    boot = _boot_time(proc)
    rows = []
    probe = stdio_sockets.Probe(proc)   # stdio / raw sockets (misuse rules), netns read once
    for pid, att, _raw in scan_containers(src, want):
        base = f"{proc}/{pid}"
        stat = _read(base + "/stat")
        if stat is None:
            continue  # exited since its cgroup was read
        cmd = _read(base + "/cmdline") or b""
        status = _read(base + "/status") or b""
        try:
            exe = os.readlink(base + "/exe")
        except OSError:
            exe = ""
        lpar, rpar = stat.find(b"("), stat.rfind(b")")
        comm = stat[lpar + 1:rpar].decode("utf-8", "backslashreplace")
        fields = stat[rpar + 2:].split()
        try:
            ppid, start = fields[1].decode(), int(boot + int(fields[19]) / _CLK_TCK)
        except (IndexError, ValueError):
            ppid, start = "", 0
        argv = tuple(p.decode("utf-8", "backslashreplace") for p in cmd.rstrip(b"\0").split(b"\0")) if cmd else ()
        cls = src.classify_argv(argv) if argv else {}
        netns = _netns(proc, pid)
        rows.append({
            "pid": pid, "ppid": ppid, "name": comm, "path": exe, "cmdline": format_cmdline(cmd),
            "uid": _uid_from_status(status), "start_time": str(start),
            "container_id": att["container_id"], "runtime": att.get("runtime", ""),
            "pod_uid": att.get("pod_uid", ""), "netns": netns,
            "container_name": "", "image": "", "cgroup_path": att.get("cgroup_path", ""),
            "location_discovery": "1" if cls.get("location_discovery") else "0",
            "indicator": str(cls.get("indicator") or ""), "tool": str(cls.get("tool") or ""),
            **probe.columns(pid, netns),
        })
    _fill_names(src, rows, "container_id")
    return rows


def _fill_names(src: Sources, rows: list[dict[str, str]], key: str,
                name_col: str = "container_name", image_col: str = "image") -> None:
    ids = {r[key] for r in rows if r.get(key)}
    if not ids or src.runtimes is None:
        return
    src.refresh_names(ids)
    known = {c: src.name_image(c) for c in ids}
    for r in rows:
        n, i = known.get(r[key], ("", ""))
        if not r.get(name_col):
            r[name_col] = n
        if not r.get(image_col):
            r[image_col] = i


def generate_container_inventory(src: Sources, context: Any = None) -> list[dict[str, str]]:
    """container_inventory rows: every container the runtime APIs know, plus cgroup-only ones."""
    cons = parse_constraints(context)
    want = equals_values(cons, "id")
    metas: dict[str, ContainerMeta] = {}
    if src.runtimes is not None:
        for m in src.runtimes.inventory():
            if want is None or m.id in want:
                metas.setdefault(m.id, m)
    # Containers the runtimes do not report (other runtimes, runtime down): what /proc tells.
    for pid, att, _raw in scan_containers(src, want):
        cid = att["container_id"]
        meta = metas.get(cid)
        if meta is None:
            name, image = src.name_image(cid)
            metas[cid] = ContainerMeta(id=cid, runtime=att.get("runtime", ""), name=name,
                                       image=image, state="running", pid=int(pid),
                                       source="cgroup")
        elif meta.source == "cgroup" and int(pid) < meta.pid:
            meta.pid = int(pid)
    return [m.to_row() for m in metas.values()]


def generate_buffered(buffer: RingBuffer, context: Any = None,
                      id_column: str = "container_id") -> list[dict[str, str]]:
    """Rows of an event ring buffer that pass the `time` (and container id) constraints."""
    cons = parse_constraints(context)
    pred = time_filter(cons, "time")
    want = equals_values(cons, id_column)
    return [dict(r) for r in buffer.snapshot()
            if pred(r) and (want is None or r.get(id_column) in want)]


def generate_container_events(src: Sources, context: Any = None) -> list[dict[str, str]]:
    return generate_buffered(src.events, context)


def generate_container_process_events(src: Sources, context: Any = None) -> list[dict[str, str]]:
    rows = generate_buffered(src.process_events, context)
    if any(not r.get("container_name") for r in rows):
        _fill_names(src, rows, "container_id")
    return rows


# -- sockets ---------------------------------------------------------------------------------------
def generate_container_sockets(src: Sources, context: Any = None) -> list[dict[str, str]]:
    """container_sockets rows: each container network namespace's sockets, read once per netns
    through one of its processes (osquery_ext.procfs parses /proc/<pid>/net/*)."""
    from osquery_ext import procfs
    cons = parse_constraints(context)
    want = equals_values(cons, "container_id")
    seen: set[tuple[str, str]] = set()
    rows = []
    for pid, att, _raw in scan_containers(src, want):
        cid = att["container_id"]
        ns = _netns(src.proc, pid)
        if not ns or (cid, ns) in seen:
            continue
        socks = procfs.read_proc_net(pid, src.proc)
        if socks is None:
            continue  # exited: another process of the namespace may still answer
        seen.add((cid, ns))
        for r in socks:
            rows.append({"container_id": cid, "pid": pid, "netns": ns, "protocol": r.protocol,
                         "family": str(r.family), "local_address": r.local_address,
                         "local_port": str(r.local_port), "remote_address": r.remote_address,
                         "remote_port": str(r.remote_port), "state": r.state})
    return rows


def generate_container_nat_flows(src: Sources, context: Any = None) -> list[dict[str, str]]:
    """container_nat_flows rows: conntrack flows of container addresses (osquery_ext.conntrack
    fills the buffer), with names filled in from the runtime cache."""
    rows = generate_buffered(src.nat_flows, context)
    if any(r.get("container_id") and not r.get("container_name") for r in rows):
        _fill_names(src, rows, "container_id")
    return rows


GENERATORS: dict[str, Callable[[Sources, Any], list[dict[str, str]]]] = {
    "container_processes": generate_container_processes,
    "container_inventory": generate_container_inventory,
    "container_events": generate_container_events,
    "container_process_events": generate_container_process_events,
    "container_sockets": generate_container_sockets,
    "container_nat_flows": generate_container_nat_flows,
}


# -- plugins -------------------------------------------------------------------------------------
_SOURCES: Sources | None = None
_SOURCES_LOCK = threading.Lock()


def bind(sources: Sources) -> None:
    """Point every table plugin at `sources` (the SDK instantiates plugins without arguments)."""
    global _SOURCES
    with _SOURCES_LOCK:
        _SOURCES = sources


def current_sources() -> Sources:
    global _SOURCES
    with _SOURCES_LOCK:
        if _SOURCES is None:
            _SOURCES = Sources(runtimes=Runtimes())
        return _SOURCES


class _StowawayTable(TablePlugin):
    """Shared plumbing: name/columns from COLUMNS, generate through GENERATORS, never raise."""

    table = ""

    def name(self) -> str:
        return self.table

    def columns(self) -> list[TableColumn]:
        return COLUMNS[self.table]

    def routes(self) -> list[dict[str, str]]:
        """Column routes as the SDK builds them, plus the INDEX option on the constrained
        columns (see INDEXED) so that osqueryd forwards their constraints."""
        return [{"id": "column", "name": c.name, "type": c.type,
                 "op": str(COLUMN_INDEX if c.name in INDEXED[self.table] else 0)}
                for c in self.columns()]

    def generate(self, context: Any) -> list[dict[str, str]]:
        try:
            return GENERATORS[self.table](current_sources(), context)
        except Exception:  # an exception here would surface as a Thrift error in osqueryd
            log.exception("generate %s failed", self.table)
            return []


class ContainerProcessesTable(_StowawayTable):
    table = "container_processes"


class ContainerInventoryTable(_StowawayTable):
    table = "container_inventory"


class ContainerEventsTable(_StowawayTable):
    table = "container_events"


class ContainerProcessEventsTable(_StowawayTable):
    table = "container_process_events"


class ContainerSocketsTable(_StowawayTable):
    table = "container_sockets"


class ContainerNatFlowsTable(_StowawayTable):
    table = "container_nat_flows"


PLUGINS: tuple[type[_StowawayTable], ...] = (
    ContainerProcessesTable, ContainerInventoryTable, ContainerEventsTable,
    ContainerProcessEventsTable, ContainerSocketsTable, ContainerNatFlowsTable,
)
