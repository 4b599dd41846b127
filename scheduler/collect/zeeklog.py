"""Read Zeek logs (ASCII/TSV or JSON lines, plain or gzip) into plain dicts with Zeek field names.

Why this exists next to zat: the scheduler needs a *per-line*, *stateful* reader that a tailer can
feed one line at a time, that keeps going over damaged input, and that says which file and line was
bad. zat 0.4.9's ``ZeekLogReader`` does not fit that path: it maps ``-`` to type defaults (``0``,
``False``, ``"-"``) so "unset" cannot be told from a real zero, turns ``time`` into naive
local-time ``datetime`` objects, only opens plain files, reads the header once per file (so a
concatenated or rotated file with a second header breaks it), and prints conversion problems to
stdout. We therefore parse lines ourselves and use zat where it fits: whole-file analytics into
pandas (:func:`read_dataframe` wraps zat's ``LogToDataFrame`` / ``JSONLogToDataFrame``).

Normalised record (both formats give the same shape):

* keys are Zeek's field names (``ts``, ``uid``, ``id.orig_h``, ``id.resp_p``, ...);
* ``time``/``interval``/``double`` -> ``float`` (``ts`` is epoch seconds), ``count``/``int``/
  ``port`` -> ``int``, ``bool`` -> ``bool``, ``addr``/``subnet``/``string``/``enum`` -> ``str``;
* ``set[..]``/``vector[..]``/``table[..]`` -> ``list`` (``(empty)`` -> ``[]``);
* unset (``-`` in TSV) -> ``None``. JSON logs omit unset fields, so use ``rec.get(name)``.

Malformed lines (wrong field count, unconvertible value, bad JSON, data before any ``#fields``)
are counted in :class:`ParseStats` and skipped with a ``logging`` warning naming the file and the
line number; they never raise. A damaged gzip stream ends the file early, counted as an I/O error.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from scheduler.collect.warnlimit import WarnLimiter

log = logging.getLogger(__name__)

#: At most this many per-line warnings per file and minute; the rest are counted (a million bad lines
#: must not become a million log lines).
MAX_WARNINGS_PER_FILE = 20

_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass
class ParseStats:
    """Counters for one or more files. Shared by reference so a caller can sum over many files."""

    lines: int = 0          # physical lines seen (including headers and blanks)
    records: int = 0        # records returned
    headers: int = 0        # '#' lines
    blank: int = 0
    bad_lines: int = 0      # malformed lines skipped
    filtered: int = 0       # well-formed lines dropped by a ``where`` predicate
    io_errors: int = 0      # unreadable / truncated files
    files: int = 0
    bad_by_file: dict[str, int] = field(default_factory=dict)
    # per file: MAX_WARNINGS_PER_FILE warnings a minute are logged, the rest counted (summarised)
    limiter: WarnLimiter = field(
        default_factory=lambda: WarnLimiter(log, MAX_WARNINGS_PER_FILE, 60.0),
        repr=False, compare=False)

    def add_bad(self, path: str) -> None:
        self.bad_lines += 1
        self.bad_by_file[path] = self.bad_by_file.get(path, 0) + 1


class MalformedLine(ValueError):
    """A line that cannot be turned into a record (internal; callers see counts and warnings)."""


def unescape(value: str) -> str:
    """Undo Zeek's ASCII-writer escaping (``\\xHH`` for separators and non-printable bytes)."""
    if "\\x" not in value:
        return value
    return _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


def _to_bool(value: str) -> bool:
    if value == "T":
        return True
    if value == "F":
        return False
    raise ValueError(f"not a Zeek bool: {value!r}")


def _finite_time(value: str) -> float:
    """A ``time`` value: NaN or inf would move the engine's data clock to nowhere or to the end
    of time (closing every open window), so they are malformed, not data."""
    t = float(value)
    if not math.isfinite(t):
        raise MalformedLine(f"time value {value[:40]!r} is not finite")
    return t


def _scalar_converter(zeek_type: str) -> Callable[[str], Any] | None:
    """Converter for one scalar Zeek type; None means "keep the string" (fast path)."""
    if zeek_type == "time":
        return _finite_time
    if zeek_type in ("interval", "double"):
        return float
    if zeek_type in ("count", "int", "port"):
        return int
    if zeek_type == "bool":
        return _to_bool
    return None  # addr, subnet, string, enum, pattern, unknown: text


def _container_inner(zeek_type: str) -> str | None:
    """Element type of ``set[x]``/``vector[x]``/``table[x]``; None when not a container type."""
    for prefix in ("set[", "vector[", "table["):
        if zeek_type.startswith(prefix) and zeek_type.endswith("]"):
            return zeek_type[len(prefix):-1]
    return None


#: Types of the JSON fields the detectors read (Zeek's JSON writer: addr/string/enum -> str,
#: port/count -> int, interval/double -> number, set/vector -> list). A line from another producer
#: with, say, a list as ``id.orig_h`` is malformed here, named by field, instead of failing
#: somewhere in the engine.
_NUM = (int, float)
JSON_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "uid": (str,), "id.orig_h": (str,), "id.resp_h": (str,), "id.orig_p": (int,),
    "id.resp_p": (int,), "proto": (str,), "service": (str,), "conn_state": (str,),
    "duration": _NUM, "orig_bytes": (int,), "resp_bytes": (int,), "orig_pkts": (int,),
    "resp_pkts": (int,), "orig_ip_bytes": (int,), "resp_ip_bytes": (int,),
    "query": (str,), "qtype_name": (str,), "rcode_name": (str,), "answers": (list,),
    "TTLs": (list,), "host": (str,), "uri": (str,), "method": (str,), "user_agent": (str,),
    "status_code": (int,), "server_name": (str,), "version": (str,), "subject": (str,),
    "container_id": (str,), "container": (bool, str),
}


def _check_json_types(rec: dict[str, Any]) -> None:
    """Raise MalformedLine naming the first known field whose value has the wrong type."""
    for name, types in JSON_FIELD_TYPES.items():
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MalformedLine(f"field {name} is {type(value).__name__}, expected "
                                f"{' or '.join(t.__name__ for t in types)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MalformedLine(f"field {name} is not a finite number")


def _compile_row(plan: list[tuple[int, str, Callable[[str], Any] | None, bool]]
                 ) -> Callable[..., dict[str, Any]]:
    """A function (values, unset, empty, set_separator) -> record for one header's plan.

    Generated once per ``#fields``/``#types`` header: one dict display with a conditional
    expression per kept column, instead of a loop with per-column branching on every line (the
    per-line path is the ingest's hot path). Field names enter the source as ``repr`` literals
    only; converters are bound by name in the function's namespace."""
    env: dict[str, Any] = {"unescape": unescape}
    items = []
    for n, (index, name, conv, is_container) in enumerate(plan):
        v = f"values[{index}]"
        if conv is not None:
            env[f"c{n}"] = conv
        if is_container:
            elem = f"c{n}(x)" if conv is not None else "unescape(x)"
            expr = (f"(None if (v{n} := {v}) == U else [] if v{n} == E else "
                    f"[{elem} for x in v{n}.split(S)])")
        elif conv is not None:
            expr = f"(None if (v{n} := {v}) == U else c{n}(v{n}))"
        else:
            expr = (f"(None if (v{n} := {v}) == U else '' if v{n} == E else "
                    f"unescape(v{n}) if '\\\\x' in v{n} else v{n})")
        items.append(f"{name!r}: {expr}")
    src = "def row(values, U, E, S):\n    return {" + ", ".join(items) + "}\n"
    exec(compile(src, "<zeeklog row>", "exec"), env)  # noqa: S102 - our own generated source
    return env["row"]


class ZeekLogParser:
    """Stateful parser for the lines of one Zeek log file (TSV with headers, or JSON lines).

    Feed it every line in order with :meth:`parse_line`; it keeps the header state (separator,
    field names and types, unset/empty markers), so it also works for a tailer that sees lines as
    they are appended, including a new header block after rotation or ``#close``.

    ``fields`` optionally restricts the returned keys (and the conversion work) to those names;
    this is the fast path for detectors that need five columns of a thirty-column log.
    """

    def __init__(self, path: str | os.PathLike[str], fields: Iterable[str] | None = None,
                 stats: ParseStats | None = None,
                 where: Mapping[str, Callable[[str], bool]] | None = None) -> None:
        self.path = str(path)
        self.stats = stats if stats is not None else ParseStats()
        self.wanted: frozenset[str] | None = frozenset(fields) if fields is not None else None
        #: Row filter on raw column text (unescaped; ``-`` when unset or absent), checked before
        #: any conversion: a detector that only wants container sources skips the rest cheaply.
        self.where = dict(where or {})
        self.separator = "\t"
        self.set_separator = ","
        self.empty_field = "(empty)"
        self.unset_field = "-"
        self.log_path: str | None = None    # the '#path' header (stream name)
        self.field_names: list[str] = []
        self.field_types: list[str] = []
        self.closed = False                 # saw '#close' (lines after it reuse the header)
        self._plan: list[tuple[int, str, Callable[[str], Any] | None, bool]] = []
        self._row: Callable[..., dict[str, Any]] = _compile_row([])
        self._maxsplit = -1
        self._where_idx: list[tuple[int, Callable[[str], bool]]] = []
        self._nfields = 0
        self._warned = 0

    # -- header handling -------------------------------------------------------------------
    def _header(self, line: str) -> None:
        self.stats.headers += 1
        if line.startswith("#separator"):
            # '#separator \x09' (space) or '#separator<TAB>\x09' (seen in the wild): the value is
            # everything after the keyword and one delimiter.
            raw = line[len("#separator") + 1:]
            sep = unescape(raw)
            if len(sep) == 1:
                self.separator = sep
            else:
                self._bad(None, f"unusable #separator {raw!r}")
            return
        parts = line.split(self.separator)
        key, values = parts[0], parts[1:]
        if key == "#fields":
            self.field_names = values
            self._rebuild_plan()
            self.closed = False
        elif key == "#types":
            self.field_types = values
            self._rebuild_plan()
        elif key == "#set_separator" and values:
            self.set_separator = unescape(values[0])
        elif key == "#empty_field" and values:
            self.empty_field = values[0]
        elif key == "#unset_field" and values:
            self.unset_field = values[0]
        elif key == "#path" and values:
            self.log_path = values[0]
        elif key == "#close":
            self.closed = True
        # '#open' and unknown comment lines need nothing.

    def _rebuild_plan(self) -> None:
        names = self.field_names
        types = self.field_types if len(self.field_types) == len(names) else ["string"] * len(names)
        plan = []
        for index, (name, zeek_type) in enumerate(zip(names, types)):
            if self.wanted is not None and name not in self.wanted:
                continue
            inner = _container_inner(zeek_type)
            if inner is not None:
                plan.append((index, name, _scalar_converter(inner), True))
            else:
                plan.append((index, name, _scalar_converter(zeek_type), False))
        self._plan = plan
        self._nfields = len(names)
        self._row = _compile_row(plan)
        position = {name: i for i, name in enumerate(names)}
        self._where_idx = [(position.get(name, -1), pred) for name, pred in self.where.items()]
        # Split a line only as far as the last column anyone reads (the rest stays one string;
        # the field count is checked by counting separators).
        used = [i for i, _, _, _ in plan] + [i for i, _ in self._where_idx if i >= 0]
        last = max(used) if used else -1
        self._maxsplit = -1 if last >= len(names) - 2 else last + 1

    # -- data lines ------------------------------------------------------------------------
    def parse_line(self, line: str, lineno: int) -> dict[str, Any] | None:
        """Return the record for one line, or None for header, blank, malformed and filtered
        lines (see :class:`ParseStats` for which).

        ``lineno`` is 1-based and only used in warnings. Never raises on bad input.
        """
        self.stats.lines += 1
        line = line.rstrip("\r\n")
        if not line:
            self.stats.blank += 1
            return None
        first = line[0]
        if first == "#":
            self._header(line)
            return None
        try:
            if first == "{":
                rec = self._json(line)
            else:
                rec = self._tsv(line)
        except (MalformedLine, ValueError, TypeError, OverflowError) as exc:
            self._bad(lineno, _clip(str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001 - one hostile line must never cost the batch
            # RecursionError from deeply nested JSON and whatever else: named, counted, skipped
            self._bad(lineno, f"{type(exc).__name__}: {_clip(str(exc))}")
            return None
        if rec is not None:
            self.stats.records += 1
        return rec

    def _tsv(self, line: str) -> dict[str, Any] | None:
        if not self._nfields:
            raise MalformedLine("data line before any #fields header")
        sep = self.separator
        count = line.count(sep) + 1
        if count != self._nfields:
            raise MalformedLine(f"{count} fields, header has {self._nfields}")
        values = line.split(sep, self._maxsplit)
        unset, empty, set_sep = self.unset_field, self.empty_field, self.set_separator
        for index, pred in self._where_idx:
            raw = values[index] if index >= 0 else unset
            if not pred(unescape(raw) if "\\x" in raw else raw):
                self.stats.filtered += 1
                return None
        rec: dict[str, Any] = self._row(values, unset, empty, set_sep)
        return rec

    def _json(self, line: str) -> dict[str, Any]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MalformedLine(f"bad JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise MalformedLine("bad JSON: nested too deeply") from None
        if not isinstance(rec, dict):
            raise MalformedLine(f"JSON line is a {type(rec).__name__}, not an object")
        ts = rec.get("ts")
        if ts is not None:
            rec["ts"] = _json_time(ts)
        _check_json_types(rec)
        for name, pred in self.where.items():
            value = rec.get(name)
            if not pred(self.unset_field if value is None else str(value)):
                self.stats.filtered += 1
                return None
        if self.wanted is not None:
            rec = {k: v for k, v in rec.items() if k in self.wanted}
        return rec

    def _bad(self, lineno: int | None, why: str) -> None:
        self.stats.add_bad(self.path)
        self._warned += 1
        where = f"{self.path}:{lineno}" if lineno is not None else self.path
        self.stats.limiter.warn(self.path, "skipping malformed Zeek log line %s: %s", where, why)


def _clip(text: str, n: int = 120) -> str:
    """A reason as it appears in a warning: bounded, whatever the line held."""
    return text if len(text) <= n else text[:n] + f"...({len(text)} chars)"


def _json_time(value: Any) -> float:
    """JSON ``ts``: epoch number (default writer) or ISO 8601 (``JSON::TS_ISO8601``); finite."""
    if isinstance(value, bool):
        raise MalformedLine(f"field ts: bad time {value!r}")
    t: float | None = None
    if isinstance(value, (int, float)):
        try:
            t = float(value)
        except OverflowError:
            raise MalformedLine(f"field ts: {len(str(value))}-digit number is not a time") from None
    elif isinstance(value, str):
        try:
            t = float(value)
        except ValueError:
            try:
                t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except (ValueError, OverflowError, OSError):
                raise MalformedLine(f"field ts: bad time {_clip(value, 40)!r}") from None
    if t is None:
        raise MalformedLine(f"field ts is {type(value).__name__}, not a time")
    if not math.isfinite(t):
        raise MalformedLine(f"field ts: time {_clip(str(value), 40)!r} is not finite")
    return t


def open_log_text(path: str | os.PathLike[str]) -> io.TextIOBase:
    """Open a log as text; ``.gz`` (or gzip magic) is decompressed. Undecodable bytes are replaced."""
    p = str(path)
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(p, "rt", encoding="utf-8", errors="replace", newline="\n")
    return open(p, "r", encoding="utf-8", errors="replace", newline="\n")


def iter_zeek_log(path: str | os.PathLike[str], stats: ParseStats | None = None,
                  fields: Iterable[str] | None = None,
                  where: Mapping[str, Callable[[str], bool]] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Yield normalised records of one log file (TSV or JSON, plain or gzip).

    ``fields`` limits the returned columns, ``where`` drops rows early (see
    :class:`ZeekLogParser`). Damage never raises: bad lines are counted in ``stats.bad_lines``; an unreadable or truncated
    file is counted in ``stats.io_errors`` and ends the iteration with a warning.
    """
    stats = stats if stats is not None else ParseStats()
    parser = ZeekLogParser(path, fields=fields, stats=stats, where=where)
    stats.files += 1
    lineno = 0
    try:
        with open_log_text(path) as fh:
            parse = parser.parse_line
            for lineno, line in enumerate(fh, 1):
                rec = parse(line, lineno)
                if rec is not None:
                    yield rec
    except (OSError, EOFError, UnicodeError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError; a damaged deflate
        # block raises zlib.error. Everything read before the damage has been yielded.
        stats.io_errors += 1
        log.warning("stopped reading %s after line %d: %s", path, lineno, exc)


def find_logs(directory: str | os.PathLike[str], stream: str) -> list[Path]:
    """The files of one log stream in a Zeek log directory: ``dns.log``, ``dns.log.gz`` and rotated
    ``dns.<stamp>.log[.gz]``, oldest name first."""
    d = Path(directory)
    found: set[Path] = set()
    for pattern in (f"{stream}.log", f"{stream}.log.gz", f"{stream}.*.log", f"{stream}.*.log.gz"):
        found.update(p for p in d.glob(pattern) if p.is_file())
    return sorted(found)


def read_dataframe(path: str | os.PathLike[str]):
    """Whole-file load into a pandas DataFrame (for analytics, not the per-line path).

    Plain TSV logs go through zat's ``LogToDataFrame`` and plain JSON logs through zat's
    ``JSONLogToDataFrame`` (zat's dtypes: ``ts`` index as datetime). Gzip files, which zat cannot
    open, are read with :func:`iter_zeek_log` and turned into a frame with a float ``ts`` column.
    """
    import pandas as pd  # heavy; only for analytics callers

    p = str(path)
    with open(p, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        return pd.DataFrame.from_records(list(iter_zeek_log(p)))
    if head[:1] == b"{":
        from zat.json_log_to_dataframe import JSONLogToDataFrame

        return JSONLogToDataFrame().create_dataframe(p)
    from zat.log_to_dataframe import LogToDataFrame

    return LogToDataFrame().create_dataframe(p)
