"""`stowaway-osquery-extension`: the process osqueryd starts (autoload) or osqueryi loads.

osqueryd starts an extension as `<binary> --socket <extensions_socket> --timeout <s> --interval <s>
[--verbose]`. The extension must then (1) connect to the manager socket, waiting up to `--timeout`
seconds because osqueryd may still be creating it, (2) register its tables, (3) serve the Thrift
`Extension` service (ping / call / shutdown) on `<socket>.<uuid>`, and (4) exit when osqueryd goes
away, which it notices by pinging the manager every `--interval` seconds.

Unlike the SDK's `start_extension`, which exits 0 silently when it cannot connect, this exits with
status 1 and one clear line on stderr, so a broken rollout shows up in osqueryd's and systemd's
logs. Unknown extra flags (newer osqueryd versions add some) are ignored with a debug message.
Stowaway's own settings come from flags or the environment (`STOWAWAY_*`), so an autoload wrapper
can set them without osqueryd knowing about them.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Sequence

from thrift.protocol import TBinaryProtocol
from thrift.server import TServer
from thrift.transport import TSocket, TTransport

from osquery import ExtensionManager
from osquery.extensions import Extension
from osquery.extensions import ExtensionManager as EMService
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus, InternalExtensionInfo

from osquery_ext import events as events_mod
from osquery_ext import tables
from osquery_ext.runtimes import DEFAULT_SOCKETS, DEFAULT_TIMEOUT, Runtimes, parse_socket_spec

log = logging.getLogger("stowaway.extension")

EXTENSION_NAME = "stowaway"
EXTENSION_VERSION = "0.1.0"
SDK_VERSION = "5.0.0"
MIN_SDK_VERSION = "1.8.0"
DEFAULT_MANAGER_SOCKET = "/var/osquery/osquery.em"
#: Upper bound on the wait for the exec capture before registering; above the capture's own probe
#: timeout (3 s), under osqueryd's recommended --extensions_timeout (10 s).
DEFAULT_CAPTURE_WAIT = 5.0


class ExtensionFailure(Exception):
    """Registration could not happen; the message is what the operator reads on stderr."""


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="stowaway-osquery-extension",
        description="Stowaway osquery extension: container_processes, container_inventory, "
                    "container_events, container_process_events, container_sockets.")
    g = p.add_argument_group("osquery (passed by osqueryd / osqueryi)")
    g.add_argument("--socket", default=DEFAULT_MANAGER_SOCKET,
                   help="osquery extension manager socket (default %(default)s)")
    g.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the manager socket (default %(default)s)")
    g.add_argument("--interval", type=float, default=3.0,
                   help="seconds between pings of the manager (default %(default)s)")
    g.add_argument("--verbose", action="store_true", help="log info messages")
    s = p.add_argument_group("stowaway (flags or STOWAWAY_* environment variables)")
    s.add_argument("--runtime-sockets", default=env("STOWAWAY_RUNTIME_SOCKETS", ""),
                   help="comma list name=URL of Engine-API sockets, 'none' for no runtime API "
                        "(env STOWAWAY_RUNTIME_SOCKETS; default "
                        + ",".join(f"{k}={v}" for k, v in DEFAULT_SOCKETS.items()) + ")")
    s.add_argument("--runtime-timeout", type=float,
                   default=float(env("STOWAWAY_RUNTIME_TIMEOUT", DEFAULT_TIMEOUT)),
                   help="seconds any runtime API call may take (env STOWAWAY_RUNTIME_TIMEOUT, "
                        "default %(default)s)")
    s.add_argument("--event-buffer", type=int, default=int(env("STOWAWAY_EVENT_BUFFER", 10000)),
                   help="container_events ring buffer size (default %(default)s)")
    s.add_argument("--process-event-buffer", type=int,
                   default=int(env("STOWAWAY_PROCESS_EVENT_BUFFER", 50000)),
                   help="container_process_events ring buffer size (default %(default)s)")
    s.add_argument("--no-proc-connector", action="store_true",
                   default=env("STOWAWAY_NO_PROC_CONNECTOR", "") not in ("", "0"),
                   help="do not subscribe to the kernel process-event connector")
    s.add_argument("--no-conntrack", action="store_true",
                   default=env("STOWAWAY_NO_CONNTRACK", "") not in ("", "0"),
                   help="do not read the host's connection tracking (container_nat_flows)")
    s.add_argument("--capture-wait", type=float,
                   default=float(env("STOWAWAY_CAPTURE_WAIT", DEFAULT_CAPTURE_WAIT)),
                   help="seconds to wait for the exec capture to prove it works before the "
                        "tables are registered anyway (env STOWAWAY_CAPTURE_WAIT, default "
                        "%(default)s)")
    s.add_argument("--proc", default=env("STOWAWAY_PROC", "/proc"), help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args, unknown = build_parser().parse_known_args(argv)
    args.unknown = unknown
    return args


def build_sources(args: argparse.Namespace) -> tables.Sources:
    """Runtime clients and buffers from the settings (no I/O yet)."""
    spec = args.runtime_sockets.strip()
    sockets = DEFAULT_SOCKETS if not spec else parse_socket_spec(spec)
    runtimes = Runtimes(sockets, timeout=args.runtime_timeout)
    return tables.Sources(proc=args.proc, runtimes=runtimes,
                          events=events_mod.RingBuffer(args.event_buffer),
                          process_events=events_mod.RingBuffer(args.process_event_buffer))


def start_background(src: tables.Sources, args: argparse.Namespace) -> list[Any]:
    """Runtime event listeners and the process-event connector (each degrades on its own)."""
    workers: list[Any] = []
    if src.runtimes is not None:
        workers.extend(events_mod.start_listeners(src.runtimes, src.events))
    if not args.no_proc_connector:
        from osquery_ext.proc_connector import ProcConnector

        def lookup(cid: str) -> tuple[str, str] | None:
            name, image = src.name_image(cid)
            return (name, image) if name or image else None

        pc = ProcConnector(src.process_events, src.classify_list, lookup)
        pc.start()
        src.connector = pc
        workers.append(pc)
    if not args.no_conntrack:
        from osquery_ext.conntrack import start_capture
        workers.append(start_capture(src))
    return workers


def await_exec_capture(connector: Any, timeout_s: float) -> str:
    """Wait (bounded) until the exec capture has proven it receives exec events.

    Why before registration: osqueryd may query the tables, and a one-shot container may start,
    the moment the registration is answered; an exec capture still starting then misses that
    container's execs for good. Returns the capture's status ("running", "unavailable", ...),
    "off" without a connector, or "unverified" when `timeout_s` passed first (then the tables are
    registered anyway, with one warning, as when the connector is unavailable)."""
    if connector is None:
        return "off"
    t0 = time.monotonic()
    if not connector.wait_ready(timeout_s):
        log.warning("exec capture not verified within %gs; registering anyway: "
                    "container_process_events may miss execs until it runs", timeout_s)
        return "unverified"
    if connector.status == "running":
        log.info("exec capture verified in %.0f ms (saw its own probe exec); registering",
                 (time.monotonic() - t0) * 1000)
    return str(connector.status)


def manager_client(path: str, timeout_s: float) -> tuple[Any, TTransport.TTransportBase]:
    """A Thrift client of osquery's ExtensionManager service on `path` (not yet opened)."""
    sock = TSocket.TSocket(unix_socket=path)
    sock.setTimeout(int(max(timeout_s, 1.0) * 1000))
    transport = TTransport.TBufferedTransport(sock)
    protocol = TBinaryProtocol.TBinaryProtocol(transport)
    return EMService.Client(protocol), transport


def connect(path: str, timeout_s: float) -> tuple[Any, TTransport.TTransportBase]:
    """Open the manager socket, retrying until `timeout_s` (osqueryd may still be starting)."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    last = "no attempt"
    while True:
        client, transport = manager_client(path, timeout_s)
        try:
            transport.open()
            return client, transport
        except TTransport.TTransportException as exc:
            last = "socket absent" if not os.path.exists(path) else str(exc)
        if time.monotonic() >= deadline:
            raise ExtensionFailure(
                f"cannot connect to the osquery extension manager at {path} "
                f"after {timeout_s:g}s ({last}); is osqueryd/osqueryi running with "
                f"--extensions_socket={path}?")
        time.sleep(0.2)


def register(client: Any) -> int:
    """Register the five tables; returns the uuid the manager assigned."""
    manager = ExtensionManager()
    for plugin in tables.PLUGINS:
        manager.add_plugin(plugin)
    info = InternalExtensionInfo(name=EXTENSION_NAME, version=EXTENSION_VERSION,
                                 sdk_version=SDK_VERSION, min_sdk_version=MIN_SDK_VERSION)
    try:
        status = client.registerExtension(info=info, registry=manager.registry())
    except (TTransport.TTransportException, OSError, EOFError) as exc:
        raise ExtensionFailure(f"the osquery extension manager dropped the registration: {exc}")
    if status.code != 0:
        raise ExtensionFailure(f"osquery refused to register extension '{EXTENSION_NAME}': "
                               f"{status.message} (code {status.code})")
    manager.uuid = status.uuid
    return int(status.uuid)


class Handler(Extension.Iface):
    """The Extension service osqueryd calls on `<socket>.<uuid>`: ping, call, shutdown.

    Routes calls through the SDK's ExtensionManager (where the plugins are registered) and turns
    any exception into an error status, so osqueryd gets an answer instead of a dropped socket.
    """

    def __init__(self, on_shutdown: Any) -> None:
        self.on_shutdown = on_shutdown

    def ping(self) -> ExtensionStatus:
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict[str, str]) -> ExtensionResponse:
        try:
            if request.get("action") not in ("generate", "columns"):
                return ExtensionResponse(status=ExtensionStatus(
                    code=1, message=f"unknown action {request.get('action')!r}"), response=[])
            if "context" in request and not (request.get("context") or "").strip():
                request = {k: v for k, v in request.items() if k != "context"}
            return ExtensionManager().call(registry, item, request)
        except Exception as exc:  # never kill the server thread on one bad request
            log.exception("call %s/%s failed", registry, item)
            return ExtensionResponse(status=ExtensionStatus(code=1, message=str(exc)),
                                     response=[])

    def shutdown(self) -> None:
        log.info("osquery asked the extension to shut down")
        def later() -> None:
            time.sleep(0.2)  # let the reply to this call go out first
            self.on_shutdown(0, "shutdown requested by osquery")
        threading.Thread(target=later, daemon=True).start()


class ExtensionProcess:
    """Lifecycle of one running extension process (kept in one object for clean shutdown)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers: list[Any] = []
        self.sources: tables.Sources | None = None
        self.server_path = ""
        self._exiting = threading.Lock()

    def _stop_workers(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception:
                pass

    def exit(self, code: int, why: str) -> None:
        """Stop listeners, remove our socket and leave (os._exit: the server blocks main)."""
        if not self._exiting.acquire(blocking=False):
            return
        log.info("stowaway extension exiting: %s", why)
        self._stop_workers()
        if self.server_path:
            try:
                os.unlink(self.server_path)
            except OSError:
                pass
        logging.shutdown()
        os._exit(code)

    def watch(self, client: Any) -> None:
        """Ping the manager every --interval; when it stops answering, osqueryd is gone."""
        interval = max(self.args.interval, 0.2)
        while True:
            time.sleep(interval)
            try:
                status = client.ping()
                if status.code != 0:
                    self.exit(0, f"manager ping returned {status.code}: {status.message}")
            except Exception as exc:
                self.exit(0, f"osquery extension manager went away ({exc or type(exc).__name__})")

    def run(self) -> int:
        args = self.args
        if args.unknown:
            log.debug("ignoring flags not meant for this extension: %s", " ".join(args.unknown))
        self.sources = build_sources(args)
        tables.bind(self.sources)
        # Listeners and the exec capture first (their start-up overlaps the wait for the
        # manager), and the capture verified, so that no exec is missed once osqueryd can query.
        self.workers = start_background(self.sources, args)
        try:
            client, _transport = connect(args.socket, args.timeout)
            await_exec_capture(self.sources.connector, args.capture_wait)
            uuid = register(client)
        except ExtensionFailure:
            self._stop_workers()
            raise
        self.server_path = f"{args.socket}.{uuid}"
        log.info("registered as %s (uuid %d), serving %s", EXTENSION_NAME, uuid, self.server_path)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, f: self.exit(0, f"signal {s}"))
        threading.Thread(target=self.watch, args=(client,), name="manager-watch",
                         daemon=True).start()
        processor = Extension.Processor(Handler(self.exit))
        server_sock = TSocket.TServerSocket(unix_socket=self.server_path)
        server = TServer.TThreadedServer(processor, server_sock,
                                         TTransport.TBufferedTransportFactory(),
                                         TBinaryProtocol.TBinaryProtocolFactory(), daemon=True)
        server.serve()
        return 0


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="stowaway-osquery-extension %(levelname)s %(name)s: %(message)s")
    logging.getLogger("thrift").setLevel(logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    ext = ExtensionProcess(args)
    try:
        return ext.run()
    except ExtensionFailure as exc:
        print(f"stowaway-osquery-extension: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
