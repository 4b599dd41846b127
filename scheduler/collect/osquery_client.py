"""Query the Stowaway osquery extension directly over Thrift, on a host without osqueryd.

Design (the simplest robust one): the scheduler *is* the extension manager. An osquery extension
only talks to a manager: it connects to the manager socket, calls `registerExtension`, gets a uuid,
serves osquery's `Extension` service on `<socket>.<uuid>`, and pings the manager every `--interval`
seconds, exiting when the manager is gone. So `DirectOsquery`:

  1. serves a minimal `ExtensionManager` Thrift service on a Unix socket (thread per connection),
  2. optionally starts the extension as osqueryd would (`stowaway-osquery-extension --socket <em>
     --timeout 3 --interval 3`), or waits for one started elsewhere with the same socket,
  3. on registration connects to `<em>.<uuid>` and issues the very call osqueryd makes for a table
     scan: `call("table", <table>, {"action": "generate", "context": <constraints JSON>})`,
  4. returns `OsqueryRow` objects, exactly like the results-log path: snapshot tables
     (container_inventory, container_processes, container_sockets) as action "snapshot", event
     tables (container_events, container_process_events) as action "added" with a per-table cursor
     (`time >= cursor` constraint plus de-duplication of rows at the cursor second), so each event
     is returned once. Cursors can be stored in the StateStore with the derived data.

If the extension dies, the manager notices at the next query (connection refused) and, when it
started the extension itself, restarts it (re-registration gives a new uuid).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from scheduler.collect.osquery_results import KNOWN_TABLES, OsqueryRow

log = logging.getLogger(__name__)

SNAPSHOT_TABLES = ("container_inventory", "container_processes", "container_sockets")
EVENT_TABLES = ("container_events", "container_process_events", "container_nat_flows")
OP_GREATER_EQUAL = 32   # osquery's ConstraintOperator GREATER_THAN_OR_EQUALS
OP_EQUALS = 2


def _thrift() -> tuple[Any, ...]:
    """Import the osquery SDK's generated Thrift code lazily (only this collector needs it)."""
    from osquery.extensions import Extension, ExtensionManager
    from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus, InternalOptionInfo
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport
    return (Extension, ExtensionManager, ExtensionResponse, ExtensionStatus, InternalOptionInfo,
            TBinaryProtocol, TSocket, TTransport)


class OsqueryClientError(RuntimeError):
    """The extension could not be reached or answered with an error status."""


class _ManagerHandler:
    """The manager side of osquery's protocol: registration, ping, options. Nothing else is needed
    by an extension; SQL (`query`) is osqueryd's and answered with an error."""

    def __init__(self, status_cls: Any, response_cls: Any, option_cls: Any) -> None:
        self._status, self._response, self._option = status_cls, response_cls, option_cls
        self.lock = threading.Lock()
        self.registered: dict[int, tuple[Any, dict]] = {}
        self.changed = threading.Condition(self.lock)
        self._next = int(time.time()) % 100000 * 10

    def ping(self) -> Any:
        return self._status(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict) -> Any:
        return self._response(status=self._status(code=1, message="manager has no plugins"), response=[])

    def shutdown(self) -> None:
        return None

    def extensions(self) -> dict:
        with self.lock:
            return {u: info for u, (info, _) in self.registered.items()}

    def options(self) -> dict:
        return {"extensions_timeout": self._option(value="3", default_value="3", type="string"),
                "extensions_interval": self._option(value="3", default_value="3", type="string")}

    def registerExtension(self, info: Any, registry: dict) -> Any:
        with self.changed:
            for uuid, (other, _) in list(self.registered.items()):
                if other.name == info.name:
                    # a restarted extension re-registers before its old uuid timed out
                    del self.registered[uuid]
            self._next += 1
            uuid = self._next
            self.registered[uuid] = (info, registry)
            self.changed.notify_all()
        log.info("extension %r registered as uuid %d (tables: %s)", info.name, uuid,
                 ", ".join(sorted((registry or {}).get("table", {}))))
        return self._status(code=0, message="OK", uuid=uuid)

    def deregisterExtension(self, uuid: int) -> Any:
        with self.changed:
            self.registered.pop(uuid, None)
            self.changed.notify_all()
        return self._status(code=0, message="OK")

    def query(self, sql: str) -> Any:
        return self._response(status=self._status(code=1, message="no SQL engine here"), response=[])

    def getQueryColumns(self, sql: str) -> Any:
        return self.query(sql)


class ManagerServer:
    """A minimal osquery ExtensionManager on a Unix socket, served from a background thread."""

    def __init__(self, path: str | Path) -> None:
        (_Ext, ExtensionManager, Resp, Status, Option, TBinaryProtocol, TSocket,
         TTransport) = _thrift()
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)   # a stale socket from a previous run
        self.handler = _ManagerHandler(Status, Resp, Option)
        self._processor = ExtensionManager.Processor(self.handler)
        self._proto, self._transport = TBinaryProtocol, TTransport
        self._server = TSocket.TServerSocket(unix_socket=self.path)
        self._conns: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="osquery-manager", daemon=True)

    def start(self) -> "ManagerServer":
        self._server.listen()
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client = self._server.accept()
            except Exception:  # noqa: BLE001 - socket closed by stop()
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if client is None:
                continue
            self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: Any) -> None:
        trans = self._transport.TBufferedTransport(client)
        prot = self._proto.TBinaryProtocol(trans)
        try:
            while not self._stop.is_set():
                self._processor.process(prot, prot)
        except Exception:  # noqa: BLE001 - EOF when the extension disconnects
            pass
        finally:
            trans.close()

    def wait_registered(self, name: str = "stowaway", timeout: float = 15.0,
                        newer_than: int = 0) -> int:
        """uuid of the registered extension `name` (newer than a previous uuid, for restarts)."""
        deadline = time.monotonic() + timeout
        with self.handler.changed:
            while True:
                for uuid, (info, _) in self.handler.registered.items():
                    if info.name == name and uuid > newer_than:
                        return uuid
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OsqueryClientError(f"extension {name!r} did not register on {self.path} "
                                             f"within {timeout:.0f}s")
                self.handler.changed.wait(left)

    def stop(self) -> None:
        self._stop.set()
        for c in list(self._conns):
            try:
                c.handle.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        try:
            self._server.handle.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self._server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def extension_command() -> list[str]:
    """How to run the extension: the console script next to this interpreter, else on PATH."""
    script = Path(sys.executable).parent / "stowaway-osquery-extension"
    if script.exists():
        return [str(script)]
    found = shutil.which("stowaway-osquery-extension")
    return [found] if found else [sys.executable, "-m", "osquery_ext.extension"]


class DirectOsquery:
    """Collect the extension's tables without osqueryd. Use as a context manager.

    `socket_path` is the manager socket we serve. With `spawn=True` the extension is started (and
    restarted if it dies) with `extension_args` and `extension_env`; otherwise an extension started
    by something else with `--socket socket_path` is waited for.
    """

    def __init__(self, socket_path: str | Path, host: str | None = None, spawn: bool = True,
                 extension_args: Sequence[str] = (), extension_env: dict[str, str] | None = None,
                 timeout: float = 15.0, call_timeout_ms: int = 20000,
                 extension_name: str = "stowaway") -> None:
        self.socket_path = str(socket_path)
        self.host = host or socket.gethostname()
        self.spawn = spawn
        self.extension_args = list(extension_args)
        self.extension_env = dict(extension_env or {})
        self.timeout = timeout
        self.call_timeout_ms = call_timeout_ms
        self.extension_name = extension_name
        self.manager: ManagerServer | None = None
        self.process: subprocess.Popen | None = None
        self.uuid = 0
        self.restarts = 0
        self._client: Any = None
        self._transport: Any = None
        self.cursors: dict[str, int] = {}          # table -> time (s) of the newest row returned
        self._at_cursor: dict[str, set[str]] = {}  # row keys already returned at that second
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "DirectOsquery":
        self.manager = ManagerServer(self.socket_path).start()
        if self.spawn:
            self._spawn()
        self._connect()
        return self

    def _spawn(self) -> None:
        cmd = extension_command() + ["--socket", self.socket_path, "--timeout", "3",
                                     "--interval", "3"] + self.extension_args
        env = dict(os.environ)
        env.update(self.extension_env)
        log.info("starting extension: %s", " ".join(cmd))
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)

    def _connect(self) -> None:
        assert self.manager is not None
        try:
            self.uuid = self.manager.wait_registered(self.extension_name, self.timeout,
                                                     newer_than=self.uuid)
        except OsqueryClientError:
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise OsqueryClientError(f"extension exited with {self.process.returncode}: "
                                         f"{err.strip()[-500:]}") from None
            raise
        (Extension, *_rest, TBinaryProtocol, TSocket, TTransport) = _thrift()
        path = f"{self.socket_path}.{self.uuid}"
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise OsqueryClientError(f"extension socket {path} did not appear")
            time.sleep(0.02)
        sock = TSocket.TSocket(unix_socket=path)
        sock.setTimeout(self.call_timeout_ms)
        self._transport = TTransport.TBufferedTransport(sock)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self._transport.open()
                break
            except Exception as exc:  # noqa: BLE001 - server socket bound but not yet listening
                last = exc
                time.sleep(0.05)
        else:
            raise OsqueryClientError(f"cannot connect to {path}: {last}")
        self._client = Extension.Client(TBinaryProtocol.TBinaryProtocol(self._transport))

    def _reconnect(self) -> None:
        self._close_client()
        if self.spawn and (self.process is None or self.process.poll() is not None):
            self.restarts += 1
            log.warning("extension is gone (exit %s); restarting it",
                        self.process.returncode if self.process else None)
            self._spawn()
        self._connect()

    def _close_client(self) -> None:
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception:  # noqa: BLE001
                pass
        self._client = self._transport = None

    def close(self) -> None:
        self._close_client()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self.manager is not None:
            self.manager.stop()
            self.manager = None

    def __enter__(self) -> "DirectOsquery":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------------
    def call(self, table: str, constraints: Iterable[dict[str, Any]] = ()) -> list[dict[str, str]]:
        """One table scan, as osqueryd does it; raises OsqueryClientError on an error status."""
        request = {"action": "generate", "context": json.dumps({"constraints": list(constraints)})}
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._client is None:
                        self._reconnect()
                    resp = self._client.call("table", table, request)
                    break
                except OsqueryClientError:
                    raise
                except Exception as exc:  # noqa: BLE001 - transport errors: extension restarted/gone
                    if attempt == 2:
                        raise OsqueryClientError(f"{table}: {exc}") from exc
                    log.warning("%s: extension call failed (%s); reconnecting", table, exc)
                    self._client = None
        if resp.status.code != 0:
            raise OsqueryClientError(f"{table}: {resp.status.message}")
        return [{str(k): str(v) for k, v in row.items()} for row in resp.response]

    def snapshot(self, table: str, constraints: Iterable[dict[str, Any]] = ()) -> list[OsqueryRow]:
        """A snapshot table's rows now (action "snapshot")."""
        now = float(int(time.time()))
        return [OsqueryRow(table, self.host, now, "snapshot", cols, f"direct_{table}")
                for cols in self.call(table, constraints)]

    def events(self, table: str) -> list[OsqueryRow]:
        """New rows of an event table since the last call (action "added"), each returned once."""
        cursor = self.cursors.get(table, 0)
        cons = [{"name": "time", "affinity": "BIGINT",
                 "list": [{"op": OP_GREATER_EQUAL, "expr": str(cursor)}]}] if cursor else []
        rows = self.call(table, cons)
        seen = self._at_cursor.setdefault(table, set())
        now = float(int(time.time()))
        out: list[OsqueryRow] = []
        newest = cursor
        for cols in sorted(rows, key=lambda r: (int(r.get("time") or 0), r.get("time_nano", ""))):
            t = int(cols.get("time") or 0)
            key = json.dumps(cols, sort_keys=True)
            if t < cursor or (t == cursor and key in seen):
                continue
            if t > newest:
                newest, seen = t, set()
            seen.add(key)
            out.append(OsqueryRow(table, self.host, now, "added", cols, f"direct_{table}"))
        self.cursors[table] = newest
        self._at_cursor[table] = seen
        return out

    def collect(self, tables: Iterable[str] = KNOWN_TABLES) -> list[OsqueryRow]:
        """One collection round over `tables` (event tables incremental, others snapshots)."""
        out: list[OsqueryRow] = []
        for table in tables:
            try:
                out.extend(self.events(table) if table in EVENT_TABLES else self.snapshot(table))
            except OsqueryClientError as exc:
                log.warning("osquery direct collection of %s failed: %s", table, exc)
        return out

    # -- cursor persistence -------------------------------------------------------------------------
    def _cursor_key(self) -> str:
        return f"osquery_direct_cursors:{self.socket_path}"

    def save_cursors(self, store: Any, conn: Any = None) -> None:
        """Store cursors in the StateStore (pass the transaction that holds the derived rows)."""
        data = {t: {"time": c, "seen": sorted(self._at_cursor.get(t, ()))} for t, c in self.cursors.items()}
        store.set_kv(self._cursor_key(), json.dumps(data), conn=conn)

    def load_cursors(self, store: Any) -> None:
        raw = store.get_kv(self._cursor_key())
        if not raw:
            return
        for table, d in json.loads(raw).items():
            self.cursors[table] = int(d.get("time", 0))
            self._at_cursor[table] = set(d.get("seen", []))


# ---- module-level API for the daemon (`osquery_mode = "thrift"`) ---------------------------------
_clients: dict[str, DirectOsquery] = {}
_clients_lock = threading.Lock()


def poll_rows(socket_path: str | Path, host: str | None = None, store: Any = None,
              spawn: bool = True, extension_args: Sequence[str] = (),
              extension_env: dict[str, str] | None = None,
              tables: Iterable[str] = KNOWN_TABLES) -> list[OsqueryRow]:
    """One collection round through a long-lived DirectOsquery per manager socket.

    The first call starts the manager (and the extension when `spawn`) and, when `store` is given,
    loads the event cursors saved by `save_cursors`, so a daemon restart does not return old events
    again. Call `save_cursors(store, conn)` in the transaction that commits what the rows produced.
    """
    key = str(socket_path)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = DirectOsquery(socket_path, host=host, spawn=spawn, extension_args=extension_args,
                                   extension_env=extension_env)
            if store is not None:
                client.load_cursors(store)
            client.start()
            _clients[key] = client
    return client.collect(tables)


def save_cursors(store: Any, conn: Any = None) -> None:
    """Persist the event cursors of every active client (inside the caller's transaction)."""
    with _clients_lock:
        for client in _clients.values():
            client.save_cursors(store, conn)


def close_all() -> None:
    """Stop every manager and the extensions started for them (daemon shutdown)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
