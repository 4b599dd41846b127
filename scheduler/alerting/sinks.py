"""Where alerts go: a JSONL file (default), stdout, syslog, a webhook.

Every sink is idempotent on the alert id, because the pipeline re-emits the alerts of the last
unfinished batch after a crash (at-least-once upstream) and the sinks turn that into exactly-once:

* JSONL: the ids already in the file are loaded when the sink opens; a known id is not written
  again. Each line is written and flushed whole (one `write` of the full line plus fsync per batch).
* webhook: every alert is first written to an on-disk spool (one file per alert id, atomic rename),
  then POSTed with the header `Idempotency-Key: <id>`; on a 2xx the spool file becomes a
  `.delivered` marker. A receiver that is down only delays delivery: the spool is retried with
  exponential backoff on every flush and at start-up. A marker means "never send again".
* stdout / syslog: fire-and-forget; they dedupe within the process lifetime only. Syslog is
  size-limited: an alert longer than `sinks.syslog_max_bytes` is cut with a visible marker and a
  pointer to the full alert in JSONL (`cut_alert`), and counted.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from scheduler.alerting.alerts import Alert
from scheduler.collect.fsmode import PRIVATE_FILE, open_private_append, private_dir
from scheduler.config import SinksConfig, WebhookConfig, syslog_address

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    def emit(self, alerts: list[Alert]) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Append alerts as JSON lines; skip ids already in the file (replay after a crash)."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)   # alerts carry full command lines: 0600 in 0700
        self._ids = self._load_ids()
        self._fh = open_private_append(self.path)

    def _load_ids(self) -> set[str]:
        ids: set[str] = set()
        if not self.path.exists():
            return ids
        with open(self.path, "rb") as fh:
            data = fh.read()
        if data and not data.endswith(b"\n"):
            # A torn last line (killed mid-write): cut it so the file stays valid JSONL; the
            # alert comes again from the replayed batch.
            cut = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(data) - cut)
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            data = data[:cut]
        for line in data.splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
        return ids

    def emit(self, alerts: list[Alert]) -> int:
        n = 0
        for a in alerts:
            if a.id in self._ids:
                continue
            self._fh.write(a.to_json() + "\n")
            self._ids.add(a.id)
            n += 1
        if n:
            self.flush()
        return n

    def flush(self) -> None:
        self._fh.flush()
        try:
            os.fsync(self._fh.fileno())
        except OSError:
            pass

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()


def _first_sight(alerts: Iterable[Alert], seen: set[str]) -> Iterator[Alert]:
    """The alerts whose id is not in `seen`, each recorded there before it is handed out.

    The fire-and-forget sinks (stdout, syslog) dedupe this way: an alert counts as sent once it was
    tried, so a failed write is not repeated. (JsonlSink records an id only after the line is in its
    file, because the file is what a restarted sink reloads its ids from.)
    """
    for a in alerts:
        if a.id in seen:
            continue
        seen.add(a.id)
        yield a


class StdoutSink:
    name = "stdout"

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self._ids: set[str] = set()

    def emit(self, alerts: list[Alert]) -> int:
        n = 0
        for a in _first_sight(alerts, self._ids):
            self.stream.write(a.to_json() + "\n")
            n += 1
        self.stream.flush()
        return n

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


_FACILITIES = logging.handlers.SysLogHandler.facility_names
_SEVERITY = {"low": 6, "medium": 4, "high": 3, "critical": 2}   # info, warning, err, crit
TRUNCATED_MARKER = "[TRUNCATED]"


def _clip(value: Any, n: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= n else text[: max(0, n - 3)] + "..."


def cut_alert(alert: dict[str, Any], max_bytes: int, jsonl_path: str) -> tuple[bytes, bool]:
    """The alert as one JSON text (ASCII: control and non-ASCII characters escaped) of at most
    `max_bytes` bytes, and whether it was cut.

    Why not drop or split: a SIEM fed by syslog must still see that the alert happened, which rule,
    which container, and where the whole of it is. A cut alert keeps id, time, rule, severity,
    host, container and title (each bounded), says `TRUNCATED_MARKER` with the full size, points
    at the full alert (its id in the JSONL file), and fills what room is left with the start of the
    full JSON as an excerpt. A padded command line can make an alert long, never invisible.
    """
    full = json.dumps(alert, separators=(",", ":")).encode()
    if len(full) <= max_bytes:
        return full, False
    c = alert.get("container") or {}
    where = jsonl_path or "(no jsonl sink)"
    for limit in (256, 64, 16, 0):      # bounded fields; smaller until even a tiny limit fits
        head = {
            "id": alert.get("id"), "time": alert.get("time"),
            "rule": _clip(alert.get("rule", ""), limit or 32), "severity": alert.get("severity"),
            "host": _clip((alert.get("host") or {}).get("name", ""), limit),
            "container": {"id": _clip(c.get("id", ""), max(limit, 12)),
                          "name": _clip(c.get("name", ""), limit),
                          "image": _clip(c.get("image", ""), limit)},
            "title": _clip(alert.get("title", ""), limit),
            "truncated": f"{TRUNCATED_MARKER} alert of {len(full)} bytes cut to fit {max_bytes}; "
                         f"full alert: id {alert.get('id')} in {_clip(where, max(limit, 64))}",
            "full_alert": {"id": alert.get("id"), "jsonl": jsonl_path},
            "excerpt": "",
        }
        if not limit:
            head.pop("full_alert")
        base = len(json.dumps(head, separators=(",", ":")).encode())
        room = max_bytes - base
        if room < 0:
            continue
        text = full.decode()
        n = room
        while n > 0:
            head["excerpt"] = text[:n] + "..."
            out = json.dumps(head, separators=(",", ":")).encode()
            if len(out) <= max_bytes:
                return out, True
            n -= max(1, len(out) - max_bytes)      # escaping made it longer: take that much off
        head["excerpt"] = ""
        return json.dumps(head, separators=(",", ":")).encode(), True
    raise ValueError(f"syslog max_bytes {max_bytes} cannot hold even a cut alert")


class SyslogSink:
    """RFC 3164-style syslog datagrams (a local socket like /dev/log, or UDP host:port).

    Each alert is one datagram of at most `max_bytes`: longer ones are cut (`cut_alert`) and
    counted in `stats["truncated"]`, never refused by the socket ("Message too long"). A datagram
    the socket does refuse (no syslogd, network down) is counted in `stats["failed"]`, logged, and
    not counted as sent; the alert stays in JSONL (and the webhook spool, when configured).
    """

    name = "syslog"

    def __init__(self, target: str, facility: str = "local0", max_bytes: int = 8192,
                 jsonl_path: str = "") -> None:
        self.address = syslog_address(target)
        self.facility = _FACILITIES.get(facility, _FACILITIES["local0"])
        self.max_bytes = max_bytes
        self.jsonl_path = jsonl_path
        self.stats = {"sent": 0, "truncated": 0, "failed": 0}
        self._ids: set[str] = set()
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.connect(self.address)
            else:
                family, _, _, _, addr = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.connect(addr)
            self._sock = sock
        return self._sock

    def datagram(self, alert: Alert) -> tuple[bytes, bool]:
        """`<PRI>stowaway: <json>` within max_bytes, and whether the JSON was cut."""
        pri = self.facility * 8 + _SEVERITY.get(alert.severity, 3)
        prefix = f"<{pri}>stowaway: ".encode()
        body, cut = cut_alert(alert.to_dict(), self.max_bytes - len(prefix), self.jsonl_path)
        return prefix + body, cut

    def emit(self, alerts: list[Alert]) -> int:
        n = 0
        for a in alerts:
            if a.id in self._ids:
                continue
            data, cut = self.datagram(a)
            try:
                self._socket().send(data)
            except OSError as exc:
                self.stats["failed"] += 1
                log.warning("syslog %s: alert %s not sent (%d bytes): %s", self.address, a.id,
                            len(data), exc)
                self._close_socket()           # reconnect next time (syslogd restarted)
                continue
            self._ids.add(a.id)
            self.stats["sent"] += 1
            if cut:
                self.stats["truncated"] += 1
                log.info("syslog: alert %s cut to %d bytes; full alert in %s", a.id, len(data),
                         self.jsonl_path or "(no jsonl sink)")
            n += 1
        return n

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._close_socket()


Poster = Callable[[str, bytes, dict[str, str], float], int]


def _http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
        return resp.status


def _rejected_for_good(status: int) -> bool:
    """A 4xx says this request will never succeed, except 408 (timeout) and 429 (rate limit)."""
    return 400 <= status < 500 and status not in (408, 429)


class WebhookSink:
    """POST each alert as JSON, through an on-disk spool so nothing is lost while the receiver
    is down, with an idempotency key so the receiver can drop a repeat."""

    name = "webhook"

    def __init__(self, cfg: WebhookConfig, poster: Poster | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not cfg.url:
            raise ValueError("webhook sink needs a url")
        self.cfg = cfg
        self.spool = Path(cfg.spool_dir)
        private_dir(self.spool)
        self._post = poster or _http_post
        self._sleep = sleep
        self.stats = {"delivered": 0, "failed_attempts": 0, "spooled": 0}
        self._retry_at = 0.0        # after a failed round, no new attempt before this time
        self._delay = 0.0           # the current backoff (0: the receiver answered last time)
        self._clock = time.monotonic
        # The daemon sets `defer`: emit() then only spools (a local file write), and its
        # delivery job calls deliver_due() on a timer, outside the lock collection holds, so a
        # hung receiver costs at most timeout_s per round and never stalls collection.
        self.defer = False

    def _pending(self, alert_id: str) -> Path:
        return self.spool / f"{alert_id}.json"

    def _marker(self, alert_id: str) -> Path:
        return self.spool / f"{alert_id}.delivered"

    def emit(self, alerts: list[Alert]) -> int:
        n = 0
        for a in alerts:
            if self._marker(a.id).exists() or self._pending(a.id).exists():
                continue
            tmp = self.spool / f".{a.id}.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "w",
                      encoding="utf-8") as fh:
                fh.write(a.to_json())
            os.replace(tmp, self._pending(a.id))
            self.stats["spooled"] += 1
            n += 1
        if not self.defer:
            self.flush()
        return n

    @property
    def retry_interval(self) -> float:
        """The longest wait between two delivery rounds while the receiver fails: backoff_s
        doubling per failed round, capped at backoff_s * 2**max_attempts (and at 60 s). After
        the receiver recovers, the spool is delivered within this long."""
        return min(60.0, self.cfg.backoff_s * 2 ** max(1, self.cfg.max_attempts))

    def due(self) -> bool:
        return self._clock() >= self._retry_at

    def deliver_due(self, force: bool = False) -> int:
        """One delivery round, unless the backoff says wait (or `force`): each spooled alert in
        order, one bounded POST each (timeout_s), stopping at the first failure. Returns the
        number delivered. A failed round doubles the wait before the next (up to
        `retry_interval`); a successful one resets it."""
        if not force and not self.due():
            return 0
        before = self.stats["delivered"]
        ok = self._round(attempts=1)
        if ok:
            self._delay, self._retry_at = 0.0, 0.0
        else:
            self._delay = min(self.retry_interval,
                              max(self.cfg.backoff_s, self._delay * 2 or self.cfg.backoff_s))
            self._retry_at = self._clock() + self._delay
        return self.stats["delivered"] - before

    def pending_ids(self) -> list[str]:
        files = sorted(self.spool.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
        return [p.stem for p in files]

    def flush(self) -> None:
        """Try to deliver everything in the spool; stop at the first receiver failure (after
        backoff) so the order of alerts is kept and a dead receiver is not hammered."""
        if not self._round(attempts=max(1, self.cfg.max_attempts)):
            self._retry_at = self._clock() + self.retry_interval

    def _round(self, attempts: int) -> bool:
        """Deliver the spool in order; False at the first alert the receiver did not take."""
        for alert_id in self.pending_ids():
            path = self._pending(alert_id)
            if self._marker(alert_id).exists():
                path.unlink(missing_ok=True)
                continue
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                continue
            if not self._deliver(alert_id, body, attempts):
                return False
            self._marker(alert_id).touch()
            path.unlink(missing_ok=True)
            self.stats["delivered"] += 1
        return True

    def force_retry(self) -> None:
        self._retry_at = 0.0

    def _deliver(self, alert_id: str, body: bytes, attempts: int) -> bool:
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert_id,
                   **self.cfg.headers}
        delay = self.cfg.backoff_s
        for attempt in range(1, attempts + 1):
            try:
                status = self._post(self.cfg.url, body, headers, self.cfg.timeout_s)
                if 200 <= status < 300:
                    return True
                if _rejected_for_good(status):
                    self._reject(alert_id, status)
                    return True
                log.warning("webhook HTTP %d for %s (attempt %d)", status, alert_id, attempt)
            except urllib.error.HTTPError as exc:
                if _rejected_for_good(exc.code):
                    self._reject(alert_id, exc.code)
                    return True
                log.warning("webhook HTTP %d for %s (attempt %d)", exc.code, alert_id, attempt)
            except (OSError, urllib.error.URLError) as exc:
                log.warning("webhook unreachable for %s (attempt %d): %s", alert_id, attempt, exc)
            self.stats["failed_attempts"] += 1
            if attempt < attempts:
                self._sleep(delay)
                delay *= 2
        return False

    def _reject(self, alert_id: str, status: int) -> None:
        """The receiver refuses this alert for good: keep it in the spool under a different name
        for a human (never sent again), so delivery moves on to the next one."""
        log.error("webhook rejected alert %s with HTTP %d; kept as .rejected", alert_id, status)
        os.replace(self._pending(alert_id), self.spool / f"{alert_id}.rejected")

    def prune_markers(self, older_than_s: float) -> int:
        """Delivered markers only need to outlive a possible replay; drop old ones."""
        cutoff = time.time() - older_than_s
        n = 0
        for p in self.spool.glob("*.delivered"):
            if p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
                n += 1
        return n

    def close(self) -> None:
        pass


class SinkSet:
    """All configured sinks; one failing sink does not stop the others."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    def emit(self, alerts: list[Alert]) -> int:
        written = 0
        for s in self.sinks:
            try:
                n = s.emit(alerts)
                if s.name == "jsonl" or written == 0:
                    written = max(written, n)
            except Exception as exc:  # keep the others going; the webhook spool retries later
                log.error("sink %s failed: %s", s.name, exc)
        return written

    def flush(self) -> None:
        for s in self.sinks:
            try:
                s.flush()
            except Exception as exc:
                log.error("sink %s flush failed: %s", s.name, exc)

    def defer_delivery(self) -> None:
        """Sinks that talk to a remote receiver only queue on emit; `deliver_due` sends."""
        for s in self.sinks:
            if hasattr(s, "deliver_due"):
                s.defer = True

    def deliver_due(self, force: bool = False) -> int:
        """A delivery round of every deferring sink whose backoff allows one."""
        n = 0
        for s in self.sinks:
            if hasattr(s, "deliver_due"):
                try:
                    n += s.deliver_due(force=force)
                except Exception as exc:
                    log.error("sink %s delivery failed: %s", s.name, exc)
        return n

    def undelivered(self) -> int:
        return sum(len(s.pending_ids()) for s in self.sinks if hasattr(s, "pending_ids"))

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as exc:
                log.error("sink %s close failed: %s", s.name, exc)


def build_sinks(cfg: SinksConfig) -> SinkSet:
    sinks: list[Sink] = []
    if cfg.jsonl:
        sinks.append(JsonlSink(cfg.jsonl))
    if cfg.stdout:
        sinks.append(StdoutSink())
    if cfg.syslog:
        sinks.append(SyslogSink(cfg.syslog, cfg.syslog_facility, cfg.syslog_max_bytes,
                                jsonl_path=str(Path(cfg.jsonl).resolve()) if cfg.jsonl else ""))
    if cfg.webhook.url:
        sinks.append(WebhookSink(cfg.webhook))
    return SinkSet(sinks)
