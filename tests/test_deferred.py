"""DeferredText (scheduler.collect.deferred) stands in for a numpy object array of str: every
selection the engine makes of a NetColumns column must give what the same selection of the
array gives, and whatever needs every row (the daemon's queue, a concatenation) gets them."""
from __future__ import annotations

import numpy as np
import pytest

from model.records import NET_FIELDS, NetColumns
from model.window_agg import concat_columns
from scheduler.collect.deferred import DeferredText
from scheduler.pipeline import _shared_strings

RAW = ["a", "-", "b\\x2dc", "(empty)", "d", "e", "f", "g"]


def finish(values: list[str]) -> list[str]:
    return ["" if v in ("-", "(empty)") else v.replace("\\x2d", "-") for v in values]


class Source:
    """A source as the reader's are: len() and raw(rows); counts the rows it made."""

    def __init__(self, values: list[str]) -> None:
        self.values, self.made = values, 0

    def __len__(self) -> int:
        return len(self.values)

    def raw(self, rows: np.ndarray | None) -> list[str]:
        out = self.values if rows is None else [self.values[i] for i in rows.tolist()]
        self.made += len(out)
        return list(out)


def pair(values: list[str] = RAW) -> tuple[DeferredText, np.ndarray]:
    ref = np.empty(len(values), dtype=object)
    ref[:] = finish(values)
    return DeferredText(Source(values), finish), ref


SELECTIONS = [slice(None), slice(2, 6), slice(5, 100), slice(6, 2), slice(None, None, 2),
              slice(7, 0, -3), np.array([7, 0, 3, 3]), np.array([], dtype=np.int64),
              np.array([True, False, True, True, False, False, True, False])]


@pytest.mark.parametrize("outer", SELECTIONS, ids=repr)
@pytest.mark.parametrize("inner", SELECTIONS[:4] + SELECTIONS[-1:], ids=repr)
def test_selections_equal_the_arrays(inner: object, outer: object) -> None:
    lazy, ref = pair()
    a, r = lazy[inner], ref[inner]
    assert len(a) == len(r) and a.shape == r.shape and a.tolist() == r.tolist()
    if not (isinstance(outer, np.ndarray) and outer.dtype == bool and len(outer) != len(r)):
        if not (isinstance(outer, np.ndarray) and outer.size and outer.max() >= len(r)):
            assert a[outer].tolist() == r[outer].tolist()
    for i in range(-len(r), len(r)):
        assert a[i] == r[i] and type(a[i]) is str
    with pytest.raises(IndexError):
        a[len(r)]
    got = np.asarray(a)
    assert got.dtype == object and got.tolist() == r.tolist() and list(a) == r.tolist()


def test_concat_stays_deferred_and_makes_only_the_rows_taken() -> None:
    lazy, ref = pair()
    one = DeferredText.concat([lazy[np.array([6, 1])], lazy[np.array([0])]])
    assert type(one) is DeferredText and one.tolist() == ref[[6, 1, 0]].tolist()
    other, ref2 = pair(RAW[::-1])          # other batches (sources): still deferred
    third, ref3 = pair(["x", "-", "z"])
    mixed = DeferredText.concat([lazy[np.array([2, 5])], other[np.array([3, 4, 0])],
                                 third[1:]])
    want = ref[[2, 5]].tolist() + ref2[[3, 4, 0]].tolist() + ref3[1:].tolist()
    assert type(mixed) is DeferredText and len(mixed) == 7
    made = lambda: sum(s._source.made for s in (lazy, other, third))     # noqa: E731
    before = made()
    assert mixed[np.array([6, 0, 3])].tolist() == [want[6], want[0], want[3]]
    assert made() - before == 3                                  # only the rows taken
    assert mixed.tolist() == want and [mixed[i] for i in range(7)] == want
    pick = np.array([1, 0, 4, 2, 3, 6, 5])           # several rows of each source, reordered
    assert mixed[pick].tolist() == [want[i] for i in pick]
    again = DeferredText.concat([mixed[np.array([4, 1])], third[:1], mixed[5:]])
    assert again.tolist() == [want[4], want[1], ref3[0], *want[5:]]  # flattened, in order
    plain = np.array(["p"], dtype=object)                        # an array among them: made
    assert DeferredText.concat([lazy[:1], plain]).tolist() == [ref[0], "p"]


def nets(n: int, lazy: DeferredText | None = None) -> NetColumns:
    cols = {}
    for f in NET_FIELDS:
        if f == "ts":
            cols[f] = np.arange(n, dtype=float)
        elif f in ("resp_p", "orig_p", "bytes_out", "bytes_in"):
            cols[f] = np.zeros(n, dtype=np.int64)
        else:
            cols[f] = np.array([f"{f}{i % 2}" for i in range(n)], dtype=object)
    if lazy is not None:
        cols["uid"] = lazy
    return NetColumns(**cols)


def test_netcolumns_with_a_deferred_column() -> None:
    """What the engine does with a NetColumns whose uid is deferred: records and tuples of
    rows, take, concatenation, and the daemon's queue (materialized, then shared strings)."""
    lazy, ref = pair()
    cols = nets(len(ref), lazy)
    assert cols.record(2).uid == ref[2]
    assert [r.uid for r in cols.records(np.array([3, 0]))] == [ref[3], ref[0]]
    taken = cols.take(np.array([7, 5, 2]))
    assert type(taken.uid) is DeferredText and taken.uid.tolist() == ref[[7, 5, 2]].tolist()
    both = concat_columns([cols.take(np.array([1])), taken])
    assert type(both.uid) is DeferredText and both.uid.tolist() == ref[[1, 7, 5, 2]].tolist()
    made = taken.materialized()
    assert all(isinstance(getattr(made, f), np.ndarray) for f in NET_FIELDS)
    assert made.uid.tolist() == ref[[7, 5, 2]].tolist()
    assert _shared_strings(made).uid.tolist() == ref[[7, 5, 2]].tolist()
    plain = nets(3)
    assert plain.materialized() is plain
