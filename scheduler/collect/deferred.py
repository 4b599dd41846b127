"""Text columns made only for the rows asked for.

Why: of the columns the engine reads from a Zeek log, some only matter for the few rows made
records (a window's evidence sample, a rule's record, the daemon's close-lag queue): the uid,
the URI, the user agent, the method. Making a Python str of every row of them cost about a
quarter of the reader's time on an http.log (the uid alone, one distinct value per row, 0.044 s a
million lines), and even parsing them into pyarrow strings cost a tenth of the reader; the batch
path never looks at them. A `DeferredText` keeps where the values are (`source`: the block's
lines, `zeekbatch._LineField`, or a pyarrow array, `ArrowText`) and the column convention (`finish`: the unset/empty markers, Zeek's
escapes), and makes the strings of the rows taken only.

It stands in for a numpy object array where the engine hands columns on (NetColumns): `len`,
indexing (an int gives the str; a slice, an index array or a boolean mask gives another
DeferredText of those rows, nothing made), `tolist()`, `numpy.asarray` (every row made now: what
code that needs an array, such as the daemon's queue, gets), and `concat` (rows of several
batches, still deferred: the mixed streams of a replay).

A source has `len()` and `raw(rows)`: the raw values (before `finish`) of an int64 array of its
row numbers, or of all its rows for None.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

#: values as the source holds them -> the column's values (the reader's convention)
Finish = Callable[[list[str]], list[str]]


class ArrowText:
    """A pyarrow string array (or chunked array) as a source: a column the reader parsed and
    left in pyarrow's hands (`zeekbatch` "kept" fields)."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def raw(self, rows: np.ndarray | None) -> list[str]:
        return (self.array if rows is None else self.array.take(rows)).to_pylist()


class _Pieces:
    """Several sources one after the other (`DeferredText.concat` of other batches' rows)."""

    __slots__ = ("parts", "starts")

    def __init__(self, parts: list[tuple[Any, np.ndarray]]) -> None:
        self.parts = parts                          # (source, its row numbers)
        sizes = [len(rows) for _, rows in parts]
        self.starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def raw(self, rows: np.ndarray | None) -> list[str]:
        runs = self.parts if rows is None else self.runs(np.asarray(rows, dtype=np.int64))
        return [v for src, pos in runs for v in src.raw(pos)]

    def runs(self, rows: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """Rows `rows` as (source, its row numbers) runs, in the order given."""
        piece = np.searchsorted(self.starts, rows, side="right") - 1
        out: list[tuple[Any, np.ndarray]] = []
        if not len(rows):
            return out
        cuts = (np.flatnonzero(piece[1:] != piece[:-1]) + 1).tolist()
        for a, b in zip([0, *cuts], [*cuts, len(rows)]):
            p = int(piece[a])
            src, pos = self.parts[p]
            out.append((src, pos[rows[a:b] - self.starts[p]]))
        return out


class DeferredText:
    """Rows `rows` (None: all) of `source`, as text after `finish`."""

    __slots__ = ("_source", "_finish", "_rows")
    dtype = np.dtype(object)
    ndim = 1

    def __init__(self, source: Any, finish: Finish, rows: np.ndarray | None = None) -> None:
        self._source = source
        self._finish = finish
        self._rows = rows

    def __len__(self) -> int:
        return len(self._source) if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _positions(self) -> np.ndarray:
        return np.arange(len(self._source), dtype=np.int64) if self._rows is None else self._rows

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {int(key)} of a {n}-row column")
            row = i if self._rows is None else int(self._rows[i])
            return self._finish(self._source.raw(np.array([row], dtype=np.int64)))[0]
        return DeferredText(self._source, self._finish, self._positions()[key])

    def tolist(self) -> list[str]:
        return self._finish(self._source.raw(self._rows))

    def __iter__(self) -> Any:
        return iter(self.tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        out[:] = self.tolist()
        return out if dtype is None or np.dtype(dtype) == out.dtype else out.astype(dtype)

    def __repr__(self) -> str:
        return f"DeferredText({len(self)} rows)"

    @staticmethod
    def concat(parts: Sequence[Any]) -> Any:
        """Columns one after the other: a DeferredText when they all are (with one finish),
        else an object array (every row made)."""
        if not parts or not all(type(p) is DeferredText and p._finish is parts[0]._finish
                                for p in parts):
            return np.concatenate([np.asarray(p) for p in parts])
        finish = parts[0]._finish
        if all(p._source is parts[0]._source for p in parts):
            return DeferredText(parts[0]._source, finish,
                                np.concatenate([p._positions() for p in parts]))
        pieces: list[tuple[Any, np.ndarray]] = []
        for p in parts:
            if type(p._source) is _Pieces:          # a concatenation of concatenations: flat
                pieces.extend(p._source.runs(p._positions()))
            else:
                pieces.append((p._source, p._positions()))
        return DeferredText(_Pieces(pieces), finish)
