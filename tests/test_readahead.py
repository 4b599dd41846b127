"""The read-ahead thread: the source's items in order, its errors in place, bounded, stoppable;
and the replay's feed reads its Zeek files through it."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from scheduler.collect.readahead import read_ahead


class Source:
    """A generator of `n` items that records which thread read each, how far it got, and
    whether it was closed (its file, in the real reader)."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.threads: set[int] = set()
        self.produced = 0
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise ValueError(f"bad input at item {i}")
                self.threads.add(threading.get_ident())
                self.produced += 1
                yield i
        finally:
            self.closed = True


def test_the_items_come_in_the_source_order_read_in_another_thread() -> None:
    src = Source(500)
    assert list(read_ahead(iter(src), depth=3)) == list(range(500))
    assert src.threads and threading.get_ident() not in src.threads
    assert src.closed


def test_depth_zero_reads_in_the_callers_thread() -> None:
    src = Source(5)
    assert list(read_ahead(iter(src), depth=0)) == list(range(5))
    assert src.threads == {threading.get_ident()}


def test_an_error_reaches_the_consumer_after_the_items_before_it() -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="bad input at item 7"):
        for x in read_ahead(iter(Source(20, fail_at=7)), depth=2):
            got.append(x)
    assert got == list(range(7))


def test_it_reads_at_most_depth_ahead_of_the_consumer() -> None:
    """Memory stays `depth` batches (plus the one being read): the source does not race to its
    end while the consumer is slow."""
    src = Source(100)
    gen = read_ahead(iter(src), depth=2)
    for consumed in range(1, 11):
        next(gen)
        time.sleep(0.02)            # time for the thread to fill every free slot
        assert src.produced <= consumed + 2 + 1
    assert src.produced >= 11       # it did read ahead
    gen.close()


def test_a_consumer_that_stops_early_stops_the_thread_and_closes_the_source() -> None:
    before = threading.active_count()
    src = Source(10_000)
    gen = read_ahead(iter(src), depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert src.closed and src.produced < 10
    assert threading.active_count() == before


def test_the_replays_feed_reads_zeek_batches_ahead_and_equal(tmp_path: Path) -> None:
    """`zeek_reader(..., ahead=FEED_READ_AHEAD)` (the feed's reader) yields the batches the
    plain reader yields, parsed in another thread."""
    import gzip

    from scheduler.collect import zeekbatch
    from scheduler.collect.recording import demo_data_dir
    from scheduler.replay import FEED_READ_AHEAD, zeek_reader

    assert FEED_READ_AHEAD >= 1
    path = tmp_path / "http.log"
    path.write_bytes(gzip.decompress((demo_data_dir() / "benign_long" / "zeek" /
                                      "http.log.gz").read_bytes()))
    readers: set[int] = set()
    parse = zeekbatch.BlockParser.parse_block

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        readers.add(threading.get_ident())
        return parse(self, *a, **k)

    def rows(batches: Any) -> list[dict[str, Any]]:
        return [b.record(i) for b in batches for i in range(len(b))]

    plain = rows(zeek_reader(path, "http")())
    zeekbatch.BlockParser.parse_block = spy      # type: ignore[method-assign]
    try:
        ahead = rows(zeek_reader(path, "http", ahead=FEED_READ_AHEAD)())
    finally:
        zeekbatch.BlockParser.parse_block = parse  # type: ignore[method-assign]
    assert ahead == plain and len(plain) > 1000
    assert readers and threading.get_ident() not in readers


@pytest.mark.parametrize("threads", [True, False])
def test_sources_read_ahead_false_reads_in_the_replays_thread(tmp_path: Path,
                                                              threads: bool) -> None:
    """`sources.read_ahead = false` (a machine whose cores are all busy): the replay reads,
    inflates and parses its Zeek files in its own thread, and gives the same replay."""
    from scheduler.collect import zeekbatch
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import load_config
    from scheduler.replay import replay

    conf = tmp_path / "stowaway.toml"
    conf.write_text(f"[sources]\nread_ahead = {'true' if threads else 'false'}\n")
    config = load_config(conf)
    assert config.sources.read_ahead is threads
    readers: set[int] = set()
    parse = zeekbatch.BlockParser.parse_block

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        readers.add(threading.get_ident())
        return parse(self, *a, **k)

    rec = demo_data_dir() / "geo_lookup"
    zeekbatch.BlockParser.parse_block = spy      # type: ignore[method-assign]
    try:
        res = replay(rec, config, None, keep_rows=0)
    finally:
        zeekbatch.BlockParser.parse_block = parse  # type: ignore[method-assign]
    if threads:     # the index pass parses in the replay's thread, the feed in others
        assert len(readers) > 1
    else:
        assert readers == {threading.get_ident()}
    assert res.alerts
