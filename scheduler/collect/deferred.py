"""Text columns left in pyarrow's hands until rows of them are asked for.

Why: of the columns the engine reads from a Zeek log, some only matter for the few rows made
records (a window's evidence sample, a rule's record, the daemon's close-lag queue): the uid,
the URI, the user agent, the method. Making a Python str of every row of them cost about a
quarter of the reader's time on an http.log (the uid alone, one distinct value per row, 0.044 s a
million lines), and the batch path never looks at them. A `DeferredText` keeps pyarrow's string
array and the column convention (`finish`: the unset/empty markers, Zeek's escapes) and makes
the strings of the rows taken only.

It stands in for a numpy object array where the engine hands columns on (NetColumns): `len`,
indexing (an int gives the str; a slice, an index array or a boolean mask gives another
DeferredText of those rows, nothing copied), `tolist()`, and `numpy.asarray` (every row made
now: what code that needs an array, such as the daemon's queue, gets).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

#: values as pyarrow holds them -> the column's values (the reader's convention)
Finish = Callable[[list[str]], list[str]]


class DeferredText:
    """Rows `rows` (None: all) of a pyarrow string array, as text after `finish`."""

    __slots__ = ("_array", "_finish", "_rows")
    dtype = np.dtype(object)
    ndim = 1

    def __init__(self, array: Any, finish: Finish, rows: np.ndarray | None = None) -> None:
        self._array = array
        self._finish = finish
        self._rows = rows

    def __len__(self) -> int:
        return len(self._array) if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _positions(self) -> np.ndarray:
        return np.arange(len(self._array), dtype=np.int64) if self._rows is None else self._rows

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            n = len(self)
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {int(key)} of a {n}-row column")
            row = i if self._rows is None else int(self._rows[i])
            return self._finish([self._array[row].as_py()])[0]
        if isinstance(key, slice) and self._rows is None and key.step in (None, 1):
            start, stop, _ = key.indices(len(self._array))
            return DeferredText(self._array.slice(start, max(0, stop - start)), self._finish)
        return DeferredText(self._array, self._finish, self._positions()[key])

    def tolist(self) -> list[str]:
        arr = self._array if self._rows is None else self._array.take(self._rows)
        return self._finish(arr.to_pylist())

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
        """Columns one after the other: one DeferredText when they are all rows of one array
        (the parts of one batch), else an object array (every row made)."""
        if parts and all(type(p) is DeferredText for p in parts) and \
                all(p._array is parts[0]._array and p._finish is parts[0]._finish
                    for p in parts):
            return DeferredText(parts[0]._array, parts[0]._finish,
                                np.concatenate([p._positions() for p in parts]))
        return np.concatenate([np.asarray(p) for p in parts])
