"""The replay's item order without an object per Zeek row (`scheduler.replay.ReplayItems`).

The replay used to sort one (time, source, reading order, kind, payload) tuple per item; the
item table orders arrays instead. Here random items with many equal times across and within
sources must come out exactly as that sort put them, position by position, and a chunk's
dispatch items must be the same items (runs of Zeek rows as "zrun" items).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from scheduler.replay import ReplayItems


class _Batch:
    """Stands in for a ZeekBatch: only its identity and length matter to the order."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n


def _case(seed: int) -> tuple[ReplayItems, list[tuple[float, str, Any]]]:
    rnd = random.Random(seed)
    times = [float(t) for t in range(20)]          # few distinct times: many ties
    osq = [(rnd.choice(times), 0, "osq", f"osq{i}") for i in range(rnd.randint(0, 30))]
    k8s = [(rnd.choice(times), 5, "k8s", f"k8s{i}") for i in range(rnd.randint(0, 10))]
    batches, zts, zsrc, zbatch, zrow = [], [], [], [], []
    for stream in range(1, 5):
        for _ in range(rnd.randint(0, 3)):
            b = _Batch(f"s{stream}b{len(batches)}", rnd.randint(1, 40))
            for r in range(len(b)):
                zts.append(rnd.choice(times))
                zsrc.append(stream)
                zbatch.append(len(batches))
                zrow.append(r)
            batches.append(b)
    # the old way: one tuple per item in reading order (osquery, Zeek streams, audit), sorted
    reading = [(t, s, k, p) for t, s, k, p in osq] + \
        [(t, s, "zrow", (batches[b], r)) for t, s, b, r in zip(zts, zsrc, zbatch, zrow)] + \
        [(t, s, k, p) for t, s, k, p in k8s]
    want = [(t, k, p) for t, s, _, k, p in
            sorted(((t, s, i, k, p) for i, (t, s, k, p) in enumerate(reading)),
                   key=lambda x: (x[0], x[1], x[2]))]
    zeek = {"ts": np.asarray(zts, dtype=float), "source": np.asarray(zsrc, dtype=np.int64),
            "batch": np.asarray(zbatch, dtype=np.int64), "row": np.asarray(zrow, dtype=np.int64)}
    return ReplayItems(osq + k8s, batches, zeek), want


@pytest.mark.parametrize("seed", range(12))
def test_items_come_in_the_order_of_the_tuple_sort(seed: int) -> None:
    items, want = _case(seed)
    assert len(items) == len(want)
    assert [items[i] for i in range(len(items))] == want
    assert items.times.tolist() == [t for t, _, _ in want]
    assert items.others() == [w for w in want if w[1] != "zrow"]


@pytest.mark.parametrize("seed", range(12))
def test_dispatch_items_are_the_same_items_in_runs(seed: int) -> None:
    items, want = _case(seed)
    step = random.Random(seed).randint(1, 17)
    for lo in range(0, len(items), step):
        hi = min(len(items), lo + step)
        got: list[tuple[str, Any]] = []
        previous = ""
        for kind, payload in items.dispatch_items(lo, hi):
            if kind == "zrun":
                batches, bid, row = payload
                assert len(row) and previous != "zrun"      # a run is whole
                got += [("zrow", (batches[int(b)], int(r))) for b, r in zip(bid, row)]
            else:
                got.append((kind, payload))
            previous = kind
        assert got == [(k, p) for _, k, p in want[lo:hi]]
