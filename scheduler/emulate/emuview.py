"""What the detector saw during an emulation: the extension's five tables, read while the scenario
runs, written out as osqueryd results lines.

Two sources, one interface (`rows(table)`):
* `InProcessTables`: the extension's own code (runtime event listeners, the kernel process-event
  connector, the table generate functions) run inside the emulator process. This needs root, like
  the extension, and no osqueryd.
* `ThriftTables`: a running osqueryd with the extension loaded, queried through its socket
  (`--osquery-socket`), i.e. exactly what the deployed pack would see.

`HostView` polls the source about once a second, as an osquery schedule would, and turns each poll
into differential result lines (added / removed rows of the polled tables, new rows of the event
tables), keeping only rows of the emulation's own containers: other containers on the same host are
not part of the recording.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

POLLED_TABLES = ("container_processes", "container_inventory", "container_sockets")
EVENT_TABLES = ("container_events", "container_process_events")
ALL_TABLES = POLLED_TABLES + EVENT_TABLES
ID_COLUMN = {"container_inventory": "id"}


class SourceUnavailable(RuntimeError):
    """The extension (in-process or over Thrift) cannot be used; the message says why."""


class InProcessTables:
    """The extension's listeners and tables, run in this process."""

    kind = "extension in-process"

    def __init__(self, engine: str, url: str) -> None:
        try:
            from osquery_ext import extension, tables
        except ImportError as exc:
            raise SourceUnavailable(f"osquery_ext cannot be imported: {exc}") from exc
        self._tables = tables
        # The extension's own wiring (same buffers, listeners and connector as under osqueryd).
        args = extension.parse_args(["--runtime-sockets", f"{engine}={url}"])
        self.sources = extension.build_sources(args)
        self.runtimes = self.sources.runtimes
        self.workers = extension.start_background(self.sources, args)
        self.notes: list[str] = []
        connector = self.sources.connector
        if connector is not None:
            connector.ready.wait(10)
            if connector.status != "running":
                self.notes.append(f"process-event connector {connector.status}: {connector.reason}")
        listeners = [w for w in self.workers if hasattr(w, "connected")]
        deadline = time.time() + 5
        while time.time() < deadline and not all(l.connected.is_set() for l in listeners):
            time.sleep(0.05)
        if not all(l.connected.is_set() for l in listeners):
            self.notes.append("runtime event stream not connected")

    def rows(self, table: str, context: Any = None) -> list[dict[str, str]]:
        return self._tables.GENERATORS[table](self.sources, context)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(3)
        try:
            self.runtimes.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


class ThriftTables:
    """The tables over osquery's Thrift interface.

    With a real osqueryd the manager socket runs SQL (`SELECT * FROM <table> WHERE time >= N`),
    i.e. exactly what the deployed pack sees. A manager that cannot run SQL (a bare extension
    manager, as in the tests) is handled by calling the registered `stowaway` extension's own
    socket (`<socket>.<uuid>`) the way osqueryd does for a table scan: call("table", name,
    {"action": "generate", "context": ...}).
    """

    kind = "osqueryd over Thrift"

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        try:
            from osquery import ExtensionClient
        except ImportError as exc:
            raise SourceUnavailable(f"osquery SDK missing: {exc}") from exc
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self.client = ExtensionClient(path=socket_path)
        self._ext_transport: Any = None
        try:
            self.client.open(timeout=timeout)
            self.em = self.client.extension_manager_client()
            probe = self.em.query("SELECT name FROM osquery_registry WHERE registry = 'table'")
        except Exception as exc:  # noqa: BLE001 - thrift raises its own types
            raise SourceUnavailable(f"cannot query osquery socket {socket_path}: {exc}") from exc
        if probe.status.code == 0:
            have = {r.get("name") for r in probe.response}
            missing = [t for t in ALL_TABLES if t not in have]
            if missing:
                raise SourceUnavailable(f"osqueryd at {socket_path} has no table(s) {', '.join(missing)}: "
                                        "is the stowaway extension loaded?")
            self.mode = "sql"
        else:
            self._open_extension(socket_path, timeout, probe.status.message)
            self.mode = "table calls"
            self.kind = "stowaway extension over Thrift (table calls)"

    def _open_extension(self, socket_path: str, timeout: float, why: str) -> None:
        from osquery.extensions import Extension
        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport

        try:
            exts = self.em.extensions()
        except Exception as exc:  # noqa: BLE001
            raise SourceUnavailable(f"{socket_path}: no SQL ({why}) and no extension list: {exc}") from exc
        uuid = next((u for u, info in exts.items() if getattr(info, "name", "") == "stowaway"), None)
        if uuid is None:
            raise SourceUnavailable(f"{socket_path}: no SQL ({why}) and no 'stowaway' extension registered")
        sock = TSocket.TSocket(unix_socket=f"{socket_path}.{uuid}")
        sock.setTimeout(int(timeout * 4000))
        self._ext_transport = TTransport.TBufferedTransport(sock)
        self._ext_transport.open()
        self.ext = Extension.Client(TBinaryProtocol.TBinaryProtocol(self._ext_transport))

    def rows(self, table: str, context: Any = None) -> list[dict[str, str]]:
        since = context.get("since") if isinstance(context, dict) else None
        with self._lock:
            if self.mode == "sql":
                sql = f"SELECT * FROM {table}"
                if since and table in EVENT_TABLES:
                    sql += f" WHERE time >= {int(since)}"
                res = self.em.query(sql)
            else:
                ctx = {"constraints": (context or {}).get("constraints", [])} if table in EVENT_TABLES else {}
                res = self.ext.call("table", table, {"action": "generate", "context": json.dumps(ctx)})
        if res.status.code != 0:
            raise RuntimeError(f"osquery: {res.status.message}")
        return [dict(r) for r in res.response]

    def close(self) -> None:
        for t in (self._ext_transport, self.client):
            try:
                if t is not None:
                    t.close()
            except Exception:  # noqa: BLE001
                pass


def since_context(since: float) -> dict[str, Any]:
    """An osquery-style query context meaning `WHERE time >= since` (what the pack query does)."""
    return {"since": int(since),
            "constraints": [{"name": "time", "affinity": "BIGINT",
                             "list": [{"op": 32, "expr": str(int(since))}]}]}


def row_key(row: dict[str, str]) -> str:
    return json.dumps(row, sort_keys=True)


class HostView(threading.Thread):
    """Polls a table source and keeps, per table, the differential history of our containers' rows.

    `wanted(container_id, name)` says whether a row belongs to the emulation (its containers' ids are
    learnt as they are created; names carry the run prefix, which also covers a container whose id
    we never got back because its request was interrupted).
    """

    def __init__(self, source: Any, host: str, wanted: Callable[[str, str], bool],
                 interval: float = 1.0) -> None:
        super().__init__(name="emulate-hostview", daemon=True)
        self.source = source
        self.host = host or socket.gethostname()
        self.wanted = wanted
        self.interval = interval
        self.since = time.time() - 1
        self.lines: list[tuple[float, str, str, str, dict[str, str]]] = []  # (t, table, action, key, row)
        self._state: dict[str, dict[str, dict[str, str]]] = {t: {} for t in ALL_TABLES}
        self._seen_events: dict[str, set[str]] = {t: set() for t in EVENT_TABLES}
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.polls = 0

    # -- polling --------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.poll()
            self._stop_evt.wait(self.interval)

    def poll(self) -> None:
        now = time.time()
        for table in ALL_TABLES:
            try:
                ctx = since_context(self.since) if table in EVENT_TABLES else None
                rows = self.source.rows(table, ctx)
            except Exception as exc:  # noqa: BLE001 - a failing table must not stop the others
                msg = f"{table}: {exc}"
                if msg not in self.errors:
                    self.errors.append(msg)
                    log.warning("host view: %s", msg)
                continue
            mine = [r for r in rows if self._is_ours(table, r)]
            with self._lock:
                if table in EVENT_TABLES:
                    for r in mine:
                        k = row_key(r)
                        if k not in self._seen_events[table]:
                            self._seen_events[table].add(k)
                            self.lines.append((now, table, "added", k, r))
                else:
                    cur = {row_key(r): r for r in mine}
                    prev = self._state[table]
                    for k in prev.keys() - cur.keys():
                        self.lines.append((now, table, "removed", k, prev[k]))
                    for k in cur.keys() - prev.keys():
                        self.lines.append((now, table, "added", k, cur[k]))
                    self._state[table] = cur
        self.polls += 1

    def _is_ours(self, table: str, row: dict[str, str]) -> bool:
        cid = row.get(ID_COLUMN.get(table, "container_id"), "")
        name = row.get("name" if table == "container_inventory" else "container_name", "") or ""
        if table == "container_events":
            name = row.get("name", "") or ""
        return self.wanted(cid, name)

    def stop(self) -> None:
        """Stop polling after one last poll (so events of the last second are in)."""
        self._stop_evt.set()
        if self.is_alive():
            self.join(10)
        self.poll()

    # -- views ----------------------------------------------------------------------------------
    def rows(self, table: str, start: float = 0.0, end: float = float("inf"),
             ids: set[str] | None = None) -> list[dict[str, str]]:
        """Every row of `table` added while polling in [start, end] (event tables: by event time)."""
        out = []
        idcol = ID_COLUMN.get(table, "container_id")
        with self._lock:
            for t, tb, action, _k, r in self.lines:
                if tb != table or action != "added":
                    continue
                when = _event_ts(r) if table in EVENT_TABLES else t
                if when is None or not (start <= when <= end):
                    continue
                if ids is not None and r.get(idcol) not in ids:
                    continue
                out.append(r)
        return out

    def result_lines(self, start: float = 0.0, end: float = float("inf"),
                     ids: set[str] | None = None) -> list[str]:
        """osqueryd filesystem-logger lines (differential) for a time window and container set."""
        from scheduler.collect import osquery_results as oqr

        out = []
        with self._lock:
            for t, table, action, _k, r in self.lines:
                if not (start <= t <= end):
                    continue
                if ids is not None and r.get(ID_COLUMN.get(table, "container_id")) not in ids:
                    continue
                out.append(oqr.differential_line(table, self.host, t, action, r))
        return out


def _event_ts(row: dict[str, str]) -> float | None:
    try:
        if row.get("time_nano"):
            return int(row["time_nano"]) / 1e9
        return float(row.get("time", ""))
    except (TypeError, ValueError):
        return None
