"""Integer codes for a column of text: `factorize`, the engine's one hash-based grouping.

Why its own module: the engine judges each distinct address, name or state once per batch
(attribution, rules, window counts), which needs (codes, distinct values in order of first
appearance) of object columns many times a second. pandas' `factorize` did it, but importing
pandas costs a process about 50 MiB of RSS, a fifth of the daemon's budget, for this one
function. pyarrow (already the Zeek reader) hashes as fast (`dictionary_encode`, measured here
within 0.8-1.4x of pandas per element on 100k-row columns); a dict is quicker for a few rows and
takes any hashable value (numbers, tuples, None) that a text array cannot hold.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

#: Below this many rows a dict is quicker than building an Arrow array.
SMALL = 256


def factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(codes as int64, distinct values as an object array in order of first appearance):
    `uniques[codes]` equals `values`. Missing values (None) are values like any other."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        arr = values if values.dtype == object else values.astype(object)
    else:                               # a list (of tuples, say): one element per row
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
    first = arr[0] if arr.size else None
    if isinstance(first, str) and arr[-1] == first and bool((arr == first).all()):
        # one value throughout (a batch's `kind`, most rows' empty `geo_service`, a chunk's
        # container): one comparison pass, ~10x less than hashing
        uniques = np.empty(1, dtype=object)
        uniques[0] = first
        return np.zeros(arr.size, dtype=np.int64), uniques
    if arr.size >= SMALL:
        try:
            text = pa.array(arr, type=pa.string())
        except (pa.ArrowException, TypeError, ValueError):
            text = None                 # not all text: numbers, tuples...
        if text is not None and not text.null_count:
            enc = text.dictionary_encode()
            uniques = np.empty(len(enc.dictionary), dtype=object)
            uniques[:] = enc.dictionary.to_pylist()
            return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), uniques
    values = arr.tolist()
    index: dict[Any, int] = dict.fromkeys(values)      # first appearance order, in C
    for i, v in enumerate(index):
        index[v] = i
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=arr.size)
    uniques = np.empty(len(index), dtype=object)
    uniques[:] = list(index)
    return codes, uniques


def constant(n: int, value: Any) -> np.ndarray:
    """An object column of `n` rows that all hold `value` (the same object in every row):
    `np.full(n, value, dtype=object)` converts a string through a text array and makes a new
    string per row, ~2.3x the time of a fill (a batch run's kind, its empty fields)."""
    out = np.empty(n, dtype=object)
    out.fill(value)
    return out


def per_code(coded: tuple[np.ndarray, Any], fn: Any, dtype: Any = bool) -> np.ndarray:
    """`fn(v)` for every row of a (codes, values) column, calling `fn` once per value (also for
    values no row has): the engine's per-distinct-value verdicts."""
    codes, values = coded
    if len(codes) == 0:
        return np.zeros(0, dtype=dtype)
    table = np.empty(len(values), dtype=dtype)
    table[:] = [fn(v) for v in values]
    return table[codes]


def stable_order(codes: np.ndarray, n: int) -> np.ndarray:
    """`np.argsort(codes, kind="stable")` for codes in [0, n): the same order (a stable sort
    depends only on the values), through a 16-bit copy when n allows, which numpy sorts by
    radix (~6x faster than the merge sort of int64 on a batch's few thousand rows: once per
    batch for the windows' grouping by container)."""
    if n <= 1 << 16 and codes.size:
        return np.argsort(codes.astype(np.uint16), kind="stable")
    return np.argsort(codes, kind="stable")


def nonempty(coded: tuple[np.ndarray, Any]) -> np.ndarray:
    """Per row of a (codes, values) text column: is its value not ""? One comparison of the
    values in C (`per_code`'s Python call per value was a tenth of a conn.log's engine time:
    the windows ask once per stretch of rows, about every 30 rows there)."""
    codes, values = coded
    if len(codes) == 0:
        return np.zeros(0, dtype=bool)
    if not isinstance(values, np.ndarray) or values.dtype != object:
        return per_code(coded, _not_empty)
    return (values != "")[codes]


def _not_empty(value: Any) -> bool:
    return value != ""


def distinct_codes(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """(codes into the distinct values, how many there are) of a (codes, values) column whose
    values may repeat (a builder's, `NetColumns.codes`): equal values get one code."""
    canon, uniques = factorize(values)
    return canon[codes], int(uniques.size)


def distinct_keys(keys: np.ndarray, last: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(the distinct keys ascending, each one's first row, each one's last row or None) of
    non-negative int64 keys. A table as long as the largest key when that is not much longer
    than the keys (`ufunc.at`: 35 us on 2,000 rows here, where np.unique's sort took 210);
    np.unique otherwise."""
    n = int(keys.size)
    span = int(keys.max()) + 1 if n else 0
    if span <= 4 * n + 1024:
        rows = np.arange(n)
        first = np.full(span, n, dtype=np.int64)
        np.minimum.at(first, keys, rows)
        uk = np.flatnonzero(first < n)
        lasts = None
        if last:
            lasts = np.full(span, -1, dtype=np.int64)
            np.maximum.at(lasts, keys, rows)
            lasts = lasts[uk]
        return uk, first[uk], lasts
    uk, firsts = np.unique(keys, return_index=True)
    if not last:
        return uk, firsts, None
    _, from_end = np.unique(keys[::-1], return_index=True)
    return uk, firsts, n - 1 - from_end


def last_rows_in_first_order(keys: np.ndarray) -> np.ndarray:
    """The last row of each distinct key (non-negative int64 keys), listed in the order the
    keys first appear: `dict.update` over these rows' (key, value) leaves what it leaves over
    all rows (a key's place is its first appearance, its value its last)."""
    if keys.size < 2:
        return np.arange(keys.size)
    _, first, last = distinct_keys(keys, last=True)
    return last[np.argsort(first, kind="stable")]
