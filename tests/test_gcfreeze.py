"""The replay feeds with its set-up frozen out of the collector's sight and thaws when it
returns (scheduler.gcfreeze): frozen, full collections skip the set-up; thawed, a process that
runs many replays (a backfill) can collect what each left behind."""
from __future__ import annotations

import gc

import pytest
from scheduler.collect.recording import demo_data_dir
from scheduler.config import Config
from scheduler.gcfreeze import frozen_setup
from scheduler.replay import replay


@pytest.fixture(autouse=True)
def _thawed() -> None:
    """A daemon built in-process by an earlier test froze this process for good."""
    gc.unfreeze()


def test_frozen_setup_freezes_then_thaws() -> None:
    assert gc.get_freeze_count() == 0
    keep = [object() for _ in range(10)] + [{"a": []}]
    with frozen_setup() as froze:
        assert froze
        assert gc.get_freeze_count() >= len(keep)
    assert gc.get_freeze_count() == 0


def test_a_nested_call_leaves_the_outer_freeze_alone() -> None:
    gc.freeze()                                  # as the daemon does at start-up
    try:
        outer = gc.get_freeze_count()
        with frozen_setup() as froze:
            assert not froze
        assert gc.get_freeze_count() == outer
    finally:
        gc.unfreeze()


def test_replay_feeds_frozen_and_returns_thawed() -> None:
    during: list[int] = []
    res = replay(demo_data_dir() / "geo_lookup", Config(), None, chunk=500,
                 after_chunk=lambda i: during.append(gc.get_freeze_count()))
    assert res.items and len(during) > 1
    assert all(n > 0 for n in during)
    assert gc.get_freeze_count() == 0


def test_a_failing_feed_still_thaws() -> None:
    def boom(i: int) -> None:
        raise RuntimeError("killed")

    try:
        replay(demo_data_dir() / "geo_lookup", Config(), None, chunk=500, after_chunk=boom)
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
