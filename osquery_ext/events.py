"""Background listeners that turn runtime event streams into buffered container_events rows.

Why: osquery polls tables on a schedule; a `--rm` container that lives 200 ms is created, started,
killed and removed between two polls, and a poll of the runtime's container list never sees it.
The runtime's event stream does see it, so a thread per runtime reads that stream continuously into
a bounded in-memory ring buffer, and the container_events table returns what the buffer holds
(filtered by osquery's `time` constraints). Rows age out by count, never by being read, so two
queries (or two osquery schedules) each get the same rows; osquery's differential logging or a
`WHERE time > N` constraint avoids duplicates downstream.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Iterable

from osquery_ext.runtimes import RuntimeClient, Runtimes

log = logging.getLogger(__name__)

#: Verbs normalised to Docker's vocabulary (the contract's action values); Podman's compat API says
#: `remove` / `died` / `exec` / `exec_died`, Docker says `destroy` / `die` / `exec_start: <cmd>`.
ACTION_MAP = {
    "remove": "destroy",
    "died": "die",
    "exec_died": "exec_die",
    "cleanup": "cleanup",
}


def normalise_action(action: str) -> str:
    """Docker-vocabulary verb of a runtime's event action (drops the command of exec_* verbs)."""
    verb = (action or "").split(":", 1)[0].strip()
    if verb == "exec_start":
        return "exec"
    return ACTION_MAP.get(verb, verb)


class RingBuffer:
    """A thread-safe bounded buffer of rows with a monotone sequence number (oldest dropped)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._rows: collections.deque[dict[str, str]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.dropped = 0

    def append(self, row: dict[str, str]) -> None:
        with self._lock:
            if len(self._rows) == self.maxlen:
                self.dropped += 1
            self._rows.append(row)

    def snapshot(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._rows)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


def event_row(runtime: str, ev: dict[str, Any]) -> dict[str, str] | None:
    """A container_events row from one decoded Engine-API event (None for other event types)."""
    etype = ev.get("Type") or ev.get("type") or "container"
    if etype not in ("container", "image"):
        return None
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    action = normalise_action(str(ev.get("Action") or ev.get("status") or ""))
    if not action:
        return None
    tnano = int(ev.get("timeNano") or 0) or int(ev.get("time") or 0) * 1_000_000_000
    if etype == "image":
        cid, name = "", ""
        image = attrs.get("name") or actor.get("ID") or ev.get("id") or ""
    else:
        cid = actor.get("ID") or ev.get("id") or ""
        name = attrs.get("name", "")
        image = attrs.get("image") or ev.get("from") or ""
    exit_code = ""
    if action in ("die", "exec_die"):
        exit_code = str(attrs.get("exitCode", attrs.get("containerExitCode", "")))
    return {
        "time": str(tnano // 1_000_000_000), "time_nano": str(tnano), "action": action,
        "container_id": cid, "name": name, "image": image, "exit_code": exit_code,
        "runtime": runtime,
    }


class EventListener(threading.Thread):
    """Reads one runtime's event stream forever, reconnecting with backoff.

    On reconnect it asks for events since the last one seen, and drops duplicates, so a runtime
    restart loses nothing that the runtime itself still has in its events log.
    """

    def __init__(self, client: RuntimeClient, buffer: RingBuffer, runtimes: Runtimes | None = None,
                 health: Any = None, max_backoff: float = 5.0) -> None:
        super().__init__(name=f"events-{client.name}", daemon=True)
        self.client = client
        self.buffer = buffer
        self.runtimes = runtimes
        self.health = health if health is not None else (runtimes.health if runtimes else None)
        self.max_backoff = max_backoff
        self.connected = threading.Event()
        self._stop_evt = threading.Event()
        self._stream: Any = None
        self._last_sec: int | None = None
        self._cursor = 0
        self._seen: collections.OrderedDict[tuple, None] = collections.OrderedDict()

    def stop(self) -> None:
        self._stop_evt.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a half-dead stream is best effort
                pass

    def run(self) -> None:
        backoff = 0.2
        # Resume point: the later of the last event seen and the last moment the stream was
        # known to be connected, so a reconnect fetches what the outage hid and no more.
        self._cursor = int(time.time())
        while not self._stop_evt.is_set():
            ok, why = self.client.available()
            if not ok:
                self._down(why)
                self._stop_evt.wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            try:
                self._stream = self.client.events(since=max(self._cursor, self._last_sec or 0))
                self.connected.set()
                if self.health is not None:
                    self.health.up(self.client.name)
                backoff = 0.2
                for ev in self._stream:
                    if self._stop_evt.is_set():
                        break
                    self.handle(ev)
            except Exception as exc:
                if self._stop_evt.is_set():
                    break
                self._down(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            finally:
                if self.connected.is_set():
                    self._cursor = max(self._cursor, int(time.time()) - 1)
                self.connected.clear()
                self._stream = None
            self._stop_evt.wait(backoff)
            backoff = min(self.max_backoff, backoff * 2)

    def _down(self, why: str) -> None:
        if self.health is not None:
            self.health.down(self.client.name, f"event stream: {why}")

    def handle(self, ev: dict[str, Any]) -> None:
        """Buffer one event (deduplicated) and teach the runtime cache the container's name."""
        row = event_row(self.client.name, ev)
        if row is None:
            return
        key = (row["time_nano"], row["container_id"], row["action"], row["image"])
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > 4096:
            self._seen.popitem(last=False)
        self._last_sec = int(row["time"])
        if self.runtimes is not None and row["container_id"]:
            self.runtimes.remember(self.client.name, row["container_id"], row["name"], row["image"])
        self.buffer.append(row)


def start_listeners(runtimes: Runtimes, buffer: RingBuffer) -> list[EventListener]:
    """One started listener per configured runtime."""
    out = []
    for client in runtimes.clients:
        # A client of its own: the stream holds a connection open for as long as it runs.
        own = RuntimeClient(client.name, client.url, client.timeout)
        lst = EventListener(own, buffer, runtimes)
        lst.start()
        out.append(lst)
    return out


def feed(listener: EventListener, events: Iterable[dict[str, Any]]) -> None:
    """Push already-decoded events through a listener's handling (for replays and tests)."""
    for ev in events:
        listener.handle(ev)

