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
import subprocess
import sys
import threading
from typing import Any


class CaptureChild(threading.Thread):
    """A daemon thread that runs one capture child and hands each JSON line to a hook.

    Subclasses implement `is_record` / `on_record` / `on_status` (what a line means),
    `give_up` (how "unavailable" is recorded and logged), `state` / `set_stopped` (their public
    state attribute: `status` or `mode`), and set `label` (the restart log's wording) and `log`
    (their module's logger, so log records keep the name they always had).
    """

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
    def state(self) -> str:
        """The current public state (starting / running / unavailable / stopped / ...)."""
        raise NotImplementedError

    def set_stopped(self) -> None:
        """Record that the supervision ended without the capture being unavailable."""
        raise NotImplementedError

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
            self.set_stopped()

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
