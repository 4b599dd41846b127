"""Zeek log reader: TSV and JSON, plain and gzip, real logs from the fixtures and zat's data, and
damaged input (bad lines counted and skipped with file:line warnings, never fatal)."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from datafiles import resolve, scenario_dir, zat_dir
from scheduler.collect.zeeklog import (ParseStats, ZeekLogParser, find_logs, iter_zeek_log,
                               read_dataframe, unescape)

ZAT = zat_dir()
GEO = scenario_dir("geo_lookup") / "zeek"


HEADER = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          "#path\tdns\n#open\t2026-11-27-19-44-04\n"
          "#fields\tts\tuid\tid.orig_h\tid.orig_p\tquery\tAA\tanswers\tTTLs\ttags\n"
          "#types\ttime\tstring\taddr\tport\tstring\tbool\tvector[string]\tvector[interval]\t"
          "set[enum]\n")


def _write(tmp_path: Path, name: str, text: str, gz: bool = False) -> Path:
    p = tmp_path / name
    if gz:
        with gzip.open(p, "wt") as fh:
            fh.write(text)
    else:
        p.write_text(text)
    return p


def test_tsv_types_unset_empty_and_escapes(tmp_path: Path) -> None:
    body = ("1795805066.512680\tC1\t172.17.0.3\t58240\tipinfo.io\tT\t34.117.59.81,1.2.3.4\t"
            "300.000000,60.000000\t(empty)\n"
            "1795805066.512709\tC1\t172.17.0.3\t58240\ta\\x09b\tF\t-\t-\t-\n#close\tx\n")
    recs = list(iter_zeek_log(_write(tmp_path, "dns.log", HEADER + body)))
    assert recs[0] == {"ts": 1795805066.51268, "uid": "C1", "id.orig_h": "172.17.0.3",
                       "id.orig_p": 58240, "query": "ipinfo.io", "AA": True,
                       "answers": ["34.117.59.81", "1.2.3.4"], "TTLs": [300.0, 60.0], "tags": []}
    assert recs[1]["query"] == "a\tb" and recs[1]["AA"] is False
    assert recs[1]["answers"] is None and recs[1]["TTLs"] is None and recs[1]["tags"] is None
    assert unescape("x\\x2dy") == "x-y"


def test_bad_lines_counted_with_file_and_line(tmp_path: Path, caplog) -> None:
    text = ("1.0\torphan line before any header\n" + HEADER
            + "1.5\tC1\t172.17.0.3\t1\tok.example\tT\t-\t-\t-\n"
            + "2.0\tC2\t172.17.0.3\tnot-a-port\tq\tT\t-\t-\t-\n"      # bad port
            + "3.0\tC3\ttoo\tfew\n"                                   # field count
            + "4.0\tC4\t172.17.0.3\t1\tq\tmaybe\t-\t-\t-\n"           # bad bool
            + "{not json\n"
            + '{"ts": "yesterday", "uid": "J1"}\n'                     # bad ts
            + '["a", "list"]\n'
            + "5.0\tC5\t172.17.0.3\t2\tok2.example\tF\t-\t-\t-\n")
    path = _write(tmp_path, "dns.log", text)
    stats = ParseStats()
    with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
        recs = list(iter_zeek_log(path, stats))
    assert [r["uid"] for r in recs] == ["C1", "C5"]
    assert stats.bad_lines == 7 and stats.bad_by_file == {str(path): 7}
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"{path}:1:" in m for m in warned)                 # the orphan line
    assert any(f"{path}:12:" in m and "fields" in m for m in warned)


def test_warnings_are_capped_but_counting_is_not(tmp_path: Path, caplog) -> None:
    path = _write(tmp_path, "x.log", HEADER + "garbage\n" * 500)
    stats = ParseStats()
    with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
        assert list(iter_zeek_log(path, stats)) == []
    assert stats.bad_lines == 500
    assert len(caplog.records) <= 25


def test_json_lines_and_gzip(tmp_path: Path) -> None:
    text = ('{"ts":1795805146.554816,"uid":"Co6","id.orig_h":"172.17.0.17","server_name":'
            '"api.ipify.org","cert_chain_fps":[]}\n'
            '{"ts":"2026-11-27T18:45:46.554816Z","uid":"Co7","id.orig_h":"172.17.0.17"}\n')
    recs = list(iter_zeek_log(_write(tmp_path, "ssl.log.gz", text, gz=True)))
    assert recs[0]["server_name"] == "api.ipify.org" and recs[0]["cert_chain_fps"] == []
    assert recs[1]["ts"] == pytest.approx(1795805146.554816)
    assert recs[1].get("server_name") is None


def test_second_header_block_and_separator_with_tab(tmp_path: Path) -> None:
    other = ("#separator\t\\x09\n#fields\tts\tuid\tnote\n#types\ttime\tstring\tenum\n"
             "9.0\tN1\tScan::Port_Scan\n")
    first = HEADER + "1.0\tC1\t172.17.0.3\t1\tq\tT\t-\t-\t-\n#close\t2026\n"
    recs = list(iter_zeek_log(_write(tmp_path, "mixed.log", first + other)))
    assert recs == [
        {"ts": 1.0, "uid": "C1", "id.orig_h": "172.17.0.3", "id.orig_p": 1, "query": "q",
         "AA": True, "answers": None, "TTLs": None, "tags": None},
        {"ts": 9.0, "uid": "N1", "note": "Scan::Port_Scan"}]


def test_line_parser_for_tailers(tmp_path: Path) -> None:
    """Feeding lines one at a time (as a tailer would) gives what iter_zeek_log gives."""
    lines = (HEADER + "1.0\tC1\t172.17.0.3\t1\tq\tT\t-\t-\t-\n").splitlines(keepends=True)
    parser = ZeekLogParser("live/dns.log", fields=("ts", "query"))
    out = [parser.parse_line(line, n) for n, line in enumerate(lines, 1)]
    assert out[:-1] == [None] * (len(lines) - 1)
    assert out[-1] == {"ts": 1.0, "query": "q"}
    assert parser.log_path == "dns" and parser.stats.headers == 8


def test_fixture_tsv_and_json_give_same_records() -> None:
    tsv = list(iter_zeek_log(resolve(GEO / "dns.log")))
    js = list(iter_zeek_log(resolve(GEO / "json" / "dns.log")))
    assert len(tsv) == len(js) == 326

    def key(r):
        return (r["ts"], r["id.orig_h"], r["id.orig_p"], r["query"], r["qtype_name"],
                r.get("answers"), r.get("TTLs"), r["rcode_name"], r["AA"], r["rejected"])

    assert [key(r) for r in tsv] == [key(r) for r in js]


@pytest.mark.parametrize("name,records,bad,io_errors", [
    ("conn.log", 360, 0, 0),
    ("dns.log", 54, 0, 0),
    ("http.log", 150, 0, 0),
    ("http.log.gz", 150, 0, 0),
    ("http.log.corrupt.gz", 150, 0, 1),      # truncated gzip: rows read, stream error counted
    ("http_empty.log", 0, 0, 0),             # headers and #close, no rows
    ("conn_date_issue.log", 3, 0, 0),        # '#separator<TAB>' header variant
    ("files.log", 113, 0, 0),
    ("ssl.log", 37, 0, 0),
    ("x509.log", 13, 0, 0),
    ("weird.log", 12, 0, 0),
    ("notice.log", 2, 0, 0),
    ("tor_ssl.log", 733, 0, 0),
])
def test_zat_data(name: str, records: int, bad: int, io_errors: int) -> None:
    stats = ParseStats()
    recs = list(iter_zeek_log(ZAT / name, stats))
    assert (len(recs), stats.bad_lines, stats.io_errors) == (records, bad, io_errors)
    for r in recs:
        assert isinstance(r["ts"], float) and r["ts"] > 0


def test_zat_json_logs() -> None:
    for path in sorted((ZAT / "json").glob("*.log")):
        stats = ParseStats()
        recs = list(iter_zeek_log(path, stats))
        assert recs and stats.bad_lines == 0, path
        assert all(isinstance(r["ts"], float) for r in recs)


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside zat 0.4.9 on pandas 3
def test_find_logs_and_zat_dataframe() -> None:
    assert [p.name for p in find_logs(ZAT, "http")] == ["http.log", "http.log.gz"]
    df = read_dataframe(ZAT / "http.log")            # zat LogToDataFrame
    assert len(df) == 150
    dfz = read_dataframe(ZAT / "http.log.gz")        # gzip: our reader, float ts
    assert len(dfz) == 150 and dfz["ts"].dtype.kind == "f"


def test_where_filters_before_conversion(tmp_path: Path) -> None:
    body = ("1.0\tC1\t172.17.0.3\t1\tipinfo.io\tT\t-\t-\t-\n"
            "2.0\tC2\t192.168.1.5\tbad-port-but-filtered\tq\tT\t-\t-\t-\n"
            "3.0\tC3\t172.17.0.4\t2\ta\\x09b\tF\t-\t-\t-\n")
    stats = ParseStats()
    recs = list(iter_zeek_log(_write(tmp_path, "dns.log", HEADER + body), stats,
                              where={"id.orig_h": lambda a: a.startswith("172.17.")}))
    assert [r["uid"] for r in recs] == ["C1", "C3"]
    assert (stats.filtered, stats.bad_lines) == (1, 0)
    seen = []
    list(iter_zeek_log(_write(tmp_path, "dns2.log", HEADER + body), ParseStats(),
                       where={"query": lambda q: seen.append(q) or True}))
    assert seen == ["ipinfo.io", "q", "a\tb"]          # predicates see unescaped text


def test_missing_and_binary_files_do_not_raise(tmp_path: Path) -> None:
    stats = ParseStats()
    assert list(iter_zeek_log(tmp_path / "nope.log", stats)) == []
    assert stats.io_errors == 1
    junk = tmp_path / "junk.log"
    junk.write_bytes(bytes(range(256)) * 40 + b"\n\xff\xfe{\"ts\":\n")
    stats = ParseStats()
    assert list(iter_zeek_log(junk, stats)) == []
    assert stats.bad_lines >= 1 and stats.io_errors == 0
    bad_gz = tmp_path / "bad.log.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 64)
    stats = ParseStats()
    assert list(iter_zeek_log(bad_gz, stats)) == []
    assert stats.io_errors == 1


# ---- hostile lines: every exception a line can provoke is caught per line, named and counted ----

JSON_GOOD = '{"ts": %s, "uid": "%s", "id.orig_h": "172.17.0.3", "id.orig_p": 1, "query": "q"}'
HOSTILE_JSON = [
    ('{"ts": 1.0, "a": ' + "[" * 100_000, "nested too deeply"),      # RecursionError
    ('[{"ts": 1.0}]', "before any #fields"),           # not JSON-object-shaped: a TSV line
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),   # RecursionError
    ('{"ts": ' + "9" * 400 + ', "uid": "X"}', "ts"),                  # int -> float overflow
    ('{"ts": ' + "9" * 5000 + ', "uid": "X"}', "digits"),             # ValueError in json
    ('{"ts": 1e999, "uid": "X"}', "not finite"),                      # inf
    ('{"ts": NaN, "uid": "X"}', "not finite"),
    ('{"ts": "9999-99-99T00:00:00Z", "uid": "X"}', "ts"),
    ('{"ts": [1.0], "uid": "X"}', "field ts is list"),
    ('{"ts": 1.0, "uid": "X", "id.orig_h": ["172.17.0.3"]}', "field id.orig_h is list"),
    ('{"ts": 1.0, "uid": "X", "id.orig_p": "53"}', "field id.orig_p is str"),
    ('{"ts": 1.0, "uid": {"a": 1}}', "field uid is dict"),
]


@pytest.mark.parametrize("bad,why", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_hostile_json_line_is_named_and_the_rest_is_read(tmp_path: Path, bad: str, why: str,
                                                         caplog) -> None:
    text = "\n".join([JSON_GOOD % ("1.5", "J1"), bad, JSON_GOOD % ("2.5", "J3")]) + "\n"
    for gz in (False, True):
        path = _write(tmp_path, f"dns{int(gz)}.log" + (".gz" if gz else ""), text, gz=gz)
        stats = ParseStats()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
            recs = list(iter_zeek_log(path, stats))
        assert [r["uid"] for r in recs] == ["J1", "J3"]
        assert stats.bad_lines == 1 and stats.records == 2
        assert any(f"{path}:2:" in m and why in m for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", "1e999"])
def test_tsv_time_must_be_finite(tmp_path: Path, ts: str, caplog) -> None:
    """NaN or inf as a time would throw the engine's data clock off: a malformed line."""
    text = (HEADER + "1.5\tC1\t172.17.0.3\t1\tq\tT\t-\t-\t-\n"
            + f"{ts}\tC2\t172.17.0.3\t1\tq\tT\t-\t-\t-\n" + "2.5\tC3\t172.17.0.3\t1\tq\tT\t-\t-\t-\n")
    path = _write(tmp_path, "dns.log", text)
    stats = ParseStats()
    with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
        recs = list(iter_zeek_log(path, stats))
    assert [r["uid"] for r in recs] == ["C1", "C3"] and stats.bad_lines == 1
    assert any(f"{path}:10:" in m and "finite" in m for m in caplog.messages), caplog.messages


def test_truncated_gzip_tsv_gives_what_was_readable(tmp_path: Path, caplog) -> None:
    body = "".join(f"{1000 + i}.5\tC{i}\t172.17.0.3\t1\tq{i}\tT\t-\t-\t-\n" for i in range(4000))
    data = gzip.compress((HEADER + body).encode())
    path = tmp_path / "dns.log.gz"
    path.write_bytes(data[: len(data) // 2])
    stats = ParseStats()
    with caplog.at_level(logging.WARNING, logger="scheduler.collect.zeeklog"):
        recs = list(iter_zeek_log(path, stats))
    assert 0 < len(recs) < 4000 and [r["uid"] for r in recs] == [f"C{i}" for i in range(len(recs))]
    assert stats.io_errors == 1
    assert any(str(path) in m for m in caplog.messages)
