"""The columnar Zeek reader (scheduler.collect.zeekbatch.iter_batches) against the per-line parser.

The per-line parser (scheduler.collect.zeeklog) is the reference: for every bundled Zeek log and
for hand-made damaged and unusual ones, the batches must hold exactly its records (column values
after the column conventions, `record(i)` the same dict, the same counts of records and bad
lines). A test also checks that the columnar path itself was taken, so an equality that only
holds because everything fell back to the per-line parser does not pass.
"""
from __future__ import annotations

import gzip
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scheduler.collect import zeeklog
from scheduler.collect.zeekbatch import (ZeekBatch, batch_from_records, convention, flat_get,
                                         iter_batches, parse_only, record_names)
from scheduler.collect.zeekbatch import INT_FIELDS
from scheduler.pipeline import ingest_fields, kept_fields, passive_fields

REPO = Path(__file__).resolve().parents[1]
BUNDLED_GLOBS = ("scheduler/demo_data/*/zeek/*.log*", "tests/data/misuse/*/zeek/*.log*",
                 "tests/data/container-scenarios/*/zeek/**/*.log*",
                 "tests/data/zeek-traces/*/*.log*", "tests/data/zat-data/**/*.log*")


def bundled_logs() -> list[Path]:
    found: set[Path] = set()
    for pattern in BUNDLED_GLOBS:
        found.update(p for p in REPO.glob(pattern) if p.is_file())
    return sorted(found)


def stream_of(path: Path) -> str:
    return path.name.split(".")[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def check_equal(path: Path, fields: Any = None, batch_bytes: int = 1 << 20,
                stream: str | None = None, lazy: Any = (), kept: Any = ()
                ) -> tuple[list[ZeekBatch], zeeklog.ParseStats]:
    """Batches == per-line records (values, record(i), counts); returns the batches. `lazy`,
    `kept`: read with those text fields deferred (not parsed; parsed and kept in pyarrow),
    whose values (row by row, and whole) must be the same as every other column's."""
    ref_stats, stats = zeeklog.ParseStats(), zeeklog.ParseStats()
    recs = list(zeeklog.iter_zeek_log(path, stats=ref_stats, fields=fields))
    batches = list(iter_batches(path, stream=stream, fields=fields, stats=stats,
                                batch_bytes=batch_bytes, lazy=lazy, kept=kept))
    assert sum(len(b) for b in batches) == len(recs), path
    for counter in ("records", "bad_lines", "lines", "headers", "blank", "io_errors"):
        assert getattr(stats, counter) == getattr(ref_stats, counter), (path, counter)
    assert stats.bad_by_file == ref_stats.bad_by_file
    i = 0
    for b in batches:
        assert b.stream == (stream or stream_of(path))
        assert b.lineno.shape == (len(b),)
        mine = record_names([b.record(j) for j in range(len(b))],
                            frozenset(fields) if fields is not None else None)
        assert set(b.deferred) <= set(lazy) | set(kept) and not set(b.deferred) & set(b.columns)
        if b.deferred:
            assert b.meta["mode"] == "columnar", (path, "deferred columns off the TSV path")
            mine = [n for n in mine if n not in b.deferred] + \
                [n for n in mine if n in b.deferred]
        names = list(b.columns) + list(b.deferred)
        if b.meta["mode"] == "json-columnar":      # pyarrow does not keep the keys' order
            assert sorted(names) == sorted(mine), (path, "column names")
        else:
            assert names == mine, (path, "column names")
        for name, (codes, uniques) in b.dicts.items():   # the dictionary-read text columns
            assert len(set(uniques.tolist())) == len(uniques), (path, name, "repeated values")
            assert uniques[codes].tolist() == b.columns[name].tolist(), (path, name)
        for name, col in b.columns.items():
            assert len(col) == len(b)
            if name == "ts":
                assert col.dtype == np.float64
            elif col.dtype == np.int64:
                pass
            else:
                assert col.dtype == object
        whole = {n: np.asarray(d) for n, d in b.deferred.items()}
        for name, col in whole.items():
            assert col.dtype == object and len(col) == len(b)
            assert b.deferred[name].tolist() == col.tolist()
        for j in range(len(b)):
            rec = recs[i]
            assert b.record(j) == rec, (path, b.lineno[j])
            row_by_row = {n: d[j] for n, d in b.deferred.items()}
            for name, col in [*b.columns.items(), *whole.items(), *row_by_row.items()]:
                want = convention(name, flat_get(rec, name))
                got = _plain(col[j]) if not isinstance(col, str) else col
                assert _same(got, want), (path, int(b.lineno[j]), name, got, want)
            i += 1
    return batches, stats


ALL_LOGS = bundled_logs()


def test_bundled_logs_found() -> None:
    """The equality test below covers every kind of bundled log (a moved folder must not
    silently shrink it)."""
    names = {str(p.relative_to(REPO)) for p in ALL_LOGS}
    assert len(ALL_LOGS) >= 140
    for must in ("scheduler/demo_data/geo_lookup/zeek/container_geo.log.gz",
                 "tests/data/misuse/miner/zeek/stratum.log.gz",
                 "tests/data/zat-data/http.log.corrupt.gz", "tests/data/zat-data/json/conn.log",
                 "tests/data/container-scenarios/benign/zeek/json/dns.log.gz",
                 "tests/data/zeek-traces/wikipedia.trace/dns.log"):
        assert must in names


@pytest.mark.parametrize("path", ALL_LOGS, ids=lambda p: str(p.relative_to(REPO)))
def test_bundled_log_equals_per_line(path: Path) -> None:
    fields = ingest_fields(stream_of(path))
    # small blocks: many block boundaries; the default: the daemon's size
    small, _ = check_equal(path, fields, batch_bytes=1 << 13)
    check_equal(path, fields)
    # the engine's passive fields deferred, as the replay reads them (and every field, for the
    # logs the engine reads whole): the same values
    if fields is not None:
        ways = [(passive_fields(stream_of(path)), kept_fields(stream_of(path)))]
    else:
        ways = [(_all_fields(path), frozenset()), (frozenset(), _all_fields(path))]
    for lazy, kept in ways:
        deferred, _ = check_equal(path, fields, lazy=lazy, kept=kept)
        if any(b.meta["mode"] == "columnar" for b in deferred) and \
                (lazy | kept) & _string_fields(path):
            assert any(b.deferred for b in deferred), f"{path}: nothing was deferred"
    modes = {b.meta.get("mode") for b in small}
    with zeeklog.open_log_text(path) as fh:
        head = fh.read(1)
    if small and head == "#":
        assert "columnar" in modes, f"{path}: no run took the columnar path ({modes})"
    if small and head == "{" and fields is not None and stream_of(path) != "dns":
        assert "json-columnar" in modes, f"{path}: no JSON run took pyarrow.json ({modes})"
    elif small and head == "{":
        assert modes == {"json"}       # all fields, or dns's answers/TTLs: line by line


def _header_types(path: Path) -> dict[str, str]:
    """{field: Zeek type} of a TSV log's first #fields/#types ({} for JSON)."""
    fields: list[str] = []
    types: list[str] = []
    with zeeklog.open_log_text(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if line.startswith("#fields"):
                fields = line.rstrip("\n").split("\t")[1:]
            elif line.startswith("#types"):
                types = line.rstrip("\n").split("\t")[1:]
    return dict(zip(fields, types))


def _all_fields(path: Path) -> frozenset[str]:
    return frozenset(_header_types(path))


def _string_fields(path: Path) -> frozenset[str]:
    return frozenset(f for f, t in _header_types(path).items() if t == "string"
                     and f not in INT_FIELDS and f != "ts")


HEADER = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          "#path\tdns\n#open\t2026-11-27-19-44-04\n"
          "#fields\tts\tuid\tid.orig_h\tid.orig_p\tquery\tAA\tanswers\tTTLs\trcode\ttags\n"
          "#types\ttime\tstring\taddr\tport\tstring\tbool\tvector[string]\tvector[interval]\t"
          "count\tset[enum]\n")


def dns_line(i: int, query: str = "ipinfo.io", port: str | None = None) -> str:
    return (f"17958050{i:02d}.512680\tC{i}\t172.17.0.{i % 250}\t{port or 40000 + i}\t{query}\tT\t"
            f"34.117.59.81,1.2.3.4\t300.000000,60.000000\t0\t(empty)\n")


def write(tmp_path: Path, name: str, text: str | bytes, gz: bool = False) -> Path:
    p = tmp_path / name
    data = text.encode() if isinstance(text, str) else text
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def test_types_unset_empty_escapes(tmp_path: Path) -> None:
    body = (dns_line(1) +
            "1795805066.5\tC2\t172.17.0.3\t-\ta\\x09b\\x2d\tF\t-\t-\t-\t-\n" +
            "1795805067\tC3\t172.17.0.3\t53\t(empty)\t-\t(empty)\t(empty)\t3\tA,B\n" +
            "1795805068.25\t-\t-\t0\t\\x2d\tT\ta\\x2cb,c\t1.5\t0\t(empty)\n")
    p = write(tmp_path, "dns.log", HEADER + body + "#close\t2026-11-27-20-00-00\n")
    batches, stats = check_equal(p)
    assert [b.meta["mode"] for b in batches] == ["columnar"]
    b = batches[0]
    assert b.columns["query"].tolist() == ["ipinfo.io", "a\tb-", "", "-"]
    assert b.columns["id.orig_p"].tolist() == [40001, -1, 53, 0]
    assert b.columns["answers"].tolist() == ["34.117.59.81,1.2.3.4", "", "", "a,b,c"]
    assert b.columns["TTLs"].tolist() == ["300.0,60.0", "", "", "1.5"]
    assert b.columns["AA"].tolist() == ["True", "False", "", "True"]
    assert b.columns["uid"].tolist() == ["C1", "C2", "C3", ""]
    assert b.columns["id.orig_h"][3] == ""
    assert b.record(1)["query"] == "a\tb-" and b.record(1)["id.orig_p"] is None
    assert b.lineno.tolist() == [9, 10, 11, 12]
    assert stats.records == 4 and stats.bad_lines == 0
    # read dictionary-encoded: "-" and "(empty)" merge into one "", the escapes decoded once
    codes, uniques = b.codes("query")
    assert "query" in b.dicts and sorted(uniques.tolist()) == ["", "-", "a\tb-", "ipinfo.io"]
    assert uniques[codes].tolist() == b.columns["query"].tolist()
    codes, uniques = b.codes("id.orig_h")
    assert len(uniques) == 3 and codes[1] == codes[2]


def test_deferred_text_keeps_the_conventions(tmp_path: Path) -> None:
    """Text fields read deferred: the markers judged on the raw value ("\\x2d" is the text
    "-", not unset), escapes decoded, per row, per selection and whole; typed and set fields
    asked for as deferred are read as before."""
    rows = ["a\\x09b\\x2d", "-", "(empty)", "\\x2d", "plain", "\\x28empty)"]
    body = "".join(dns_line(i, query=q) for i, q in enumerate(rows, 1))
    p = write(tmp_path, "dns.log", HEADER + body)
    check_equal(p, kept={"query", "uid", "answers", "AA", "ts", "id.orig_p"})
    batches, _ = check_equal(p, lazy={"query", "uid", "answers", "AA", "ts", "id.orig_p"})
    (b,) = batches
    assert sorted(b.deferred) == ["query", "uid"]
    want = ["a\tb-", "", "", "-", "plain", "(empty)"]
    q = b.deferred["query"]
    assert q.tolist() == want and [q[i] for i in range(6)] == want and q[-1] == "(empty)"
    assert q[1:4].tolist() == want[1:4] and q[np.array([5, 0])].tolist() == [want[5], want[0]]
    assert q[np.array([True, False] * 3)][1:].tolist() == [want[2], want[4]]
    assert b.column("query").tolist() == want and "query" in b.columns   # made whole, once
    assert b.column("query") is b.column("query")


def test_codes_merge_markers_and_escapes(tmp_path: Path) -> None:
    """Raw values that become one value ("\\x41" and "A"; "-" and "(empty)") share one code."""
    rows = ["A", "\\x41", "-", "(empty)", "B", "A", "\\x42"]
    body = "".join(dns_line(i, query=q) for i, q in enumerate(rows, 1))
    p = write(tmp_path, "dns.log", HEADER + body)
    batches, _ = check_equal(p)
    b = batches[0]
    codes, uniques = b.codes("query")
    assert uniques.tolist() == ["A", "", "B"]
    assert codes.tolist() == [0, 0, 1, 1, 2, 0, 2]


def test_unique_per_row_column_read_plain_after_first_run(tmp_path: Path) -> None:
    """uid holds one value per row: after a run shows it, it is read as plain strings (no
    dictionary), its values the same; codes() still gives a (codes, uniques) pair for it."""
    body = "".join(dns_line(i % 90, query=f"q{i % 3}.example").replace(
        f"\tC{i % 90}\t", f"\tCu{i}\t", 1) for i in range(3000))
    p = write(tmp_path, "dns.log", HEADER + body)
    batches, _ = check_equal(p, batch_bytes=1 << 16)
    assert len(batches) >= 3 and all(b.meta["mode"] == "columnar" for b in batches)
    assert "uid" in batches[0].dicts
    assert all("uid" not in b.dicts and "query" in b.dicts for b in batches[1:])
    codes, uniques = batches[-1].codes("uid")
    assert len(uniques) == len(batches[-1]) and uniques[codes].tolist() == \
        batches[-1].columns["uid"].tolist()


def test_codes_of_a_batch_from_records() -> None:
    recs = [{"ts": 1.0, "query": q} for q in ("a", "b", "a", None)]
    b = batch_from_records("dns", "x", recs)
    codes, uniques = b.codes("query")
    assert uniques.tolist() == ["a", "b", ""] and codes.tolist() == [0, 1, 0, 2]


def test_weird_numbers_same_as_per_line(tmp_path: Path) -> None:
    """Values pyarrow's casts and Python's int()/float() may read differently: whatever the
    columnar path does, the rows are the per-line parser's."""
    odd_ports = ["+80", " 80", "80 ", "8_0", "1e3", "0x50", "٨٠", "080", "-5", "99999999999999999999"]
    odd_ts = ["1e9", "+1795805000", "1795805000.", ".5", "1_795_805_000", "nan", "inf", "-inf",
              " 1795805000", "0x10"]
    body = "".join(dns_line(i, port=v) for i, v in enumerate(odd_ports))
    body += "".join(dns_line(50 + i).replace(f"17958050{50 + i:02d}.512680", t, 1)
                    for i, t in enumerate(odd_ts))
    p = write(tmp_path, "dns.log", HEADER + body)
    _, stats = check_equal(p)
    assert stats.bad_lines >= 4       # 0x50, nan, inf, -inf, 0x10 at least


def test_bad_lines_counted_named_and_batch_kept(tmp_path: Path, caplog) -> None:
    lines = [dns_line(i) for i in range(1, 9)]
    lines[2] = lines[2].replace("\tT\t", "\t")                         # 9 fields
    lines[4] = "not-a-time" + lines[4][lines[4].index("\t"):]          # bad time
    lines[6] = lines[6].replace("\t40007\t", "\teighty\t")              # bad port
    p = write(tmp_path, "dns.log", HEADER + "".join(lines))
    with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
        batches, stats = check_equal(p)
    assert stats.bad_lines == 3 and stats.bad_by_file == {str(p): 3}
    assert sum(len(b) for b in batches) == 5
    assert [b.meta["mode"] for b in batches] == ["lines"]   # that run went line by line
    warned = " ".join(r.getMessage() for r in caplog.records)
    for lineno in (11, 13, 15):
        assert f"{p}:{lineno}" in warned
    # the next block of the same file is columnar again
    more = HEADER + "".join(lines) + "".join(dns_line(i) for i in range(20, 60))
    q = write(tmp_path, "dns2.log", more)
    batches, _ = check_equal(q, batch_bytes=2048)
    assert "columnar" in {b.meta["mode"] for b in batches}


def test_header_change_mid_file_and_close_then_new_header(tmp_path: Path) -> None:
    other = HEADER.replace("\tAA\tanswers\tTTLs\trcode\ttags", "\trcode").replace(
        "\tbool\tvector[string]\tvector[interval]\tcount\tset[enum]", "\tcount")
    text = (HEADER + dns_line(1) + dns_line(2) + "#close\t2026-11-27-20-00-00\n" +
            other + "1795805100.0\tC9\t172.17.0.9\t41000\texample.org\t3\n" +
            "#fields\tts\tquery\n#types\ttime\tstring\n" + "1795805200.5\tlast.example\n")
    p = write(tmp_path, "dns.log", text)
    for bb in (64, 1 << 20):
        batches, _ = check_equal(p, batch_bytes=bb)
        cols = [sorted(b.columns) for b in batches]
        assert cols[0] == sorted(["ts", "uid", "id.orig_h", "id.orig_p", "query", "AA", "answers",
                                  "TTLs", "rcode", "tags"])
        assert cols[-1] == ["query", "ts"]
        assert batches[-1].columns["query"].tolist() == ["last.example"]
        assert batches[-2].columns["rcode"].tolist() == [3]
    # the engine's field list over a header change
    check_equal(p, ingest_fields("dns"))


def test_empty_file_and_headers_only(tmp_path: Path) -> None:
    empty = write(tmp_path, "conn.log", "")
    assert list(iter_batches(empty)) == []
    heads = write(tmp_path, "dns.log", HEADER + "#close\t2026-11-27-20-00-00\n")
    batches, stats = check_equal(heads)
    assert batches == [] and stats.headers == 9 and stats.records == 0
    gz_empty = write(tmp_path, "http.log.gz", b"", gz=True)
    assert list(iter_batches(gz_empty)) == []


def test_crlf_blank_lines_no_final_newline(tmp_path: Path) -> None:
    text = (HEADER + dns_line(1) + "\n" + dns_line(2) + "\n\n" + dns_line(3)).replace("\n", "\r\n")
    p = write(tmp_path, "dns.log", text.rstrip("\r\n"))
    batches, stats = check_equal(p)
    assert sum(len(b) for b in batches) == 3 and stats.blank == 3
    assert "columnar" in {b.meta["mode"] for b in batches}
    stray = write(tmp_path, "dns2.log", HEADER + dns_line(1).replace("ipinfo.io", "a\rb"))
    check_equal(stray)


def test_json_nested_id_and_dotted(tmp_path: Path) -> None:
    lines = ['{"ts":1795805066.5,"uid":"C1","id":{"orig_h":"172.17.0.3","orig_p":4242,'
             '"resp_h":"1.2.3.4","resp_p":443},"server_name":"ipinfo.io"}',
             '{"ts":"2026-11-27T19:44:26.500000Z","uid":"C2","id.orig_h":"172.17.0.4",'
             '"id.orig_p":5,"server_name":"x\\u00e9"}',
             '{"ts":1795805067,"uid":"C3","id":{"orig_h":"10.0.0.1"},"id.orig_h":"172.17.0.9"}',
             '{"ts": 1, "uid": [1, 2]}',                   # uid must be a string: bad
             '{"ts": 1795805068, "uid": "C5"',              # cut: bad JSON
             '[1, 2]']
    p = write(tmp_path, "ssl.log", "\n".join(lines) + "\n")
    batches, stats = check_equal(p, ingest_fields("ssl"))
    assert stats.bad_lines == 3
    b = batches[0]
    assert b.meta["mode"] == "lines"     # '[1, 2]' is not a '{' line: a mixed run
    assert b.columns["id.orig_h"].tolist() == ["172.17.0.3", "172.17.0.4", "172.17.0.9"]
    assert b.columns["id.orig_p"].tolist() == [4242, 5, -1]
    assert b.columns["ts"][1] == pytest.approx(1795808666.5)
    assert "id" not in b.columns
    assert b.record(0)["id"]["resp_p"] == 443
    check_equal(p)   # all fields
    check_equal(write(tmp_path, "ssl.log.gz", "\n".join(lines) + "\n", gz=True))


def test_huge_line_longer_than_a_block(tmp_path: Path) -> None:
    huge = "q" * (3 << 20)
    text = HEADER + dns_line(1) + dns_line(2, query=huge) + dns_line(3)
    p = write(tmp_path, "dns.log", text)
    batches, _ = check_equal(p, batch_bytes=1 << 16)
    assert [len(q) for b in batches for q in b.columns["query"]] == [9, len(huge), 9]


def test_truncated_gz_yields_what_is_readable(tmp_path: Path) -> None:
    body = "".join(dns_line(i % 90) for i in range(20000))
    data = gzip.compress((HEADER + body).encode())
    p = write(tmp_path, "dns.log.gz", data[: len(data) // 2])
    stats = zeeklog.ParseStats()
    got = sum(len(b) for b in iter_batches(p, stats=stats, batch_bytes=1 << 14))
    assert stats.io_errors == 1 and stats.bad_lines == 0
    assert 1000 < got < 20000
    ref = zeeklog.ParseStats()
    n_ref = sum(1 for _ in zeeklog.iter_zeek_log(p, stats=ref))
    assert got >= n_ref         # the per-line reader loses its decoded-but-unread buffer


def test_resume_at_batch_end(tmp_path: Path) -> None:
    body = "".join(dns_line(i % 90) for i in range(3000))
    for gz in (False, True):
        p = write(tmp_path, "dns.log" + (".gz" if gz else ""), HEADER + body, gz=gz)
        whole = list(iter_batches(p, batch_bytes=1 << 14))
        assert len(whole) > 4
        cut = whole[2].end
        rest = list(iter_batches(p, batch_bytes=1 << 14, start=cut))
        first = [r for b in whole[:3] for r in b.columns["uid"]]
        later = [r for b in rest for r in b.columns["uid"]]
        assert first + later == [r for b in whole for r in b.columns["uid"]]
        assert rest[0].lineno[0] == whole[3].lineno[0]
        assert rest[0].record(0) == whole[3].record(0)


def test_invalid_utf8_and_nul(tmp_path: Path) -> None:
    raw = (HEADER + dns_line(1)).encode() + dns_line(2).replace("ipinfo", "ip\xff").encode(
        "latin-1") + dns_line(3).replace("ipinfo", "ip\x00info").encode()
    check_equal(write(tmp_path, "dns.log", raw))
    # the field deferred (not parsed: read from the line when asked for) decodes as the
    # per-line reader does, and the run stays columnar
    batches, _ = check_equal(write(tmp_path, "dns2.log", raw), lazy={"query"})
    assert [b.meta["mode"] for b in batches] == ["columnar"]
    assert batches[0].deferred["query"][1] == "ip\ufffd.io"


def test_batch_from_records_agrees_with_reader(tmp_path: Path) -> None:
    p = write(tmp_path, "dns.log", HEADER + dns_line(1) + dns_line(2) + dns_line(3))
    (b,) = list(iter_batches(p))
    recs = list(zeeklog.iter_zeek_log(p))
    other = batch_from_records("dns", str(p), recs)
    assert list(other.columns) == list(b.columns)
    for name in b.columns:
        assert other.columns[name].tolist() == b.columns[name].tolist()


def test_parse_only_counts_rows(tmp_path: Path) -> None:
    body = "".join(dns_line(i % 90) for i in range(5000))
    p = write(tmp_path, "dns.log", HEADER + body + "#close\tx\n" + HEADER + body)
    assert parse_only(p, ingest_fields("dns")) == 10000
    assert parse_only(p, None, batch_bytes=4096) == 10000


def test_bad_lines_in_a_subprocess_exit_cleanly(tmp_path: Path) -> None:
    """pyarrow's invalid_row_handler aborted the interpreter at exit ("terminate called without
    an active exception") in 4 of 8 runs; the reader's fallback must not: ten runs, each clean."""
    lines = [dns_line(i % 90) for i in range(4000)]
    for k in range(0, 4000, 97):
        lines[k] = lines[k].replace("\tT\t", "\t")
    p = write(tmp_path, "dns.log", HEADER + "".join(lines))
    script = textwrap.dedent(f"""
        import logging, sys
        from scheduler.collect import zeeklog
        from scheduler.collect.zeekbatch import iter_batches
        logging.disable(logging.WARNING)
        stats = zeeklog.ParseStats()
        n = sum(len(b) for b in iter_batches({str(p)!r}, stats=stats, batch_bytes=1 << 14))
        print(n, stats.bad_lines)
    """)
    for _ in range(10):
        run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "terminate called" not in run.stderr
        assert run.stdout.split() == ["3958", "42"]


def test_json_values_pyarrow_and_json_loads_may_read_differently(tmp_path: Path) -> None:
    """Each odd line sits in a clean JSON conn log: the batch must still hold exactly the
    per-line parser's records (pyarrow.json refuses the run, the per-line parser decides)."""
    good = ['{"ts":%d.25,"uid":"C%d","id.orig_h":"172.17.0.3","id.orig_p":%d,'
            '"id.resp_h":"1.2.3.4","id.resp_p":443,"proto":"tcp","service":"ssl",'
            '"duration":0.5,"orig_bytes":10,"resp_bytes":20,"conn_state":"SF"}'
            % (1795805000 + i, i, 40000 + i) for i in range(30)]
    odd = ['{"ts":1795805100,"uid":"X1","id.orig_p":80.0}',
           '{"ts":1795805100,"uid":"X2","id.orig_p":true}',
           '{"ts":1795805100,"uid":"X3","id.orig_p":"80"}',
           '{"ts":NaN,"uid":"X4"}', '{"ts":Infinity,"uid":"X5"}', '{"ts":1e400,"uid":"X6"}',
           '{"ts":1795805100,"uid":"X7","uid":"X7b"}', '{"ts":1,"uid":"X8"}{"ts":2,"uid":"X9"}',
           '{"ts":1795805100,"uid":null}', '{"ts":1795805100,"uid":"Y1","container":5}',
           '{"ts":1795805100,"uid":"Y2","service":5}', '{"ts":1795805100,"uid":"Y3",'
           '"duration":"x"}', '{"ts":1795805100,"uid":"Y4","duration":NaN}',
           '{"ts":1795805100,"uid":"Y5"} trailing', '{"ts":1795805100,"uid":"\\ud800"}',
           '{"ts":"2026-11-27T19:44:26Z","uid":"Y6"}', '{"ts":true,"uid":"Y7"}',
           '{"ts":1795805100,"uid":"Y8","rcode":"3"}', '{}',
           '{"ts":1795805100,"uid":"Y9","orig_bytes":99999999999999999999}',
           '{"ts":1795805100,"uid":"Z1","id":{"orig_h":"10.1.1.1"}}',
           '{"ts":1795805100,"uid":"Z2","history":{"a":' + "[" * 3000 + "]" * 3000 + '}}']
    clean = write(tmp_path, "conn.log", "\n".join(good) + "\n")
    batches, _ = check_equal(clean, ingest_fields("conn"))
    assert [b.meta["mode"] for b in batches] == ["json-columnar"]
    assert batches[0].columns["orig_bytes"].tolist() == [10] * 30
    for k, line in enumerate(odd):
        p = write(tmp_path, f"conn{k}.log", "\n".join(good[:15] + [line] + good[15:]) + "\n")
        check_equal(p, ingest_fields("conn"))
        check_equal(p, ingest_fields("conn"), batch_bytes=256)


@pytest.mark.parametrize("path", ALL_LOGS[:6], ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_records_asked_from_the_end_of_a_block_equal_per_line(path: Path) -> None:
    """A row near the end of a plain block is found by walking back from the block's end (no
    line index yet): asked last row first, in small blocks, every record is the per-line one."""
    recs = list(zeeklog.iter_zeek_log(path, stats=zeeklog.ParseStats()))
    batches = list(iter_batches(path, stats=zeeklog.ParseStats(), batch_bytes=1 << 16))
    assert sum(len(b) for b in batches) == len(recs)
    i = 0
    for b in batches:
        for j in reversed(range(len(b))):
            assert b.record(j) == recs[i + j], (path, int(b.lineno[j]))
        i += len(b)


def test_tail_line_equals_the_line_index() -> None:
    from scheduler.collect.zeekbatch import _index_lines, _tail_line

    rng = np.random.default_rng(9)
    for _ in range(500):
        lines = [bytes(rng.choice(list(b"ab\t"), rng.integers(0, 6)).tolist())
                 for _ in range(int(rng.integers(1, 12)))]
        seg = b"\n".join(lines) + (b"\n" if rng.random() < .7 else b"")
        idx = _index_lines(seg)
        n = len(idx.starts)
        for back in range(n):
            assert _tail_line(seg, back) == (int(idx.starts[n - 1 - back]),
                                             int(idx.ends[n - 1 - back])), (seg, back)


def test_typed_fields_converted_once_per_value_refuse_what_the_parser_refuses(tmp_path: Path
                                                                              ) -> None:
    """TTLs (vector[interval]) and AA (bool) are read dictionary-encoded and converted once per
    distinct value: a value the per-line parser refuses in one row among many repeated ones
    still costs only its line, counted and named, and every other row is the parser's."""
    odd = ["abc", "1e2,60", "300.000000,", "inf", "-", "(empty)", " 5", "0x10", "5_0"]
    lines = []
    for i in range(400):
        line = dns_line(i % 90)
        if i % 40 == 7:
            line = line.replace("300.000000,60.000000", odd[(i // 40) % len(odd)])
        if i % 50 == 3:
            line = line.replace("\tT\t", "\tmaybe\t")
        lines.append(line)
    p = write(tmp_path, "dns.log", HEADER + "".join(lines))
    batches, stats = check_equal(p, batch_bytes=1 << 12)
    assert stats.bad_lines >= 8        # "abc", "maybe" x8, ...
    fine = write(tmp_path, "dns2.log", HEADER + "".join(dns_line(i % 90) for i in range(600)))
    batches, stats = check_equal(fine, batch_bytes=1 << 14)
    assert stats.bad_lines == 0 and all(b.meta["mode"] == "columnar" for b in batches)
    assert {v for b in batches for v in b.columns["TTLs"].tolist()} == {"300.0,60.0"}


def test_a_gz_inflated_ahead_gives_the_same_batches(tmp_path: Path) -> None:
    """`inflate_ahead`: a .gz file's blocks are read and inflated in another thread; the
    batches, the truncation's counted error and an early stop are what they are without it."""
    import threading

    from scheduler.collect import zeekbatch

    body = "".join(dns_line(i % 90) for i in range(20000))
    data = gzip.compress((HEADER + body).encode())
    whole = write(tmp_path, "dns.log.gz", data)
    cut = write(tmp_path, "cut.dns.log.gz", data[: len(data) // 2])
    readers: set[int] = set()
    blocks = zeekbatch.iter_blocks

    def spy(*a: Any, **k: Any) -> Any:
        for item in blocks(*a, **k):
            readers.add(threading.get_ident())
            yield item

    def read(p: Path, ahead: int) -> tuple[list[Any], Any]:
        stats = zeeklog.ParseStats()
        rows = [b.record(i) for b in iter_batches(p, stats=stats, batch_bytes=1 << 14,
                                                  inflate_ahead=ahead) for i in range(len(b))]
        return rows, stats

    for p in (whole, cut):
        want, wstats = read(p, 0)
        zeekbatch.iter_blocks = spy          # type: ignore[assignment]
        try:
            got, gstats = read(p, 2)
        finally:
            zeekbatch.iter_blocks = blocks   # type: ignore[assignment]
        assert got == want and len(want) > 1000
        assert (gstats.io_errors, gstats.lines, gstats.bad_lines) == \
            (wstats.io_errors, wstats.lines, wstats.bad_lines)
        assert readers and threading.get_ident() not in readers
        readers.clear()
    assert wstats.io_errors == 1           # the truncated one, last
    before = threading.active_count()
    it = iter_batches(whole, batch_bytes=1 << 14, inflate_ahead=2)
    next(it)
    it.close()
    assert threading.active_count() == before
