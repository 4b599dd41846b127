"""Zeek log records a batch at a time, as columns: the engine's unit of Zeek input.

Why columns: a sensor on a busy tap writes hundreds of thousands of lines a second, and the
engine's per-line work (a dict per line, a dozen `dict.get`s, a dataclass per record) capped it at
about 50k lines/s. A batch holds only the columns the engine reads, as numpy arrays, so
attribution, the rules' name lookups and the window counts run once per batch over arrays. The
few rows a rule may act on are handed to the per-record rule code as the exact dict the per-line
parser gives (`ZeekBatch.record`), so every verdict comes from one implementation.

Column conventions (a field the log does not have is absent from `columns`). Each value is the
per-line parser's (scheduler.collect.zeeklog) value for that row and field, put through one rule,
so a batch read from a file and one built from parser dicts (`batch_from_records`) agree:
* "ts": float64 epoch seconds (NaN where unset or unparseable);
* port and count fields (`INT_FIELDS`: "id.orig_p", "id.resp_p", "orig_bytes", ...): int64,
  -1 where unset;
* every other field: a numpy object array of str, "" where unset ("-") or empty ("(empty)"),
  Zeek's \\xNN escapes decoded; set/vector fields are their elements joined with "," (for string
  sets that is the raw text with escapes decoded); other typed values as `str()` of the parsed
  value (a bool is "True"/"False", an interval "300.0");
* JSON logs with nested objects ({"id": {"orig_h": ...}}) give dotted columns ("id.orig_h"),
  the top-level dotted key winning where both are present; object values are never a column.
  The order of the columns is not part of the contract.

Reading (`iter_batches`, `BlockParser`): a file is read in blocks of about `batch_bytes` that end at
a line boundary. '#' header lines go through a stateful `ZeekLogParser` (separator, fields,
types, unset/empty markers, a new header block after rotation or `#close`). Each run of TSV data
lines between header lines is parsed by pyarrow's CSV reader into only the requested columns
('\\t', no quoting): `ts` and the integer fields parsed as numbers in C (null where unset),
text columns dictionary-encoded (`BlockParser._read_kinds`), so a value repeated in the run is
converted (escapes, markers) and made a Python str once, and each column is `uniques[codes]`
(shared references; `ZeekBatch.codes` hands out the pair for per-value work). A text column
seen to hold about one value per row (uid) is read as plain strings from then on. Other typed
fields (a DNS answer's TTLs, bools, doubles) are read dictionary-encoded too and converted by
Zeek type, with the per-line parser's checks, once per distinct value. Text fields a consumer
reads for a few rows only may be asked for deferred (`iter_batches(lazy=, kept=)`:
`ZeekBatch.deferred`, strings made for the rows taken; `lazy` ones are not even parsed, each
asked-for row's value read from its line). Known: pyarrow reads an
integer field "0x50" as 80 where int() refuses the line (so did the string cast before); Zeek never writes one.
A run of JSON lines goes through pyarrow.json with an explicit schema that also types every field the per-line parser checks
(zeeklog.JSON_FIELD_TYPES), so pyarrow refuses what that parser would refuse; nested objects,
nulls, a "container" field, all-fields reads and fields whose text would differ (lists,
non-integer numbers: dns answers/TTLs) go line by line (4x faster than json.loads per line with
the checks, docs/scheduler.md). Whenever the columnar parse cannot vouch for a run (wrong field
count, a value pyarrow or the type conversion rejects, invalid UTF-8, a stray CR, TSV mixed with
JSON), THAT run is parsed line by line by the per-line parser, which counts, names (file:line,
rate-limited) and skips the bad lines: a malformed line never costs the batch, and the rows are
always exactly the per-line parser's. pyarrow's `invalid_row_handler` is not used: it
aborted the interpreter at exit in 4 of 8 runs here (pyarrow 26.0.1).
"""
from __future__ import annotations

import copy
import functools
import gzip
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from scheduler.collect import zeeklog
from scheduler.collect.deferred import ArrowText, DeferredText
from scheduler.collect.readahead import read_ahead
from scheduler.collect.zeeklog import ParseStats, ZeekLogParser, unescape

log = logging.getLogger(__name__)

#: Fields held as int64 (-1 = unset) rather than text.
INT_FIELDS = frozenset({"id.orig_p", "id.resp_p", "orig_p", "resp_p", "orig_bytes", "resp_bytes",
                        "orig_pkts", "resp_pkts", "missed_bytes", "trans_id", "qtype", "rcode",
                        "status_code", "request_body_len", "response_body_len", "trans_depth"})

#: Bytes read per block: one batch per block between header lines. 1 MiB measured best here
#: (64 KiB blocks cost about twice the CPU per line in pyarrow's per-call overhead).
DEFAULT_BATCH_BYTES = 1 << 20

_INT_TYPES = frozenset({"count", "int", "port"})
_TEXT_TYPES = frozenset({"string", "addr", "subnet", "enum", "pattern"})


@dataclass
class ZeekBatch:
    """Consecutive records of one Zeek log file (one stream), as columns.

    A batch read from a file keeps its block's bytes (up to `batch_bytes`) for `record`: keep the
    dicts a rule needs, not the batch, beyond the tick that handles it."""

    stream: str
    path: str
    columns: dict[str, np.ndarray]
    lineno: np.ndarray                      # 1-based line number of each row (error messages)
    #: the per-line parser's dict of row i (the fields asked for): the rare rows a rule acts on
    record_of: Callable[[int], dict[str, Any]] | None = None
    #: where the reader stands after this batch: for a file, the byte offset just after its last
    #: line (of the decompressed stream for .gz), a valid place to resume (`iter_batches(start=)`)
    end: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: text columns also held as (codes, uniques): `uniques` distinct, `uniques[codes]` equal to
    #: the column. The columnar TSV path fills it for the columns it read dictionary-encoded;
    #: `codes()` computes it for the others on first use
    dicts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: text columns asked for as deferred (`iter_batches(lazy=, kept=)`): strings made for the
    #: rows taken (`deferred.DeferredText`); `column()` makes them all
    deferred: dict[str, DeferredText] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lineno.shape[0])

    def column(self, name: str, default: Any = "") -> np.ndarray:
        """The named column, or a constant one when the log lacks the field."""
        col = self.columns.get(name)
        if col is not None:
            return col
        lazy = self.deferred.get(name)
        if lazy is not None:        # asked for whole: made once, then an ordinary column
            col = self.columns[name] = np.asarray(lazy)
            return col
        if name == "ts":
            return np.full(len(self), np.nan)
        if name in INT_FIELDS:
            return np.full(len(self), -1, dtype=np.int64)
        out = np.empty(len(self), dtype=object)
        out[:] = default
        return out

    def codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(int64 codes, distinct values) of a text column, `uniques[codes]` being the column:
        per-value work (a verdict, a lookup) runs once per distinct value, then `result[codes]`
        spreads it over the rows. Free for the columns read dictionary-encoded; for others one
        dict pass over the column, kept."""
        got = self.dicts.get(name)
        if got is None:
            col = self.column(name)
            index: dict[Any, int] = {}
            codes = np.fromiter((index.setdefault(v, len(index)) for v in col.tolist()),
                                dtype=np.int64, count=len(col))
            uniques = np.empty(len(index), dtype=object)
            uniques[:] = list(index)
            got = self.dicts[name] = (codes, uniques)
        return got

    def record(self, i: int) -> dict[str, Any]:
        """Row i as the per-line parser (scheduler.collect.zeeklog) would have returned it."""
        if self.record_of is None:
            raise RuntimeError(f"{self.path}: this batch cannot rebuild its records")
        return self.record_of(int(i))


def batch_from_records(stream: str, path: str, records: Sequence[dict[str, Any]],
                       lineno: Sequence[int] | None = None) -> ZeekBatch:
    """A batch from per-line parser dicts: tests, and inputs that arrive as records (the
    osquery-less emulation, JSON objects from elsewhere). The dicts themselves back `record`."""
    recs = list(records)
    cols = columns_from_records(recs, record_names(recs))
    n = len(recs)
    ln = np.asarray(lineno if lineno is not None else range(1, n + 1), dtype=np.int64)
    return ZeekBatch(stream=stream, path=path, columns=cols, lineno=ln,
                     record_of=recs.__getitem__)


# -- the column conventions, one value at a time (the reference the fast path must equal) --------

def convention(name: str, value: Any) -> Any:
    """The column value of one per-line parser value: what `columns[name][i]` holds."""
    if name == "ts":
        return _float(value)
    if name in INT_FIELDS:
        return _int(value)
    return _text(value)


def flat_get(rec: dict[str, Any], name: str) -> Any:
    """`rec[name]`, or for a dotted name the nested JSON object's value ({"id": {"orig_h"}})."""
    v = rec.get(name)
    if v is not None or "." not in name:
        return v
    head, tail = name.split(".", 1)
    sub = rec.get(head)
    return flat_get(sub, tail) if isinstance(sub, dict) else None


def record_names(records: Iterable[dict[str, Any]],
                 wanted: frozenset[str] | None = None) -> list[str]:
    """Column names of records in first-seen order: scalar keys, and the dotted paths of nested
    objects' keys (those in `wanted`, when given)."""
    names: list[str] = []
    seen: set[str] = set()

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for k, v in obj.items():
            name = prefix + k
            if isinstance(v, dict):
                walk(v, name + ".")
            elif name not in seen and (not prefix or wanted is None or name in wanted):
                seen.add(name)
                names.append(name)

    for r in records:
        walk(r, "")
    return names


def columns_from_records(recs: Sequence[dict[str, Any]], names: Iterable[str]
                         ) -> dict[str, np.ndarray]:
    """Columns of parser dicts after the conventions (the slow, always-right path)."""
    cols: dict[str, np.ndarray] = {}
    n = len(recs)
    for name in names:
        values = [flat_get(r, name) for r in recs]
        if name == "ts":
            cols[name] = np.array([_float(v) for v in values], dtype=np.float64)
        elif name in INT_FIELDS:
            cols[name] = np.array([_int(v) for v in values], dtype=np.int64)
        else:
            col = np.empty(n, dtype=object)
            col[:] = [_text(v) for v in values]
            cols[name] = col
    return cols


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return float("nan")
    return f


def _int(v: Any) -> int:
    if type(v) is not int:
        try:
            v = int(float(v))
        except (TypeError, ValueError, OverflowError):
            return -1
    return v if -(1 << 63) <= v < (1 << 63) else -1


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, set, frozenset)):
        return ",".join(str(x) for x in v)
    return str(v)


# -- pyarrow, imported on first use (the CLI and the osquery-only paths never pay for it) ---------

@functools.lru_cache(maxsize=1)
def _arrow() -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    class A:
        pass
    a = A()
    import pyarrow.json as pjson
    a.pa, a.pc, a.csv, a.json = pa, pc, pcsv, pjson
    a.errors = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                pa.ArrowKeyError, pa.ArrowIndexError, pa.ArrowException)
    return a


@functools.lru_cache(maxsize=64)
def _csv_options(names: tuple[str, ...], include: tuple[str, ...], sep: str,
                 block_size: int, kinds: tuple[str, ...] | None = None,
                 unset: str = "-") -> tuple[Any, Any, Any]:
    """pyarrow's option objects for one header (built once: they cost more than a small run).
    `kinds` (one per `include`, see `_read_kind`) says how pyarrow reads each column; None: all
    as plain strings. Numbers are null where `unset`; text is never null."""
    a = _arrow()
    pa = a.pa
    types = {"str": pa.string(), "kept": pa.string(),
             "dict": pa.dictionary(pa.int32(), pa.string()),
             "dconv": pa.dictionary(pa.int32(), pa.string()),
             "float": pa.float64(), "int": pa.int64()}
    kinds = kinds if kinds is not None else ("str",) * len(include)
    numeric = any(k in ("float", "int") for k in kinds)
    return (a.csv.ReadOptions(column_names=list(names), block_size=block_size, use_threads=False),
            a.csv.ParseOptions(delimiter=sep, quote_char=False, escape_char=False,
                               double_quote=False, newlines_in_values=False,
                               ignore_empty_lines=True),
            a.csv.ConvertOptions(include_columns=list(include),
                                 column_types={n: types[k] for n, k in zip(include, kinds)},
                                 null_values=[unset] if numeric else [],
                                 strings_can_be_null=False,
                                 quoted_strings_can_be_null=False, check_utf8=True))


#: zeeklog.JSON_FIELD_TYPES as pyarrow types (checked, not only read): a value of another JSON
#: type makes pyarrow refuse the run, as the per-line parser would refuse the line.
def _json_type(name: str) -> Any:
    pa = _arrow().pa
    types = zeeklog.JSON_FIELD_TYPES.get(name)
    if name == "ts" or types == zeeklog._NUM:
        return pa.float64()
    if types == (int,) or (types is None and name in INT_FIELDS):
        return pa.int64()
    if types == (list,):
        return pa.list_(pa.float64() if name == "TTLs" else pa.string())
    return pa.string()


@functools.lru_cache(maxsize=32)
def _json_schema(wanted: frozenset[str]) -> tuple[Any, frozenset[str]] | None:
    """(schema, wanted) for JSON runs asking for `wanted`, or None when a wanted field's text
    would differ from str() of the per-line parser's value (lists, non-integer numbers)."""
    pa = _arrow().pa
    fields: dict[str, Any] = {}
    for name in sorted(wanted):
        t = _json_type(name)
        if (pa.types.is_list(t) or (t == pa.float64() and name != "ts")) and \
                name not in INT_FIELDS:
            return None
        fields[name] = t
    for name in zeeklog.JSON_FIELD_TYPES:
        if name not in fields and name != "container":
            fields[name] = _json_type(name)
    fields.setdefault("ts", pa.float64())
    return pa.schema(list(fields.items())), frozenset(wanted)


def _read_tsv(seg: bytes, names: Sequence[str], include: Sequence[str], sep: str,
              kinds: tuple[str, ...] | None = None, unset: str = "-") -> Any:
    """One run of TSV data lines as a pyarrow Table (raises on bad input): string columns, or
    typed per `kinds`. Single-threaded: on a 2-core box the threads bought no CPU, and a batch
    is small."""
    a = _arrow()
    block = 1 << max(20, (len(seg) + 1).bit_length())   # the whole run in one parse block
    ro, po, co = _csv_options(tuple(names), tuple(include), sep, block, kinds, unset)
    return a.csv.read_csv(a.pa.py_buffer(seg), read_options=ro, parse_options=po,
                          convert_options=co)


#: A dictionary-read text column with more distinct values than half the rows of a run this
#: long (Zeek's uid) is read as plain strings afterwards: hashing buys nothing there.
_DENSE_MIN_ROWS = 256


def _time_column(col: Any) -> np.ndarray:
    """A float64 `ts` column pyarrow parsed (null where unset) as float64, NaN where unset. A
    non-finite value that was not unset ("nan", "inf", an overflow) is a malformed line to the
    per-line parser: the run is refused."""
    arr = (_arrow().pc.fill_null(col, float("nan")) if col.null_count else col).to_numpy()
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad != col.null_count:
        raise _Reject("time value not finite")
    return arr


def _int_column(col: Any) -> np.ndarray:
    """An int64 column pyarrow parsed (null where unset) with -1 where unset."""
    return (_arrow().pc.fill_null(col, -1) if col.null_count else col).to_numpy()


def _indexes(raw: list[str], marker: str, chunks: int) -> list[int]:
    """Where `marker` is among a dictionary column's raw values: at most once when they are one
    chunk's dictionary (one C search), else a scan."""
    if chunks == 1:
        try:
            return [raw.index(marker)]
        except ValueError:
            return []
    return [i for i, v in enumerate(raw) if v == marker]


def _merge_uniques(codes: np.ndarray, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) with equal `values` merged into one entry, first-seen order."""
    index: dict[str, int] = {}
    remap = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        remap[i] = index.setdefault(v, len(index))
    uniques = np.empty(len(index), dtype=object)
    uniques[:] = list(index)
    return remap[codes], uniques


def _finish_text(unset: str, empty: str, values: list[str]) -> list[str]:
    """A deferred text column's raw values after the convention (`_convert`'s for text): the
    markers "" (judged on the raw value: a raw "\\x2d" is the text "-"), escapes decoded."""
    return ["" if v == unset or v == empty else unescape(v) if "\\x" in v else v
            for v in values]


@functools.lru_cache(maxsize=8)
def _text_finish(unset: str, empty: str) -> Callable[[list[str]], list[str]]:
    """`_finish_text` for one header's markers: one object per marker pair, so the deferred
    columns of a file's batches can be recognised as finished alike."""
    return functools.partial(_finish_text, unset, empty)


class _Reject(Exception):
    """The columnar path cannot vouch for this run: parse it line by line instead."""


@dataclass(slots=True)
class _Lines:
    """Where the lines of a block are: byte starts/ends (newline and trailing CR excluded) and
    each line's first byte (0 for a blank line)."""

    starts: np.ndarray
    ends: np.ndarray
    first: np.ndarray
    stray_cr: bool        # a CR that is not part of a CRLF: pyarrow would split the line there


def _plain_lines(data: bytes) -> int | None:
    """The number of lines of a block with no '#', '{' or CR anywhere (so no header or JSON
    line), else None. Single-byte searches only (memchr; a two-byte pattern such as "\\n#" is
    ten times slower in a Zeek log, where every line has a newline)."""
    if not data or b"#" in data or b"{" in data or b"\r" in data:
        return None
    n = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))  # 6x bytes.count
    return n if data.endswith(b"\n") else n + 1


def _index_lines(data: bytes) -> _Lines:
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate((np.zeros(1, dtype=np.int64), nl + 1))
    ends = np.concatenate((nl, np.array([len(data)], dtype=np.int64)))
    if data.endswith(b"\n") or not data:
        starts, ends = starts[:-1], ends[:-1]
    stray = False
    if b"\r" in data:
        stray = data.count(b"\r") != data.count(b"\r\n")
        ends = ends - ((ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13))
    lens = ends - starts
    first = np.zeros(len(starts), dtype=np.uint8)
    if len(arr):
        nonblank = lens > 0
        first[nonblank] = arr[starts[nonblank]]
    return _Lines(starts, ends, first, stray)


#: A record asked of one of a plain block's last this many rows is found by walking back from
#: the block's end (`_tail_line`) rather than by indexing every line of the block.
_TAIL_WALK = 256


def _tail_line(seg: bytes, back: int) -> tuple[int, int]:
    """(start, end) bytes of the line `back` lines before the last one of `seg` (0: the last;
    newline excluded; the last line may lack its newline)."""
    end = len(seg) - 1 if seg.endswith(b"\n") else len(seg)
    start = seg.rfind(b"\n", 0, end) + 1
    for _ in range(back):
        end = start - 1
        start = seg.rfind(b"\n", 0, end) + 1
    return start, end


class _RowLines:
    """The lines of a columnar run's rows (`rel[i]`: row i's line in `seg`), decoded as the
    per-line reader decodes them: for `record(i)` and the deferred columns. The run's line
    index is built on first need; a row near the end of a plain block (every line a row) is
    found by walking back from the end instead (the tail of a run cut at a replay chunk takes
    the record path: ~1000x cheaper than indexing the whole block's lines)."""

    __slots__ = ("seg", "rel", "plain", "index")

    def __init__(self, seg: bytes, rel: np.ndarray, plain: bool) -> None:
        self.seg, self.rel, self.plain = seg, rel, plain
        self.index: _Lines | None = None

    def __len__(self) -> int:
        return len(self.rel)

    def text(self, i: int) -> str:
        j = int(self.rel[i])
        n = len(self.rel)
        if self.index is None and self.plain and n - j <= _TAIL_WALK:
            a, b = _tail_line(self.seg, n - 1 - j)
        else:
            if self.index is None:
                self.index = _index_lines(self.seg)
            a, b = int(self.index.starts[j]), int(self.index.ends[j])
        return self.seg[a:b].decode("utf-8", errors="replace")


class _LineField:
    """Field `j` (of the #fields) of a run's rows, from their lines: a deferred column's source
    (`deferred.DeferredText`). The columnar parse took the run, so every row has its fields."""

    __slots__ = ("lines", "sep", "j")

    def __init__(self, lines: _RowLines, sep: str, j: int) -> None:
        self.lines, self.sep, self.j = lines, sep, j

    def __len__(self) -> int:
        return len(self.lines)

    def raw(self, rows: np.ndarray | None) -> list[str]:
        text, sep, j = self.lines.text, self.sep, self.j
        it = range(len(self.lines)) if rows is None else rows.tolist()
        return [text(i).split(sep)[j] for i in it]


class BlockParser:
    """Turns blocks of complete lines of ONE file into ZeekBatch objects.

    Stateful like `ZeekLogParser` (which it holds, for the headers and for every line the columnar
    parse cannot vouch for): feed blocks in file order. `stats` counts as the per-line parser
    does (lines, records, headers, blank, bad_lines, bad_by_file)."""

    def __init__(self, path: str | os.PathLike[str], stream: str | None = None,
                 fields: Iterable[str] | None = None, stats: ParseStats | None = None,
                 header: Iterable[str] = (), lazy: Iterable[str] = (),
                 kept: Iterable[str] = ()) -> None:
        self.path = str(path)
        self.stream = stream or Path(self.path).name.split(".")[0]
        self.fields: frozenset[str] | None = frozenset(fields) if fields is not None else None
        #: text fields the TSV columnar path leaves deferred (`ZeekBatch.deferred`)
        self.lazy = frozenset(lazy)
        #: text fields the TSV columnar path parses but leaves in pyarrow's hands (deferred too)
        self.kept = frozenset(kept) - self.lazy
        self.stats = stats if stats is not None else ParseStats()
        self.parser = ZeekLogParser(self.path, fields=self.fields, stats=self.stats)
        self.columnar_runs = 0   # runs parsed by pyarrow
        self.line_runs = 0       # runs parsed line by line (JSON, or the columnar parse refused)
        self.block_lines = 0     # lines in the last block given to parse_block
        self._dense: set[str] = set()   # text columns read plain: about one value per row
        self.prime(header)

    def prime(self, header: Iterable[str]) -> None:
        """Header lines read earlier (a checkpoint's): the state, without counting them."""
        s = self.stats
        before = (s.lines, s.headers)
        for h in header:
            self.parser.parse_line(h, 0)
        s.lines, s.headers = before

    def rename(self, path: str) -> None:
        """The same file under a new name (rotated by rename): warnings name the new one."""
        self.path = self.parser.path = str(path)

    def parse_block(self, data: bytes, first_lineno: int = 1, offset: int = 0
                    ) -> list[ZeekBatch]:
        """Batches of `data` (complete lines; the last may lack its newline), whose first line is
        line `first_lineno` of the file and starts at byte `offset`: one per run of data lines
        between header lines (runs without records give none). Sets `block_lines`."""
        lines = _plain_lines(data) if self.parser.field_names else None
        if lines is not None:
            # the common block: TSV data lines only. With no blank line (then pyarrow's rows are
            # fewer than the lines: refused) every line is a row, so no line index is needed
            # unless a record is asked for
            try:
                batch = self._columnar(data, lines, None, first_lineno, offset + len(data))
            except _Reject as why:
                log.debug("%s:%d: block line by line (%s)", self.path, first_lineno, why)
            else:
                self._count_columnar(len(batch), len(batch))
                self.block_lines = len(batch)
                return [batch]
        idx = _index_lines(data)
        n = len(idx.starts)
        self.block_lines = n
        out: list[ZeekBatch] = []
        heads = np.flatnonzero(idx.first == 35).tolist()     # '#'
        prev = 0
        for h in heads + [n]:
            if h > prev:
                batch = self._run(data, idx, prev, h, first_lineno, offset)
                if batch is not None:
                    out.append(batch)
            if h < n:
                text = data[idx.starts[h]:idx.ends[h]].decode("utf-8", errors="replace")
                self.parser.parse_line(text, first_lineno + h)
            prev = h + 1
        return out

    def _count_columnar(self, lines: int, records: int) -> None:
        self.columnar_runs += 1
        self.stats.lines += lines
        self.stats.blank += lines - records
        self.stats.records += records

    # -- one run of data lines --------------------------------------------------------------------
    def _run(self, data: bytes, idx: _Lines, a: int, b: int, first_lineno: int,
             offset: int) -> ZeekBatch | None:
        first = idx.first[a:b]
        rows = np.flatnonzero(idx.ends[a:b] > idx.starts[a:b])   # non-blank lines of the run
        stop = int(idx.starts[b]) if b < len(idx.starts) else len(data)
        end = offset + stop
        if not len(rows):
            self.stats.lines += b - a
            self.stats.blank += b - a
            return None
        n_json = int(np.count_nonzero(first == 123))               # '{'
        parse: Callable[..., ZeekBatch] | None = None
        if n_json == 0 and not idx.stray_cr and self.parser.field_names:
            parse = self._columnar
        elif n_json == len(rows) and not idx.stray_cr and self._json_schema() is not None:
            parse = self._json_columnar
        if parse is not None:
            seg = data[int(idx.starts[a]):stop]
            try:
                batch = parse(seg, len(rows), rows, first_lineno + a, end)
            except _Reject as why:
                log.debug("%s:%d-%d: line by line (%s)", self.path, first_lineno + a,
                          first_lineno + b - 1, why)
            else:
                self._count_columnar(b - a, len(batch))
                return batch
        return self._by_line(data, idx, a, b, first_lineno, end,
                             mode="json" if n_json == len(rows) else "lines")

    def _by_line(self, data: bytes, idx: _Lines, a: int, b: int, first_lineno: int, end: int,
                 mode: str) -> ZeekBatch | None:
        """The per-line parser over the run: it counts and names the bad lines."""
        self.line_runs += 1
        parse = self.parser.parse_line
        recs: list[dict[str, Any]] = []
        linenos: list[int] = []
        starts, ends = idx.starts, idx.ends
        for i in range(a, b):
            text = data[starts[i]:ends[i]].decode("utf-8", errors="replace")
            rec = parse(text, first_lineno + i)
            if rec is not None:
                recs.append(rec)
                linenos.append(first_lineno + i)
        if not recs:
            return None
        names = record_names(recs, self.fields)
        cols = columns_from_records(recs, names)
        return ZeekBatch(stream=self.stream, path=self.path, columns=cols,
                         lineno=np.asarray(linenos, dtype=np.int64), record_of=recs.__getitem__,
                         end=end, meta={"mode": mode})

    def _tsv_names(self) -> list[str]:
        names = self.parser.field_names
        keep: list[str] = []
        for n in names:
            if (self.fields is None or n in self.fields) and n not in keep:
                keep.append(n)
        return keep

    def _columnar(self, seg: bytes, expected: int, row_lines: np.ndarray | None,
                  first_line: int, end: int) -> ZeekBatch:
        """`seg`: TSV data lines under the current header, the first being line `first_line`;
        `expected` rows at `row_lines` (which of its lines are rows; None: all)."""
        p = self.parser
        names = p.field_names
        sep = p.separator
        if not names:
            raise _Reject("data before any #fields")
        if len(set(names)) != len(names):
            raise _Reject("duplicate field names")
        if len(sep) != 1 or ord(sep) > 127 or sep in "\r\n":
            raise _Reject(f"separator {sep!r}")
        types = p.field_types if len(p.field_types) == len(names) else ["string"] * len(names)
        ztype = dict(zip(names, types))
        keep = self._tsv_names()
        kinds = self._read_kinds(keep, ztype)
        lazy = [n for n, k in zip(keep, kinds) if k == "lazy"]
        if lazy:            # read from the rows' lines when asked for (`_batch`), not parsed
            keep, kinds = ([x for x, k in zip(seq, kinds) if k != "lazy"]
                           for seq in (keep, kinds))
        a_ = _arrow()
        try:
            table = _read_tsv(seg, names, keep or names[:1], sep, tuple(kinds) if keep else None,
                              p.unset_field)
        except a_.errors as exc:
            raise _Reject(str(exc)[:200]) from None
        if table.num_rows != expected:
            raise _Reject(f"{table.num_rows} rows for {expected} lines")
        escapes = b"\\" in seg and b"\\x" in seg     # memchr first: a backslash is rare
        cols: dict[str, np.ndarray] = {}
        dicts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        deferred: dict[str, DeferredText] = {}
        for name, kind in zip(keep, kinds):
            col = table.column(name)
            if kind == "kept":
                deferred[name] = DeferredText(ArrowText(col),
                                              _text_finish(p.unset_field, p.empty_field))
            elif kind == "dict":
                codes, uniques = self._dict_column(name, col, escapes)
                dicts[name] = (codes, uniques)
                cols[name] = uniques[codes]
                if len(uniques) * 2 > len(codes) >= _DENSE_MIN_ROWS:
                    self._dense.add(name)   # nearly one value per row (uid): plain from now on
            elif kind == "float":
                cols[name] = _time_column(col)
            elif kind == "int":
                cols[name] = _int_column(col)
            elif kind == "dconv":
                cols[name], distinct = self._dict_convert(name, ztype[name], col)
                if distinct * 2 > len(cols[name]) >= _DENSE_MIN_ROWS:
                    self._dense.add(name)   # nearly one value per row: plain from now on
            else:
                cols[name] = self._convert(name, ztype[name], col, escapes)
        batch = self._batch(seg, cols, table.num_rows, row_lines, first_line, end, "columnar",
                            lazy)
        batch.dicts = dicts
        batch.deferred.update(deferred)
        return batch

    def _read_kinds(self, keep: Sequence[str], ztype: dict[str, str]) -> tuple[str, ...]:
        """How pyarrow reads each kept column: "float" (ts of type time) and "int" (the
        `INT_FIELDS` of an integer type) parsed in C, null where unset; "dict" (text the fast
        path keeps as text: string, addr, enum, string sets...) dictionary-encoded, so a value
        repeated in the run becomes one Python str, not one per row; "str" for the rest (typed
        fields `_convert` handles, and text columns seen to hold about one value per row);
        "lazy" (a plain string field asked for as deferred) not parsed at all: read from the
        lines of the rows asked for (`DeferredText`, `_LineField`); "kept" (one asked for as
        kept) parsed as strings and left in pyarrow's hands (`deferred.ArrowText`: cheaper
        where many rows are taken, as a conn.log's evidence samples take its uids); "dconv"
        (other typed fields: TTLs, bools, doubles) dictionary-encoded too, converted once per
        distinct value (`_dict_convert`)."""
        p = self.parser
        out: list[str] = []
        for name in keep:
            t = ztype[name]
            inner = zeeklog._container_inner(t)
            if name == "ts" and t == "time":
                out.append("float")
            elif name in INT_FIELDS and t in _INT_TYPES:
                out.append("int")
            elif (name in self.lazy or name in self.kept) and name != "ts" and \
                    name not in INT_FIELDS and inner is None and \
                    zeeklog._scalar_converter(t) is None:
                out.append("lazy" if name in self.lazy else "kept")
            elif name not in INT_FIELDS and name != "ts" and name not in self._dense and (
                    (inner is None and zeeklog._scalar_converter(t) is None) or
                    (inner is not None and zeeklog._scalar_converter(inner) is None
                     and p.set_separator == ",")):
                out.append("dict")
            elif name not in INT_FIELDS and name != "ts" and name not in self._dense:
                out.append("dconv")
            else:
                out.append("str")
        return tuple(out)

    def _dict_column(self, name: str, col: Any, escapes: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(codes, uniques) of a dictionary-read text column after the conventions: the escapes
        decoded and the unset/empty markers made "" on the distinct values only, then merged
        where two raw values became one ("-" and "(empty)", "\\x41" and "A"): `uniques` holds
        distinct values and `uniques[codes]` is the column."""
        p = self.parser
        parts_codes: list[np.ndarray] = []
        parts_uniq: list[np.ndarray] = []
        base = 0
        for chunk in col.chunks:
            uniq = chunk.dictionary.to_numpy(zero_copy_only=False)
            parts_codes.append(chunk.indices.to_numpy().astype(np.int64) + base)
            parts_uniq.append(uniq)
            base += len(uniq)
        if len(parts_codes) == 1:
            codes, uniques = parts_codes[0], parts_uniq[0]
        else:
            codes = (np.concatenate(parts_codes) if parts_codes
                     else np.zeros(0, dtype=np.int64))
            uniques = np.empty(base, dtype=object)
            if base:
                uniques[:] = np.concatenate(parts_uniq)
        raw = uniques.tolist()
        # the markers are raw values (a raw "\\x2d" is the text "-", not unset); a chunk's
        # dictionary holds each raw value once, so with one chunk list.index (C) finds them
        marks = [i for m in (p.unset_field, p.empty_field) for i in _indexes(raw, m,
                                                                              len(parts_codes))]
        values = raw
        if escapes:
            values = [unescape(v) if "\\x" in v else v for v in raw]
        for i in marks:
            values[i] = ""
        changed = bool(marks) or (escapes and values != raw)
        if not changed and len(parts_codes) == 1:
            return codes, uniques
        return _merge_uniques(codes, values)

    def _dict_convert(self, name: str, ztype: str, col: Any) -> tuple[np.ndarray, int]:
        """(the column, how many distinct raw values) of a typed field read dictionary-encoded
        (`_read_kinds`' "dconv": a DNS answer's TTLs, a bool, a double): the per-line parser's
        conversion and its checks (`_convert_slow`) once per distinct raw value, spread over the
        rows. A value the parser refuses refuses the run, as it would row by row."""
        inner = zeeklog._container_inner(ztype)
        parts: list[np.ndarray] = []
        distinct = 0
        for chunk in col.chunks:
            raw = chunk.dictionary.to_pylist()
            distinct += len(raw)
            parts.append(self._convert_slow(name, ztype, inner, raw)[chunk.indices.to_numpy()])
        if len(parts) == 1:
            return parts[0], distinct
        return (np.concatenate(parts) if parts else np.empty(0, dtype=object)), distinct

    def _batch(self, seg: bytes, cols: dict[str, np.ndarray], nrows: int,
               row_lines: np.ndarray | None, first_line: int, end: int, mode: str,
               lazy: Sequence[str] = ()) -> ZeekBatch:
        """A batch whose `record(i)` re-parses row i's line of `seg` with the per-line parser
        in the header state of this run (a snapshot: later headers do not change it). `lazy`:
        fields left out of `cols`, read from the rows' lines when asked for
        (`ZeekBatch.deferred`)."""
        snap = copy.copy(self.parser)
        snap.stats = ParseStats()
        rel = (row_lines if row_lines is not None
               else np.arange(nrows, dtype=np.int64)).astype(np.int64)
        linenos = rel + first_line
        lines = _RowLines(seg, rel, row_lines is None)
        path = self.path

        def record_of(i: int) -> dict[str, Any]:
            rec = snap.parse_line(lines.text(i), int(linenos[i]))
            if rec is None:
                raise RuntimeError(f"{path}:{int(linenos[i])}: the per-line parser refused a "
                                   "line the columnar parse took")
            return rec

        deferred: dict[str, DeferredText] = {}
        if lazy:
            finish = _text_finish(snap.unset_field, snap.empty_field)
            names = list(snap.field_names)
            for name in lazy:
                deferred[name] = DeferredText(_LineField(lines, snap.separator,
                                                         names.index(name)), finish)
        return ZeekBatch(stream=self.stream, path=self.path, columns=cols, lineno=linenos,
                         record_of=record_of, end=end, meta={"mode": mode},
                         deferred=deferred)

    # -- JSON lines ---------------------------------------------------------------------------------
    def _json_schema(self) -> Any:
        """pyarrow's explicit schema for this reader's JSON runs, or None when the fields asked
        for need the per-line parser (all fields; a list or non-integer number as text)."""
        if self.fields is None:
            return None
        return _json_schema(self.fields)

    def _json_columnar(self, seg: bytes, expected: int, row_lines: np.ndarray,
                       first_line: int, end: int) -> ZeekBatch:
        """A run of JSON lines through pyarrow.json with a schema that makes it refuse whatever
        the per-line parser's type checks (zeeklog.JSON_FIELD_TYPES) would, and anything where
        the two could differ (nested objects, null, a "container" field): then line by line."""
        if seg.count(b"{") != expected:
            raise _Reject("nested object (or '{' in a value)")
        if b"null" in seg or b'"container"' in seg:
            raise _Reject("null or a container field")
        a = _arrow()
        schema, wanted = self._json_schema()
        try:
            table = a.json.read_json(
                a.pa.py_buffer(seg),
                read_options=a.json.ReadOptions(use_threads=False,
                                                block_size=1 << max(20, (len(seg) + 1).bit_length())),
                parse_options=a.json.ParseOptions(explicit_schema=schema,
                                                  unexpected_field_behavior="ignore",
                                                  newlines_in_values=False))
        except a.errors as exc:
            raise _Reject(str(exc)[:200]) from None
        if table.num_rows != expected:
            raise _Reject(f"{table.num_rows} rows for {expected} lines")
        cols: dict[str, np.ndarray] = {}
        for name in schema.names:
            col = table.column(name)
            present = col.null_count < len(col)
            if schema.field(name).type == a.pa.float64() and present:
                vals = col.to_numpy()
                if not np.isfinite(vals[~np.isnan(vals)]).all() or (
                        np.isnan(vals).sum() != col.null_count):
                    raise _Reject(f"{name}: not a finite number")
            if name not in wanted or not present:
                continue
            if name == "ts":
                cols[name] = col.to_numpy()
            elif name in INT_FIELDS:
                cols[name] = a.pc.fill_null(col, -1).to_numpy()
            else:
                cols[name] = a.pc.fill_null(col, "").to_numpy(zero_copy_only=False)
        return self._batch(seg, cols, expected, row_lines, first_line, end, "json-columnar")

    def _convert(self, name: str, ztype: str, col: Any, escapes: bool = True) -> np.ndarray:
        """One string column to its convention, vectorised for the common types; anything the
        fast casts cannot vouch for raises _Reject (the run is then parsed line by line)."""
        a = _arrow()
        pa, pc = a.pa, a.pc
        p = self.parser
        unset, empty = p.unset_field, p.empty_field
        inner = zeeklog._container_inner(ztype)
        try:
            if inner is None and ztype == "time" and name == "ts":
                isnull = pc.equal(col, unset)
                if pc.any(isnull).as_py():
                    col = pc.if_else(isnull, pa.scalar(None, pa.string()), col)
                arr = pc.cast(col, pa.float64()).to_numpy()
                finite = np.isfinite(arr)
                if not finite.all() and not np.array_equal(~finite, isnull.to_numpy()):
                    raise _Reject("time value not finite")
                return arr
            if inner is None and ztype in _INT_TYPES and name in INT_FIELDS:
                isnull = pc.equal(col, unset)
                if pc.any(isnull).as_py():
                    col = pc.if_else(isnull, pa.scalar(None, pa.string()), col)
                return pc.fill_null(pc.cast(col, pa.int64()), -1).to_numpy()
            if name not in INT_FIELDS and name != "ts" and (
                    (inner is None and zeeklog._scalar_converter(ztype) is None) or
                    (inner is not None and zeeklog._scalar_converter(inner) is None
                     and p.set_separator == ",")):
                arr = col.to_numpy(zero_copy_only=False)
                if escapes:
                    esc = pc.match_substring(col, "\\x").to_numpy(zero_copy_only=False)
                    for i in np.flatnonzero(esc).tolist():
                        arr[i] = unescape(arr[i])
                # after the escapes: a raw "\x2d" is the text "-", not unset
                blank = pc.is_in(col, value_set=pa.array([unset, empty], pa.string()))
                arr[blank.to_numpy(zero_copy_only=False)] = ""
                return arr
        except a.errors as exc:
            raise _Reject(f"{name}: {str(exc)[:160]}") from None
        return self._convert_slow(name, ztype, inner, col.to_pylist())

    def _convert_slow(self, name: str, ztype: str, inner: str | None,
                      raw: list[str]) -> np.ndarray:
        """Other typed fields (bools, doubles, numeric sets...): the per-line parser's conversion
        of each value, then the convention."""
        p = self.parser
        unset, empty, ssep = p.unset_field, p.empty_field, p.set_separator
        conv = zeeklog._scalar_converter(inner if inner is not None else ztype)
        values: list[Any] = []
        try:
            for v in raw:
                if v == unset:
                    values.append(None)
                elif inner is not None:
                    values.append([] if v == empty else
                                  [conv(x) if conv is not None else unescape(x)
                                   for x in v.split(ssep)])
                elif conv is not None:
                    values.append(conv(v))
                else:
                    values.append("" if v == empty else unescape(v))
        except (ValueError, TypeError, OverflowError) as exc:  # MalformedLine is a ValueError
            raise _Reject(f"{name}: {str(exc)[:160]}") from None
        if name == "ts":
            return np.array([_float(v) for v in values], dtype=np.float64)
        if name in INT_FIELDS:
            return np.array([_int(v) for v in values], dtype=np.int64)
        out = np.empty(len(values), dtype=object)
        out[:] = [_text(v) for v in values]
        return out


# -- files ----------------------------------------------------------------------------------------

def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_binary(path: str) -> Any:
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


_READ_ERRORS = (OSError, EOFError, zlib.error)


def iter_blocks(handle: Any, batch_bytes: int, final: bool = True
                ) -> Iterator[tuple[bytes, BaseException | None]]:
    """(block, None) of complete lines from a binary handle, each about `batch_bytes` (longer
    when one line is). At the end, a last line without newline is a line when `final` (a finished
    file), else it is left unread. A read error (truncated .gz) ends the blocks with
    (b"", the error): the complete lines read before it come first."""
    parts: list[bytes] = []
    size = 0
    read = getattr(handle, "read1", handle.read)
    while True:
        try:
            chunk = read(batch_bytes)
        except _READ_ERRORS as exc:
            data = b"".join(parts)
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut], None
            yield b"", exc
            return
        if chunk:
            parts.append(chunk)
            size += len(chunk)
            if size < batch_bytes:
                continue
        if chunk:
            # the block ends at the last read's last newline: one copy of the block's bytes
            # (none when a read ends at a newline alone), not a join and then a slice of it
            last = parts[-1]
            cut = last.rfind(b"\n") + 1
            if cut:
                if len(parts) == 1 and cut == len(last):
                    yield last, None
                else:
                    yield b"".join(parts[:-1] + [memoryview(last)[:cut]]), None
                rest = last[cut:]
                parts, size = ([rest], len(rest)) if rest else ([], 0)
                continue
        data = b"".join(parts)
        if not chunk:
            if data and final:
                yield data, None
            elif data:
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield data[:cut], None
            return
        cut = data.rfind(b"\n") + 1
        if not cut:                      # one line longer than batch_bytes: read on
            parts, size = [data], len(data)
            continue
        yield data[:cut], None
        rest = data[cut:]
        parts, size = ([rest], len(rest)) if rest else ([], 0)


def _prefix(handle: Any, start: int) -> tuple[list[str], int]:
    """The header lines and line count of the first `start` bytes (to resume mid-file)."""
    header: list[str] = []
    lines = 0
    left = start
    pending = b""
    while left > 0:
        chunk = handle.read(min(left, DEFAULT_BATCH_BYTES))
        if not chunk:
            break
        left -= len(chunk)
        data = pending + chunk
        lines += data.count(b"\n", len(pending))
        cut = data.rfind(b"\n") + 1
        for raw in data[:cut].split(b"\n"):
            if raw.startswith(b"#"):
                header = update_header(header, raw.decode("utf-8", errors="replace").rstrip("\r"))
        pending = data[cut:]
    return header, lines


def header_lines(data: bytes) -> list[str]:
    """The '#' lines of a block of lines, in order (CR and newline stripped)."""
    idx = _index_lines(data)
    return [data[s:e].decode("utf-8", errors="replace").rstrip("\r")
            for s, e in zip(idx.starts[idx.first == 35].tolist(),
                            idx.ends[idx.first == 35].tolist())]


def update_header(header: list[str], text: str) -> list[str]:
    """The header block in force after '#' line `text`: a new block starts with #separator or
    after #close (the tailer keeps this in its checkpoint to prime a parser mid-file)."""
    if text.startswith("#separator") or (header and header[-1].startswith("#close")):
        return [text]
    return header + [text]


def iter_batches(path: str | os.PathLike[str], stream: str | None = None,
                 fields: Iterable[str] | None = None, stats: ParseStats | None = None,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, start: int = 0,
                 inflate_ahead: int = 0, lazy: Iterable[str] = (),
                 kept: Iterable[str] = ()) -> Iterator[ZeekBatch]:
    """The records of one Zeek log (TSV or JSON lines, plain or .gz) as ZeekBatch objects.

    `fields` limits the columns (None: all); `stats` counts lines, records and malformed lines
    as `zeeklog.iter_zeek_log` does, and the two give the same records. `start` resumes at a byte
    offset (a previous batch's `end`): the header in force there is read from the bytes before
    it. A truncated .gz yields the complete lines before the damage, counted in
    `stats.io_errors` with a warning; nothing raises on bad input. `inflate_ahead` > 0: a .gz
    file's blocks are read and inflated that many ahead in a thread (`readahead`; zlib runs
    without the GIL) while its blocks are parsed; the same blocks in the same order. `lazy`:
    text fields (of those asked for) whose TSV columns may stay deferred (`ZeekBatch.deferred`:
    strings made for the rows taken), not even parsed (read from the rows' lines when asked
    for), for a consumer that reads few of their rows; `kept`: deferred too, but parsed (for
    one that reads many)."""
    p = str(path)
    stats = stats if stats is not None else ParseStats()
    stats.files += 1
    try:
        handle = _open_binary(p)
    except OSError as exc:
        stats.io_errors += 1
        log.warning("cannot read %s: %s", p, exc)
        return
    with handle:
        header: list[str] = []
        lineno = 0
        if start:
            try:
                header, lineno = _prefix(handle, start)
            except _READ_ERRORS as exc:
                stats.io_errors += 1
                log.warning("cannot resume %s at offset %d: %s", p, start, exc)
                return
        bp = BlockParser(p, stream=stream, fields=fields, stats=stats, header=header,
                         lazy=lazy, kept=kept)
        offset = start
        blocks = iter_blocks(handle, batch_bytes)
        if inflate_ahead and isinstance(handle, gzip.GzipFile):
            blocks = read_ahead(blocks, inflate_ahead, name=f"inflate {os.path.basename(p)}")
        try:
            for block, exc in blocks:
                if exc is not None:
                    stats.io_errors += 1
                    log.warning("stopped reading %s after line %d: %s: %s", p, lineno,
                                type(exc).__name__, exc)
                    return
                yield from bp.parse_block(block, lineno + 1, offset)
                offset += len(block)
                lineno += bp.block_lines
        finally:
            blocks.close()      # a reading thread stops before its file is closed


def parse_only(path: str | os.PathLike[str], fields: Iterable[str] | None = None,
               batch_bytes: int = DEFAULT_BATCH_BYTES) -> int:
    """The bare columnar parse (the bench's floor): blocks of a TSV log through pyarrow's CSV
    reader into string columns of `fields`, nothing converted; returns the rows parsed. Header
    lines set the field names; a run pyarrow refuses is skipped (not counted)."""
    wanted = frozenset(fields) if fields is not None else None
    names: list[str] = []
    sep = "\t"
    rows = 0
    with _open_binary(str(path)) as handle:
        for block, exc in iter_blocks(handle, batch_bytes):
            if exc is not None:
                break
            idx = _index_lines(block)
            heads = np.flatnonzero(idx.first == 35).tolist()
            prev = 0
            for h in heads + [len(idx.starts)]:
                if h > prev and names:
                    seg = block[idx.starts[prev]:(idx.starts[h] if h < len(idx.starts)
                                                  else len(block))]
                    keep = [n for n in names if wanted is None or n in wanted] or names[:1]
                    try:
                        rows += _read_tsv(seg, names, keep, sep).num_rows
                    except _arrow().errors:
                        pass
                if h < len(idx.starts):
                    text = block[idx.starts[h]:idx.ends[h]].decode("utf-8", errors="replace")
                    if text.startswith("#fields"):
                        names = text.split(sep)[1:]
                prev = h + 1
    return rows
