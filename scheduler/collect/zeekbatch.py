"""Zeek log records a batch at a time, as columns: the engine's unit of Zeek input.

Why columns: a sensor on a busy tap writes hundreds of thousands of lines a second, and the
engine's per-line work (a dict per line, a dozen `dict.get`s, a dataclass per record) capped it at
about 50k lines/s. A batch holds only the columns the engine reads, as numpy arrays, so
attribution, the rules' name lookups and the window counts run once per batch over arrays. The
few rows a rule may act on are handed to the per-record rule code as the exact dict the per-line
parser gives (`ZeekBatch.record`), so every verdict comes from one implementation.

Column conventions (a field the log does not have is absent from `columns`):
* "ts": float64 epoch seconds (NaN where unset or unparseable);
* port and count fields ("id.orig_p", "id.resp_p", "orig_bytes", "resp_bytes", ...): int64,
  -1 where unset;
* every other field: a numpy object array of str, "" where unset ("-") or empty ("(empty)"),
  Zeek's \\xNN escapes decoded; set/vector fields keep their raw comma-joined text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

#: Fields held as int64 (-1 = unset) rather than text.
INT_FIELDS = frozenset({"id.orig_p", "id.resp_p", "orig_p", "resp_p", "orig_bytes", "resp_bytes",
                        "orig_pkts", "resp_pkts", "missed_bytes", "trans_id", "qtype", "rcode",
                        "status_code", "request_body_len", "response_body_len", "trans_depth"})


@dataclass
class ZeekBatch:
    """Consecutive records of one Zeek log file (one stream), as columns."""

    stream: str
    path: str
    columns: dict[str, np.ndarray]
    lineno: np.ndarray                      # 1-based line number of each row (error messages)
    #: the per-line parser's dict of row i (the fields asked for): the rare rows a rule acts on
    record_of: Callable[[int], dict[str, Any]] | None = None
    end: Any = None                         # where the reader stands after this batch
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lineno.shape[0])

    def column(self, name: str, default: Any = "") -> np.ndarray:
        """The named column, or a constant one when the log lacks the field."""
        col = self.columns.get(name)
        if col is not None:
            return col
        if name == "ts":
            return np.full(len(self), np.nan)
        if name in INT_FIELDS:
            return np.full(len(self), -1, dtype=np.int64)
        out = np.empty(len(self), dtype=object)
        out[:] = default
        return out

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
    names: list[str] = []
    seen: set[str] = set()
    for r in recs:
        for k in r:
            if k not in seen:
                seen.add(k)
                names.append(k)
    cols: dict[str, np.ndarray] = {}
    n = len(recs)
    for name in names:
        values = [r.get(name) for r in recs]
        if name == "ts":
            cols[name] = np.array([_float(v) for v in values], dtype=np.float64)
        elif name in INT_FIELDS:
            cols[name] = np.array([_int(v) for v in values], dtype=np.int64)
        else:
            col = np.empty(n, dtype=object)
            col[:] = [_text(v) for v in values]
            cols[name] = col
    ln = np.asarray(lineno if lineno is not None else range(1, n + 1), dtype=np.int64)
    return ZeekBatch(stream=stream, path=path, columns=cols, lineno=ln,
                     record_of=recs.__getitem__)


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _int(v: Any) -> int:
    if type(v) is int:
        return v
    try:
        return int(float(v))
    except (TypeError, ValueError, OverflowError):
        return -1


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, set, frozenset)):
        return ",".join(str(x) for x in v)
    return str(v)
