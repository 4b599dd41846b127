"""The daemon's engine state across restarts: the close-lag queue's network chunks are stored
once each (`window_chunks`), not rewritten on every collect, and come back as they were.

Why: at 20,000 lines/s the queue holds lag_s of rows (~200k); writing them all into the state
JSON on every collect was most of the daemon's time (bench/bench_daemon_ingest.py)."""
from __future__ import annotations

import json
import random

import numpy as np

from model.features import FeatureWindows
from model.records import NET_FIELDS
from model.window_agg import columns_of
from scheduler.collect.state import StateStore
from scheduler.pipeline import (PIPELINE_SCHEMA, EngineState, Pipeline, chunk_from_json,
                                chunk_to_json)
from test_window_agg import W, random_nets


def fresh() -> Pipeline:
    p = Pipeline()
    p.collect_windows = True
    p.close_lag_s = 10.0
    return p


def store_at(path) -> StateStore:
    s = StateStore(path)
    s.ensure_schema(PIPELINE_SCHEMA)
    return s


def windows(p: Pipeline):
    p.close_windows()
    p._score_closed()
    fw = FeatureWindows.concat(p.collected)
    return list(zip(fw.container_id, fw.window_start.tolist())), fw.X


def test_a_chunk_round_trips_with_its_dtypes():
    recs = random_nets(random.Random(5), 400, cids=("c1",))
    cols = columns_of(recs)
    back = chunk_from_json(chunk_to_json(cols))
    assert [back.record(i) for i in range(len(back))] == recs
    assert back.ts.dtype == np.float64 and back.resp_p.dtype == np.int64
    assert back.container_id.dtype == object
    one = chunk_from_json(chunk_to_json(cols.take(slice(0, 1))))
    assert one.record(0) == recs[0]
    stored = json.loads(chunk_to_json(cols))
    assert "f8" in stored["ts"] and "i8" in stored["resp_p"]     # numbers as bytes, not text


def test_a_chunk_an_earlier_version_stored_reads_back() -> None:
    """A state DB written before numbers went as bytes: every column a JSON list (a constant
    one as {"all": v}). A daemon upgraded in place resumes from it."""
    recs = random_nets(random.Random(6), 50, cids=("c1",))
    cols = columns_of(recs)
    old = {"rows": len(cols)}
    for f in NET_FIELDS:
        col = getattr(cols, f)
        old[f] = {"all": col[0].item() if hasattr(col[0], "item") else col[0]} \
            if f == "container_id" else col.tolist()
    back = chunk_from_json(json.dumps(old))
    assert [back.record(i) for i in range(len(back))] == recs
    assert back.ts.dtype == np.float64 and back.bytes_in.dtype == np.int64


def test_restarts_store_each_chunk_once_and_give_the_windows_of_an_uninterrupted_run(tmp_path):
    rng = random.Random(41)
    recs = random_nets(rng, 4000, cids=("c1", "c2", "c3"), span=5 * W)
    cols = columns_of(recs)
    parts = np.array_split(np.arange(len(recs)), 16)

    def feed(p: Pipeline, chunk) -> None:
        part = cols.take(chunk)
        p._window_add_nets(part)
        p._advance(float(np.max(part.ts)))
        p._score_closed()             # the daemon scores what closed before it saves

    whole = fresh()
    for chunk in parts:
        feed(whole, chunk)

    db = tmp_path / "state.db"
    p = fresh()
    collected = []
    inserts: list[str] = []
    restarts = 0
    saved_upto = 0                       # seqs only grow: chunks above this one are new
    for i, chunk in enumerate(parts):
        feed(p, chunk)
        store = store_at(db)
        store.conn.set_trace_callback(
            lambda sql: inserts.append(sql) if "INSERT OR REPLACE INTO window_chunks" in sql
            else None)
        state = EngineState(p, "daemon")
        before = len(inserts)
        with store.transaction() as conn:
            state.save(store, conn)
        with store.transaction() as conn:     # nothing new: no chunk is written again
            state.save(store, conn)
        queued = {it[1] for it in p._wqueue if it[2] == "N"}
        assert len(inserts) - before == sum(1 for seq in queued if seq > saved_upto)
        stored = {r[0] for r in store.conn.execute("SELECT seq FROM window_chunks")}
        assert stored == queued          # released chunks are deleted with the same commit
        if i % 3 == 2:                   # a restart: a new engine from the state DB
            collected += p.collected
            p = fresh()
            assert EngineState(p, "daemon").load(store)
            assert {it[1] for it in p._wqueue if it[2] == "N"} == queued
            restarts += 1
        saved_upto = max(queued | {saved_upto})
        store.close()
    collected += p.collected
    p.collected = collected
    assert restarts == 5
    wa, wb = windows(whole), windows(p)
    assert len(wa[0]) > 10
    assert wa[0] == wb[0] and np.array_equal(wa[1], wb[1])
