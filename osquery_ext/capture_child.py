"""Supervision of the extension's capture child processes (exec events, conntrack flows).

Why one module: both captures race something short-lived (a process's exit, a container's exit) and
so run in a small single-threaded interpreter of their own (`python -m osquery_ext.<module>`)
rather than a thread that waits for the GIL. The extension side of both is the same: a daemon
thread starts the child, reads its JSON lines, marks `ready` on the child's first status
("running" / "unavailable"), restarts a child that dies (with a growing pause, at most
`max_restarts` times) and ends it on `stop()`. That supervision lives here once; the subclasses
(`proc_connector.ProcConnector`, `conntrack.ConntrackReader`) keep only what a line means to them.

Stdlib only, like everything osquery_ext imports: the extension never pulls in scheduler or model.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, NoReturn


class CaptureChild(threading.Thread):
    """A daemon thread that runs one capture child and hands each JSON line to a hook.

    Subclasses implement `is_record` / `on_record` / `on_status` (what a line means) and
    `give_up` (how "unavailable" is recorded and logged), and set `state_attr` (the name of their
    public state attribute, `status` or `mode`, kept for the extension and tables), `label` (the
    restart log's wording) and `log` (their module's logger, so records keep their old name).
    """

    #: Name of the public attribute holding starting / running / unavailable / stopped / ...
    state_attr = "status"
    #: The restart warning's subject, e.g. "conntrack capture".
    label = "capture"
    #: The subclass module's logger; restart warnings go through it.
    log = logging.getLogger(__name__)

    def __init__(self, name: str, module: str, command: list[str] | None,
                 max_restarts: int) -> None:
        super().__init__(name=name, daemon=True)
        self.command = command or [sys.executable, "-m", module]
        self.max_restarts = max_restarts
        self.reason = ""
        self.ready = threading.Event()
        self._child: subprocess.Popen | None = None
        self._stop_evt = threading.Event()

    # -- hooks --------------------------------------------------------------------------------
    def give_up(self, reason: str) -> None:
        """Record (and log once) that the capture is unavailable; must set `ready`."""
        raise NotImplementedError

    def is_record(self, obj: dict[str, Any]) -> bool:
        """True when a decoded line is a record (an exec, a flow row) rather than a status."""
        raise NotImplementedError

    def on_record(self, obj: dict[str, Any]) -> None:
        """Handle one record line."""
        raise NotImplementedError

    def on_status(self, obj: dict[str, Any]) -> None:
        """Handle one status line (it has a "status" key)."""
        raise NotImplementedError

    # -- supervision --------------------------------------------------------------------------
    def state(self) -> str:
        """The current public state, read through `state_attr`."""
        return str(getattr(self, self.state_attr))

    def run(self) -> None:
        """Start the child, consume it, and restart it when it exits, until stopped, given up
        (the child said "unavailable") or it died more than `max_restarts` times."""
        restarts = 0
        while not self._stop_evt.is_set():
            try:
                self._child = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                               stdin=subprocess.DEVNULL, text=True, bufsize=1)
            except OSError as exc:
                self.give_up(f"cannot start the capture process: {exc}")
                return
            self._consume(self._child)
            rc = self._child.wait()
            if self._stop_evt.is_set() or self.state() == "unavailable":
                break
            restarts += 1
            if restarts > self.max_restarts:
                self.give_up(f"capture process keeps exiting (status {rc})")
                break
            self.log.warning("%s exited (status %s); restarting", self.label, rc)
            self._stop_evt.wait(min(5.0, 0.5 * restarts))
        if self.state() != "unavailable":
            setattr(self, self.state_attr, "stopped")

    def _consume(self, child: subprocess.Popen) -> None:
        """Dispatch each JSON line of the child's stdout until it closes; other lines are
        skipped (a stray print must not stop the stream)."""
        assert child.stdout is not None
        for line in child.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if self.is_record(obj):
                self.on_record(obj)
            elif "status" in obj:
                self.on_status(obj)

    def stop(self) -> None:
        """End the supervision and the child: SIGTERM, then SIGKILL after two seconds."""
        self._stop_evt.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(2)
            except subprocess.TimeoutExpired:
                child.kill()


def child_main(capture: Callable[[], int]) -> NoReturn:
    """The `python -m osquery_ext.<module>` entry of a capture child: exit with the capture's
    status, but quietly (status 0) on SIGTERM (the supervisor's `stop()`), Ctrl-C, or a closed
    stdout (the extension went away), since none of those is the capture failing."""
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    try:
        sys.exit(capture())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
