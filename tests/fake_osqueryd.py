"""A stand-in for osqueryd's extension manager, speaking osquery's real Thrift interface.

Why: the extension must behave exactly as osqueryd expects (connect, register, answer ping and
call on `<socket>.<uuid>`, exit when the manager goes away), and osqueryd itself is not installed
on CI machines. This serves the `osquery.extensions.ExtensionManager` service from the SDK's
generated code on a Unix socket, records registrations, and gives a client to the extension's own
socket, which is what osqueryd does when a query touches an extension table.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from thrift.protocol import TBinaryProtocol
from thrift.server import TServer
from thrift.transport import TSocket, TTransport

from osquery.extensions import Extension, ExtensionManager
from osquery.extensions.ttypes import (ExtensionResponse, ExtensionStatus, InternalExtensionInfo,
                                       InternalOptionInfo)


class ManagerHandler(ExtensionManager.Iface):
    """What osqueryd's manager does with an extension: hand out uuids, remember registries."""

    def __init__(self) -> None:
        self.registered: dict[int, tuple[InternalExtensionInfo, dict]] = {}
        self.deregistered: list[int] = []
        self.pings = 0
        self._next = 1000
        self.lock = threading.Lock()
        self.event = threading.Event()
        #: called with the uuid inside registerExtension, before the reply goes out: the first
        #: moment osqueryd could route a query to the extension's tables
        self.on_register: Any = None

    # Extension service methods (the manager is also an extension)
    def ping(self) -> ExtensionStatus:
        with self.lock:
            self.pings += 1
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict) -> ExtensionResponse:
        return ExtensionResponse(status=ExtensionStatus(code=1, message="not here"), response=[])

    def shutdown(self) -> None:
        return None

    # ExtensionManager service methods
    def extensions(self) -> dict:
        with self.lock:
            return {u: info for u, (info, _r) in self.registered.items()}

    def options(self) -> dict:
        return {"extensions_timeout": InternalOptionInfo(value="3", default_value="3",
                                                         type="string")}

    def registerExtension(self, info: InternalExtensionInfo, registry: dict) -> ExtensionStatus:
        with self.lock:
            for other, _r in self.registered.values():
                if other.name == info.name:
                    return ExtensionStatus(code=1, message="Duplicate extension registered")
            self._next += 1
            uuid = self._next
            self.registered[uuid] = (info, registry)
        if self.on_register is not None:
            self.on_register(uuid)
        self.event.set()
        return ExtensionStatus(code=0, message="OK", uuid=uuid)

    def deregisterExtension(self, uuid: int) -> ExtensionStatus:
        with self.lock:
            self.registered.pop(uuid, None)
            self.deregistered.append(uuid)
        return ExtensionStatus(code=0, message="OK")

    def query(self, sql: str) -> ExtensionResponse:
        return ExtensionResponse(status=ExtensionStatus(code=1, message="no SQL here"), response=[])

    def getQueryColumns(self, sql: str) -> ExtensionResponse:
        return ExtensionResponse(status=ExtensionStatus(code=1, message="no SQL here"), response=[])


class FakeOsqueryd:
    """The manager server on `<dir>/osquery.em`, in a background thread; stop() is osqueryd
    going away: the listening socket and every open connection close, the socket file goes."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "osquery.em")
        self.handler = ManagerHandler()
        self.processor = ExtensionManager.Processor(self.handler)
        self._sock = TSocket.TServerSocket(unix_socket=self.path)
        self._clients: list[Any] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client = self._sock.accept()
            except Exception:
                if self._stopped.is_set():
                    return
                continue
            self._clients.append(client)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: Any) -> None:
        trans = TTransport.TBufferedTransport(client)
        prot = TBinaryProtocol.TBinaryProtocol(trans)
        try:
            while not self._stopped.is_set():
                self.processor.process(prot, prot)
        except Exception:  # EOF or the stop() shutdown
            pass
        finally:
            trans.close()

    def start(self) -> "FakeOsqueryd":
        self._sock.listen()
        self._thread.start()
        return self

    def stop(self) -> None:
        """osqueryd goes away."""
        import socket as _s
        self._stopped.set()
        for c in list(self._clients):
            try:
                c.handle.shutdown(_s.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        try:
            self._sock.handle.shutdown(_s.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def wait_registered(self, timeout: float = 15.0) -> tuple[int, InternalExtensionInfo, dict]:
        if not self.handler.event.wait(timeout):
            raise AssertionError("extension did not register")
        with self.handler.lock:
            uuid, (info, reg) = next(iter(self.handler.registered.items()))
        return uuid, info, reg

    def client(self, uuid: int, timeout_ms: int = 20000) -> "ExtClient":
        return ExtClient(f"{self.path}.{uuid}", timeout_ms)


class ExtClient:
    """A client of the extension's own socket, as osqueryd uses it for table calls."""

    def __init__(self, path: str, timeout_ms: int = 20000) -> None:
        # The extension registers, then serves: its socket file appears at bind(), a moment
        # before listen(), and a connect in between is refused. Like osqueryd, retry the connect
        # (not just wait for the file) until the deadline; the last failure is raised.
        deadline = time.monotonic() + 10
        while True:
            sock = TSocket.TSocket(unix_socket=path)
            sock.setTimeout(timeout_ms)
            self.transport = TTransport.TBufferedTransport(sock)
            try:
                self.transport.open()
                break
            except TTransport.TTransportException:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self.client = Extension.Client(TBinaryProtocol.TBinaryProtocol(self.transport))

    def columns(self, table: str) -> ExtensionResponse:
        return self.client.call("table", table, {"action": "columns"})

    def generate(self, table: str, constraints: list[dict] | None = None) -> ExtensionResponse:
        ctx = {"constraints": constraints or []}
        return self.client.call("table", table, {"action": "generate", "context": json.dumps(ctx)})

    def close(self) -> None:
        self.transport.close()


def extension_command() -> list[str]:
    """The console script as installed in the venv (what an autoload wrapper runs)."""
    script = Path(sys.executable).parent / "stowaway-osquery-extension"
    if script.exists():
        return [str(script)]
    found = shutil.which("stowaway-osquery-extension")
    return [found] if found else [sys.executable, "-m", "osquery_ext.extension"]


def start_extension(socket_path: str, extra: list[str] | None = None,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the extension exactly as osqueryd does (plus optional Stowaway flags)."""
    cmd = extension_command() + ["--socket", socket_path, "--timeout", "3", "--interval", "3"]
    cmd += extra or []
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                            cwd=str(Path(__file__).resolve().parents[1]))


def constraint(name: str, op: int, expr: Any, affinity: str = "BIGINT") -> dict:
    """One column's constraint entry in osquery's context JSON."""
    return {"name": name, "affinity": affinity, "list": [{"op": op, "expr": str(expr)}]}
