"""The daemon's Zeek poll as engine items: a line tailer's (stream, record) pairs and a batch-mode
tailer's ZeekBatch give the same (time, source, "zrow", (batch, row)) items and records, an unset
time sorting as 0 as the line path did; the backlog test reads each tailer's own budget."""
from __future__ import annotations

from types import SimpleNamespace

from scheduler.collect.zeekbatch import batch_from_records
from scheduler.daemon import _more_waiting, _zeek_items

RECS = [{"ts": 1795805000.5, "uid": "C1", "id.orig_h": "172.17.0.3", "query": "a.example"},
        {"ts": None, "uid": "C2", "id.orig_h": "172.17.0.3", "query": "b.example"},
        {"ts": 1795805001.0, "uid": "C3", "id.orig_h": "172.17.0.4", "query": "c.example"}]


def _view(items):
    return [(t, src, kind, b.stream, b.record(j)) for t, src, kind, (b, j) in items]


def test_line_and_batch_polls_give_the_same_items() -> None:
    tailer = SimpleNamespace(stream="dns", path="dns.log")
    lines = _zeek_items(tailer, [("dns", dict(r)) for r in RECS], 2)
    batch = _zeek_items(tailer, [batch_from_records("dns", "dns.log", [dict(r) for r in RECS])], 2)
    assert _view(lines) == _view(batch)
    assert [t for t, *_ in lines] == [1795805000.5, 0.0, 1795805001.0]
    assert {kind for _, _, kind, _ in lines} == {"zrow"} and _zeek_items(tailer, [], 2) == []


def test_backlog_budget_is_lines_or_bytes() -> None:
    line_tailer = SimpleNamespace(max_lines=2)
    assert _more_waiting(line_tailer, SimpleNamespace(lines=[1, 2], nbytes=0))
    assert not _more_waiting(line_tailer, SimpleNamespace(lines=[1], nbytes=10**9))
    batch_tailer = SimpleNamespace(max_lines=100, batch_bytes=1 << 20)
    assert _more_waiting(batch_tailer, SimpleNamespace(lines=[], nbytes=100))
    assert not _more_waiting(batch_tailer, SimpleNamespace(lines=[], nbytes=99))
