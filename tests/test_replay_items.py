"""The replay's item order, streamed (`scheduler.collect.replay_items`).

The replay used to sort one (time, source, reading order, kind, payload) tuple per item, every
item in memory. The cursor reads the Zeek files again a batch at a time, as late as the order
allows. Here random items with many equal times across and within sources, in files whose
batches are out of time order (a conn.log), with every batch kept, some or none, must come out
exactly as that sort put them, position by position; a chunk's dispatch items must be the same
items; memory must hold only the batches at the order's front; a file that changed between
the two readings must stop the replay naming it. Then whole replays: streamed equals read once,
resumed or not.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scheduler.collect.replay_items import ReplayItems, SourceFile, index_file


class _Batch:
    """Stands in for a ZeekBatch: its identity, length and row times matter to the order."""

    def __init__(self, name: str, ts: list[float]) -> None:
        self.name, self.ts = name, np.asarray(ts, dtype=float)

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        return self.name


class _Rows(list):
    """Stands in for a batch of osquery rows: a list, with its rows' times."""

    def __init__(self, items: list[tuple[float, int, str, Any]]) -> None:
        super().__init__(p for _, _, _, p in items)
        self.ts = np.asarray([t for t, _, _, _ in items], dtype=float)


def _times(batch: Any) -> np.ndarray:
    return batch.ts


def _files(rnd: random.Random, times: list[float]) -> list[tuple[int, list[_Batch]]]:
    """(source, batches) per file: streams 1..4, up to 3 files each, up to 4 batches a file;
    rows in a batch at random times, so batches overlap in time and are not in time order."""
    out = []
    for stream in range(1, 5):
        for fi in range(rnd.randint(0, 3)):
            bs = [_Batch(f"s{stream}f{fi}b{j}", [rnd.choice(times)
                                                 for _ in range(rnd.randint(0, 25))])
                  for j in range(rnd.randint(0, 4))]
            out.append((stream, bs))
    return out


def _case(seed: int, keep: int | None = None) -> tuple[ReplayItems, list[tuple[float, str, Any]]]:
    rnd = random.Random(seed)
    times = [float(t) for t in range(20)]          # few distinct times: many ties
    osq = [(rnd.choice(times), 0, "osq", f"osq{i}") for i in range(rnd.randint(0, 30))]
    k8s = [(rnd.choice(times), 5, "k8s", f"k8s{i}") for i in range(rnd.randint(0, 10))]
    spec = _files(rnd, times)
    # the old way: one tuple per item in reading order (osquery, Zeek files, audit), sorted
    reading = [(t, s, k, p) for t, s, k, p in osq] + \
        [(float(t), s, "zrow", (b, r)) for s, bs in spec for b in bs
         for r, t in enumerate(b.ts.tolist())] + [(t, s, k, p) for t, s, k, p in k8s]
    want = [(t, k, p) for t, s, _, k, p in
            sorted(((t, s, i, k, p) for i, (t, s, k, p) in enumerate(reading)),
                   key=lambda x: (x[0], x[1], x[2]))]
    budget = [rnd.randint(0, 120) if keep is None else keep]
    files = []
    whole = osq + k8s
    if osq and rnd.random() < 0.5:          # osquery rows read in batches, as the replay does
        size = rnd.randint(1, 9)
        rows = [_Rows(osq[i:i + size]) for i in range(0, len(osq), size)]
        f = SourceFile(source=0, name="osquery", read=lambda rows=rows: iter(rows),
                       times=_times, kind="osq")
        index_file(f, budget)
        files.append(f)
        whole = k8s
    for n, (s, bs) in enumerate(spec):
        f = SourceFile(source=s, name=f"file{n}", read=lambda bs=bs: iter(bs), times=_times)
        index_file(f, budget)
        files.append(f)
    return ReplayItems(whole, files), want


def _unrun(out: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    previous = ""
    for kind, payload in out:
        if kind == "zrun":
            batches, bid, row = payload
            assert len(row) and previous != "zrun"      # a run is whole
            got += [("zrow", (batches[int(b)], int(r))) for b, r in zip(bid, row)]
        else:
            got.append((kind, payload))
        previous = kind
    return got


@pytest.mark.parametrize("seed", range(16))
def test_items_come_in_the_order_of_the_tuple_sort(seed: int) -> None:
    for keep in (None, 0, 10 ** 6):
        items, want = _case(seed, keep)
        assert len(items) == len(want)
        c = items.cursor()
        assert c.items(len(items) + 5) == want
        assert c.pos == len(want) and c.items(3) == [] and c.batches_held == 0


@pytest.mark.parametrize("seed", range(16))
def test_dispatch_items_are_the_same_items_in_runs(seed: int) -> None:
    items, want = _case(seed)
    step = random.Random(seed).randint(1, 17)
    c = items.cursor()
    for lo in range(0, len(items), step):
        hi = min(len(items), lo + step)
        assert _unrun(c.dispatch_items(hi - lo)) == [(k, p) for _, k, p in want[lo:hi]]
        assert c.pos == hi


@pytest.mark.parametrize("seed", range(8))
def test_skipping_lands_where_the_order_says(seed: int) -> None:
    items, want = _case(seed, 0)
    if not want:
        return
    rnd = random.Random(seed)
    k = rnd.randrange(len(want))
    assert items.cursor().skip(k + 1) == want[k][0]
    t = rnd.choice([w[0] for w in want]) + rnd.choice([0.0, 0.5])
    limit = rnd.randint(0, len(want))
    c = items.cursor()
    c.skip_before(t, limit)
    first_at = next((i for i, w in enumerate(want) if w[0] >= t), len(want))
    at = c.pos
    assert at == min(first_at, limit)
    assert c.items(len(want)) == want[at:]


def test_only_the_batches_at_the_front_are_in_memory() -> None:
    """A log written in time order, 200 batches: at most two of its batches are held at once,
    and each is read when its rows come due, not before."""
    batches = [_Batch(f"b{j}", [j * 10.0 + r for r in range(10)]) for j in range(200)]
    reads: list[int] = []

    def read() -> Any:
        for j, b in enumerate(batches):
            reads.append(j)
            yield b
    f = SourceFile(source=1, name="http.log", read=read, times=_times)
    index_file(f, [0])
    reads.clear()
    osq = [(t * 1.0, 0, "osq", f"o{t}") for t in range(0, 2000, 7)]
    items = ReplayItems(osq, [f])
    c = items.cursor()
    most = 0
    while c.pos < len(items):
        got = c.items(13)
        most = max(most, c.batches_held)
        last_t = got[-1][0]
        assert max(reads) <= int(last_t // 10) + 1        # read no earlier than due
    assert most <= 2 and c.batches_held == 0


def test_a_conn_log_batch_is_read_before_its_earliest_row_comes_due() -> None:
    """Batches whose earliest rows go back in time (connections logged when they end): a later
    batch's early row must still come out in its place."""
    batches = [_Batch("b0", [50.0, 60.0]), _Batch("b1", [70.0, 80.0]), _Batch("b2", [10.0, 90.0])]
    f = SourceFile(source=1, name="conn.log", read=lambda: iter(batches), times=_times)
    index_file(f, [0])
    items = ReplayItems([(30.0, 0, "osq", "o")], [f])
    got = [(t, k) for t, k, _ in items.cursor().items(10)]
    assert got == [(10.0, "zrow"), (30.0, "osq"), (50.0, "zrow"), (60.0, "zrow"),
                   (70.0, "zrow"), (80.0, "zrow"), (90.0, "zrow")]


def test_a_file_that_changed_between_the_readings_stops_the_replay_naming_it() -> None:
    batches = [_Batch("b0", [1.0, 2.0]), _Batch("b1", [3.0, 4.0])]
    f = SourceFile(source=1, name="/logs/http.log", read=lambda: iter(batches), times=_times)
    index_file(f, [0])
    batches[0] = _Batch("b0", [1.0])              # a line gone from the first block
    c = ReplayItems([], [f]).cursor()
    with pytest.raises(RuntimeError, match="/logs/http.log changed"):
        c.items(10)


def test_a_file_still_being_written_is_replayed_as_far_as_it_was_indexed() -> None:
    """Lines appended after the index pass (the last block grew, a block was added) are left
    for the next run, not fed: the order's indexes stay those of the first pass."""
    batches = [_Batch("b0", [1.0, 2.0]), _Batch("b1", [3.0, 4.0])]
    f = SourceFile(source=1, name="conn.log", read=lambda: iter(batches), times=_times)
    index_file(f, [0])
    grown = _Batch("b1", [3.0, 4.0, 0.5])
    batches[1:] = [grown, _Batch("b2", [0.1])]
    items = ReplayItems([(3.5, 0, "osq", "o")], [f])
    got = items.cursor().items(10)
    assert [(t, k) for t, k, _ in got] == [(1.0, "zrow"), (2.0, "zrow"), (3.0, "zrow"),
                                           (3.5, "osq"), (4.0, "zrow")]
    assert got[2][2] == (grown, 0) and len(items) == 5


# ---- whole replays ------------------------------------------------------------------------------

def _alerts(res: Any) -> list[str]:
    return [json.dumps(a.to_dict(), sort_keys=True, default=str) for a in res.alerts]


@pytest.mark.parametrize("name", ["geo_lookup", "churn"])
def test_a_streamed_replay_equals_one_read_once(name: str) -> None:
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import replay

    rec = demo_data_dir() / name
    once = replay(rec, Config(), None, collect_windows=True, keep_rows=10 ** 9)
    streamed = replay(rec, Config(), None, collect_windows=True, keep_rows=0)
    assert _alerts(streamed) == _alerts(once) and streamed.items == once.items
    assert streamed.stats == once.stats
    a = [w.X.tolist() for w in once.windows]
    b = [w.X.tolist() for w in streamed.windows]
    assert a == b and len(a)


@pytest.fixture(scope="module")
def baselines() -> Any:
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import train_from_recordings

    return train_from_recordings([demo_data_dir() / "benign_long"], Config(), keep_rows=0)[0]


@pytest.mark.parametrize("kill_at", [2, 5])
def test_a_killed_streamed_replay_resumes_to_the_same_alerts(tmp_path: Path, baselines: Any,
                                                             kill_at: int) -> None:
    """Behaviour alerts need the windows open at the checkpoint rebuilt: the resumed replay
    re-feeds the hour before them, which a streamed cursor finds by skipping."""
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import replay

    rec = demo_data_dir() / "drift"
    want = replay(rec, Config(), baselines, state_db=tmp_path / "whole.db", chunk=150,
                  keep_rows=10 ** 9)

    class Killed(Exception):
        pass

    def kill(i: int) -> None:
        if i == kill_at:
            raise Killed

    db = tmp_path / "state.db"
    with pytest.raises(Killed):
        replay(rec, Config(), baselines, state_db=db, chunk=150, after_chunk=kill, keep_rows=0)
    again = replay(rec, Config(), baselines, state_db=db, chunk=150, keep_rows=0)
    assert again.resumed_from == 150 * kill_at
    assert _alerts(again) == _alerts(want)
    assert any(a.rule == "behaviour_anomaly" for a in want.alerts)


def test_a_malformed_line_is_counted_and_named_once_though_read_twice(
        tmp_path: Path, caplog: Any) -> None:
    import gzip
    import logging
    import shutil

    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import replay

    rec = tmp_path / "geo_lookup"
    shutil.copytree(demo_data_dir() / "geo_lookup", rec)
    src = rec / "zeek" / "dns.log.gz"
    lines = gzip.decompress(src.read_bytes()).decode().splitlines(keepends=True)
    first_data = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    lines.insert(first_data + 3, "not\ta\tzeek\tline\n")
    src.unlink()
    (rec / "zeek" / "dns.log").write_text("".join(lines))
    with caplog.at_level(logging.WARNING):
        res = replay(rec, Config(), None, keep_rows=0)
    named = [r for r in caplog.records if "malformed Zeek log line" in r.getMessage()]
    assert len(named) == 1 and "dns.log" in named[0].getMessage()
    assert res.stats["zeek"]["bad_lines"] == 1


def test_a_checkpoint_keeps_the_time_a_resume_refeeds_from(tmp_path: Path,
                                                           baselines: Any) -> None:
    """The checkpoint's `t_first` is the time the resume would find by reading up to the
    earliest open window's first item; with it the resume reads fewer batches (not the input
    up to there once more); a checkpoint without it (written before it existed) still resumes,
    and both resume to the same alerts."""
    import sqlite3

    from scheduler.collect import replay_items
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import ReplayStore, load_recording_items, replay

    rec = demo_data_dir() / "drift"
    want = replay(rec, Config(), baselines, state_db=tmp_path / "whole.db", chunk=150,
                  keep_rows=0)

    class Killed(Exception):
        pass

    def kill(i: int) -> None:
        if i == 4:
            raise Killed

    db = tmp_path / "state.db"
    with pytest.raises(Killed):
        replay(rec, Config(), baselines, state_db=db, chunk=150, after_chunk=kill, keep_rows=0)
    store = ReplayStore(db)
    name = f"replay:{rec.name}"
    st = store.load(name)
    store.close()
    start = int(st["position"])
    wpos = [p for _, _, p in st["pipeline"].get("open_windows", [])]
    first = min(wpos) if wpos else start
    _, items = load_recording_items(rec, keep_rows=0)
    assert st["t_first"] == items.cursor().skip(min(first, start - 1) + 1)
    old = tmp_path / "old.db"
    with sqlite3.connect(db) as src, sqlite3.connect(old) as dst:
        src.backup(dst)         # the WAL's commits too (a file copy may miss them)
    del st["t_first"]
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE pipeline_state SET data=? WHERE name=?", (json.dumps(st), name))

    real = replay_items.Cursor._read_batch

    def resume(path: Path) -> tuple[Any, int]:
        reads = [0]

        def counting(self: Any, fi: int) -> None:
            reads[0] += 1
            real(self, fi)

        replay_items.Cursor._read_batch = counting   # type: ignore[method-assign]
        try:
            res = replay(rec, Config(), baselines, state_db=path, chunk=150, keep_rows=0)
        finally:
            replay_items.Cursor._read_batch = real   # type: ignore[method-assign]
        return res, reads[0]

    again, reads = resume(db)
    again_old, reads_old = resume(old)
    assert again.resumed_from == again_old.resumed_from == start
    assert _alerts(again) == _alerts(again_old) == _alerts(want)
    assert 0 < reads < reads_old


def test_item_times_keep_only_what_a_checkpoint_may_ask() -> None:
    """`_ItemTimes`: a checkpoint's time is the earliest open window's first item's (or the
    last item's); chunks before it are dropped; an item fed before this run resumed has no
    time here (None: the resume then reads to find it)."""
    from scheduler.replay import _ItemTimes

    times = _ItemTimes()
    times.add(100, np.array([1.0, 2.0, 3.0]))
    times.add(103, np.array([4.0, 5.0]))
    assert times.checkpoint_time({"open_windows": [["c", 0, 101]]}, 105) == 2.0
    assert times.checkpoint_time({"open_windows": []}, 105) == 5.0        # the last item
    assert len(times._chunks) == 1                                           # 100-102 dropped
    assert times.checkpoint_time({"open_windows": [["c", 0, 40]]}, 105) is None
    times.add(105, np.array([6.0]))
    assert times.checkpoint_time({"open_windows": [["c", 0, 104], ["d", 1, 105]]}, 106) == 5.0
