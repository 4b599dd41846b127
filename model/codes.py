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
