"""Parse osqueryd filesystem-logger result lines into `OsqueryRow` objects.

osqueryd writes one JSON object per line to `osqueryd.results.log`. Three shapes occur, depending on
the query's mode and the logger flags, and all three must be understood because operators choose
the flags, not us:

* differential, one row per line (the default, `logger_event_type=true`)::

    {"name": "pack_stowaway_stowaway_container_events", "hostIdentifier": "h1",
     "unixTime": 1795805066, "action": "added", "columns": {...}, ...}

* snapshot (`"snapshot": true` in the pack)::

    {"name": ..., "action": "snapshot", "snapshot": [{...}, {...}], ...}

* batched differential (`logger_event_type=false`)::

    {"name": ..., "diffResults": {"added": [{...}], "removed": [{...}]}, ...}

Older osquery versions say `hostname` instead of `hostIdentifier`, and `unixTime` was a string
before 4.x; both are accepted. The query name is `pack_<pack>_<query>` for pack queries or just
`<query>` for schedule queries; the pack's queries are named `stowaway_<table>`, so we map a name to
a table by its suffix (longest known table name first), which also tolerates operators renaming the
pack. Lines for queries that are not ours are skipped silently (counted as `ignored`); lines that are
not valid result objects are counted as `malformed` and logged with file and line number.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from scheduler.collect.warnlimit import WarnLimiter

log = logging.getLogger(__name__)

# The extension's tables (docs/architecture.md). Longest first so that suffix matching is unambiguous.
KNOWN_TABLES: tuple[str, ...] = tuple(sorted((
    "container_processes",
    "container_inventory",
    "container_events",
    "container_process_events",
    "container_sockets",
    "container_nat_flows",
), key=len, reverse=True))

ACTIONS = ("added", "removed", "snapshot")
MAX_WARNINGS = 20
# Container event verbs: the same vocabulary as osquery_ext/events.py (Docker's verbs; Podman's
# aliases mapped). Here, in collect, because recordings normalise events as they are written.
ACTION_ALIASES = {"died": "die", "remove": "destroy", "removed": "destroy", "exec_died": "exec_die",
                  "exec_start": "exec"}


@dataclass(slots=True)
class OsqueryRow:
    """One result row from one query execution.

    `action` is "added" / "removed" for differential results and "snapshot" for snapshot results.
    `unix_time` is when osqueryd ran the query (not when the event happened: event tables carry their
    own `time` column). `columns` values are strings, as on the wire.
    """

    table: str
    host: str
    unix_time: float
    action: str
    columns: dict[str, str]
    query: str = ""


@dataclass(slots=True)
class ParseStats:
    """Counters for one source; `warnings` keeps the first few messages for reports and tests."""

    lines: int = 0
    rows: int = 0
    malformed: int = 0
    ignored: int = 0
    io_errors: int = 0      # unreadable or truncated files (what was readable was read)
    warnings: list[str] = field(default_factory=list)
    # per file: MAX_WARNINGS warnings a minute are logged, the rest counted (and summarised)
    limiter: WarnLimiter = field(default_factory=lambda: WarnLimiter(log, MAX_WARNINGS, 60.0),
                                 repr=False, compare=False)

    def warn(self, message: str, limit: int = MAX_WARNINGS, key: str = "osquery results") -> None:
        """Count a malformed line and log it through the rate limiter (a flood of bad lines must
        not become a flood of log lines); the first `limit` messages are kept for reports."""
        self.malformed += 1
        self._keep(message, limit)
        self.limiter.warn(key, "%s", message)

    def io_error(self, message: str, key: str = "osquery results") -> None:
        """Count a file that could not be read to its end (always logged: it is rare and final)."""
        self.io_errors += 1
        self._keep(message, MAX_WARNINGS)
        log.warning("%s", message)

    def _keep(self, message: str, limit: int) -> None:
        if len(self.warnings) < limit:
            self.warnings.append(message)
        elif len(self.warnings) == limit:
            self.warnings.append("(further malformed lines are only counted)")


def normalise_action(action: str) -> str:
    """Podman/Docker event names to the contract's (died -> die, remove -> destroy)."""
    a = (action or "").split(":", 1)[0].strip().lower()
    return ACTION_ALIASES.get(a, a)


class MalformedLine(ValueError):
    """A results line that is not a valid osqueryd result object."""


def table_for_query(name: str) -> str | None:
    """Map an osquery query name to one of our table names, or None if it is not ours.

    `pack_stowaway_stowaway_container_events` -> `container_events`; `container_events` ->
    `container_events`; `stowaway_container_events` -> `container_events`.
    """
    if not name:
        return None
    for table in KNOWN_TABLES:
        if name == table or name.endswith("_" + table):
            return table
    return None


def _stringify(value: Any) -> str:
    """Column values are strings on the wire; tolerate numbers/bools/null from other producers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _columns(obj: Any, where: str = "columns") -> dict[str, str]:
    if not isinstance(obj, dict):
        raise MalformedLine(f"field {where} is {type(obj).__name__}, not an object")
    # osqueryd writes every column as a string, so the common row needs no conversion: one
    # type check per column and a C-level copy (a fifth of the per-column _stringify calls'
    # cost, which were most of the parse time). Any other value takes the converting path.
    for k, v in obj.items():
        if type(v) is not str or type(k) is not str:
            return {str(k): _stringify(v) for k, v in obj.items()}
    return dict(obj)


def _unix_time(obj: dict[str, Any]) -> float:
    raw = obj.get("unixTime")
    if raw is None or raw == "":
        raise MalformedLine("no unixTime")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise MalformedLine(f"field unixTime is {type(raw).__name__}, not a number")
    try:
        value = float(raw)
    except (ValueError, OverflowError) as exc:
        raise MalformedLine(f"field unixTime {_clip(raw)!r} is not a number") from exc
    if not math.isfinite(value):
        # NaN or inf would move the engine's data clock to nowhere (or to the end of time)
        raise MalformedLine(f"field unixTime {_clip(raw)!r} is not a finite number")
    return value


def _clip(value: Any, n: int = 40) -> str:
    """A bad value as it appears in a warning: bounded, whatever its size."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[:n] + f"...({len(text)} chars)"


def _host(obj: dict[str, Any]) -> str:
    for key in ("hostIdentifier", "hostname"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    decorations = obj.get("decorations")
    if isinstance(decorations, dict):
        for key in ("hostname", "host_uuid"):
            value = decorations.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def parse_object(obj: Any) -> list[OsqueryRow] | None:
    """Turn one decoded results object into rows; None if the query is not one of ours.

    Raises MalformedLine when the object is not a results object.
    """
    if not isinstance(obj, dict):
        raise MalformedLine(f"line is {type(obj).__name__}, not an object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedLine("no query name")
    table = table_for_query(name)
    has_payload = any(k in obj for k in ("columns", "snapshot", "diffResults"))
    if not has_payload:
        raise MalformedLine("none of columns / snapshot / diffResults")
    unix_time = _unix_time(obj)
    if table is None:
        return None
    host = _host(obj)
    rows: list[OsqueryRow] = []
    if "diffResults" in obj:
        diff = obj["diffResults"]
        if not isinstance(diff, dict):
            raise MalformedLine("diffResults is not an object")
        for action in ("removed", "added"):  # removed first: a changed row is removed then re-added
            items = diff.get(action) or []
            if not isinstance(items, list):
                raise MalformedLine(f"diffResults.{action} is not a list")
            rows.extend(OsqueryRow(table, host, unix_time, action,
                                   _columns(r, f"diffResults.{action}[{i}]"), name)
                        for i, r in enumerate(items))
    elif "snapshot" in obj:
        items = obj["snapshot"]
        if not isinstance(items, list):
            raise MalformedLine("snapshot is not a list")
        rows.extend(OsqueryRow(table, host, unix_time, "snapshot", _columns(r, f"snapshot[{i}]"),
                               name) for i, r in enumerate(items))
    else:
        action = obj.get("action")
        if action not in ("added", "removed"):
            raise MalformedLine(f"action {action!r} is not added/removed")
        rows.append(OsqueryRow(table, host, unix_time, action, _columns(obj["columns"]), name))
    return rows


def parse_line(line: str | bytes) -> list[OsqueryRow] | None:
    """Parse one results-log line. Returns [] for a blank line, None for a query that is not ours.

    Raises MalformedLine for anything else that is not a valid results object.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedLine(f"not UTF-8: {exc}") from exc
    text = line.strip()
    if not text:
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedLine(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError:
        raise MalformedLine("not JSON we read: nested too deeply") from None
    except (ValueError, OverflowError) as exc:   # e.g. an integer of more than 4300 digits
        raise MalformedLine(f"not JSON we read: {_clip(str(exc), 80)}") from None
    return parse_object(obj)


class OsqueryResultsParser:
    """Line parser bound to a source name, counting malformed and foreign lines.

    Used by the tailer (one instance per followed file) and by batch readers.
    """

    def __init__(self, source: str | Path = "<stream>", stats: ParseStats | None = None) -> None:
        self.source = str(source)
        self.stats = stats if stats is not None else ParseStats()

    def parse_line(self, line: str | bytes, lineno: int) -> list[OsqueryRow]:
        """Rows of one line; [] (and a counted warning) when the line is malformed."""
        self.stats.lines += 1
        try:
            rows = parse_line(line)
        except MalformedLine as exc:
            self.stats.warn(f"{self.source}:{lineno}: malformed osquery result line skipped: {exc}",
                            key=self.source)
            return []
        except Exception as exc:  # noqa: BLE001 - one bad line must never cost the batch
            # Whatever else a hostile line provokes (RecursionError in a nested value, MemoryError
            # aside): named, counted, skipped.
            self.stats.warn(f"{self.source}:{lineno}: malformed osquery result line skipped: "
                            f"{type(exc).__name__}: {_clip(str(exc), 80)}", key=self.source)
            return []
        if rows is None:
            self.stats.ignored += 1
            return []
        self.stats.rows += len(rows)
        return rows


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a plain or gzip-compressed text file (by the `.gz` suffix), tolerating bad bytes."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def iter_results(path: str | Path, stats: ParseStats | None = None) -> Iterator[OsqueryRow]:
    """All rows of a results log (plain or .gz), in file order, malformed lines skipped.

    A file that cannot be read to its end (a truncated or damaged .gz, an I/O error) ends the
    iteration with a named warning and `stats.io_errors`: what was readable has been yielded."""
    parser = OsqueryResultsParser(path, stats)
    lineno = 0
    try:
        with open_text(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                yield from parser.parse_line(line, lineno)
    except (OSError, EOFError, zlib.error, UnicodeError) as exc:
        # gzip.BadGzipFile is an OSError, a truncated stream an EOFError, a damaged deflate block
        # a zlib.error
        parser.stats.io_error(f"{path}: stopped reading after line {lineno}: "
                              f"{type(exc).__name__}: {exc}")


def iter_lines(lines: Iterable[str], source: str = "<lines>",
               stats: ParseStats | None = None) -> Iterator[OsqueryRow]:
    """Rows of an iterable of lines (tests, stdin)."""
    parser = OsqueryResultsParser(source, stats)
    for lineno, line in enumerate(lines, start=1):
        yield from parser.parse_line(line, lineno)


# ---- writing (recordings, tests, the Thrift client's log mirror) ------------------------------

def query_name(table: str, pack: str = "stowaway") -> str:
    """The name osqueryd gives the pack query for `table` (docs/architecture.md: `stowaway_<table>`)."""
    return f"pack_{pack}_stowaway_{table}"


def _base(table: str, host: str, unix_time: float, pack: str) -> dict[str, Any]:
    import time as _time
    ut = int(unix_time)
    return {
        "name": query_name(table, pack),
        "hostIdentifier": host,
        "calendarTime": _time.strftime("%a %b %d %H:%M:%S %Y UTC", _time.gmtime(ut)),
        "unixTime": ut,
        "epoch": 0,
        "counter": 0,
        "numerics": False,
    }


def differential_line(table: str, host: str, unix_time: float, action: str,
                      columns: dict[str, Any], pack: str = "stowaway") -> str:
    """One differential result line (`action` added/removed + `columns`)."""
    obj = _base(table, host, unix_time, pack)
    obj["columns"] = {k: _stringify(v) for k, v in columns.items()}
    obj["action"] = action
    return json.dumps(obj, separators=(",", ":"))


def snapshot_line(table: str, host: str, unix_time: float, rows: list[dict[str, Any]],
                  pack: str = "stowaway") -> str:
    """One snapshot result line."""
    obj = _base(table, host, unix_time, pack)
    obj["snapshot"] = [{k: _stringify(v) for k, v in r.items()} for r in rows]
    obj["action"] = "snapshot"
    return json.dumps(obj, separators=(",", ":"))


def batched_line(table: str, host: str, unix_time: float, added: list[dict[str, Any]],
                 removed: list[dict[str, Any]] | None = None, pack: str = "stowaway") -> str:
    """One batched differential line (`diffResults`)."""
    obj = _base(table, host, unix_time, pack)
    obj["diffResults"] = {
        "added": [{k: _stringify(v) for k, v in r.items()} for r in added],
        "removed": [{k: _stringify(v) for k, v in r.items()} for r in (removed or [])],
    }
    return json.dumps(obj, separators=(",", ":"))
