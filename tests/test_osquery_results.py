"""osqueryd results-log parsing: the three line shapes, old keys, malformed lines."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from scheduler.collect import osquery_results as oqr
from scheduler.collect.osquery_results import MalformedLine, OsqueryRow, ParseStats


def test_table_for_query_names() -> None:
    assert oqr.table_for_query("pack_stowaway_stowaway_container_events") == "container_events"
    assert oqr.table_for_query("pack_stowaway_stowaway_container_process_events") == "container_process_events"
    assert oqr.table_for_query("pack_stowaway_stowaway_container_processes") == "container_processes"
    assert oqr.table_for_query("pack_my_pack_with_underscores_container_inventory") == "container_inventory"
    assert oqr.table_for_query("container_sockets") == "container_sockets"
    assert oqr.table_for_query("stowaway_container_sockets") == "container_sockets"
    assert oqr.table_for_query("pack_osquery-monitoring_schedule") is None
    assert oqr.table_for_query("xcontainer_events") is None


def test_differential_line() -> None:
    line = json.dumps({
        "name": "pack_stowaway_stowaway_container_process_events", "hostIdentifier": "node-7",
        "calendarTime": "Fri Nov 27 18:44:26 2026 UTC", "unixTime": 1795805066, "epoch": 0,
        "counter": 12, "numerics": False, "decorations": {"host_uuid": "u1"},
        "columns": {"pid": "3483", "cmdline": "wget -qO- http://ipinfo.io/", "location_discovery": "1"},
        "action": "added"})
    rows = oqr.parse_line(line)
    assert rows == [OsqueryRow("container_process_events", "node-7", 1795805066.0, "added",
                               {"pid": "3483", "cmdline": "wget -qO- http://ipinfo.io/",
                                "location_discovery": "1"},
                               "pack_stowaway_stowaway_container_process_events")]


def test_snapshot_line_old_hostname_and_string_unixtime() -> None:
    line = json.dumps({
        "name": "stowaway_container_inventory", "hostname": "old-host", "unixTime": "1795805070",
        "action": "snapshot",
        "snapshot": [{"id": "a", "ip_addresses": "172.17.0.2", "pid": 12},
                     {"id": "b", "ip_addresses": "", "privileged": True}]})
    rows = oqr.parse_line(line)
    assert [r.action for r in rows] == ["snapshot", "snapshot"]
    assert {r.host for r in rows} == {"old-host"}
    assert rows[0].unix_time == 1795805070.0
    # values are strings on the wire; numbers/bools from other producers are stringified
    assert rows[0].columns["pid"] == "12" and rows[1].columns["privileged"] == "1"


def test_batched_diff_results_removed_first() -> None:
    line = json.dumps({
        "name": "pack_stowaway_stowaway_container_inventory", "hostIdentifier": "h",
        "unixTime": 100,
        "diffResults": {"added": [{"id": "c1", "state": "exited"}],
                        "removed": [{"id": "c1", "state": "running"}]}})
    rows = oqr.parse_line(line)
    assert [(r.action, r.columns["state"]) for r in rows] == [("removed", "running"), ("added", "exited")]


def test_host_from_decorations_when_no_identifier() -> None:
    line = json.dumps({"name": "container_events", "unixTime": 1, "decorations": {"hostname": "d"},
                       "columns": {}, "action": "added"})
    assert oqr.parse_line(line)[0].host == "d"


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ('{"name": "container_events", "unixTime": 1, "action": "added"}', "none of"),
    ('{"name": "container_events", "unixTime": "soon", "columns": {}, "action": "added"}', "not a number"),
    ('{"name": "container_events", "columns": {}, "action": "added"}', "no unixTime"),
    ('{"unixTime": 1, "columns": {}, "action": "added"}', "no query name"),
    ('{"name": "container_events", "unixTime": 1, "columns": {}, "action": "changed"}', "added/removed"),
    ('{"name": "container_events", "unixTime": 1, "snapshot": {"a": 1}}', "not a list"),
    ('{"name": "container_events", "unixTime": 1, "diffResults": {"added": 5}}', "not a list"),
    ('{"name": "container_events", "unixTime": 1, "columns": [1], "action": "added"}', "not an object"),
])
def test_malformed_lines_raise(bad: str, why: str) -> None:
    with pytest.raises(MalformedLine, match=why):
        oqr.parse_line(bad)


def test_foreign_queries_are_ignored_not_malformed() -> None:
    stats = ParseStats()
    line = json.dumps({"name": "pack_incident_response_arp_cache", "hostIdentifier": "h",
                       "unixTime": 1, "columns": {"address": "10.0.0.1"}, "action": "added"})
    assert list(oqr.iter_lines([line, ""], stats=stats)) == []
    assert stats.ignored == 1 and stats.malformed == 0


def test_iter_results_gzip_counts_and_names_file_and_line(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "osqueryd.results.log.gz"
    lines = [
        oqr.differential_line("container_events", "h1", 10, "added", {"action": "start", "container_id": "x"}),
        "garbage",
        oqr.snapshot_line("container_inventory", "h1", 20, [{"id": "x"}, {"id": "y"}]),
        '{"name": "container_events", "unixTime": 1',   # truncated by a crash mid-write
        oqr.batched_line("container_events", "h1", 30, [{"action": "die"}], [{"action": "x"}]),
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    stats = ParseStats()
    with caplog.at_level(logging.WARNING):
        rows = list(oqr.iter_results(path, stats))
    assert [(r.table, r.action) for r in rows] == [
        ("container_events", "added"), ("container_inventory", "snapshot"),
        ("container_inventory", "snapshot"), ("container_events", "removed"),
        ("container_events", "added")]
    assert stats.malformed == 2 and stats.lines == 5 and stats.rows == 5
    assert any(f"{path}:2:" in m for m in caplog.messages)
    assert any(f"{path}:4:" in m for m in caplog.messages)


def test_writers_round_trip() -> None:
    cols = {"id": "abc", "created": 1795805038, "labels": {"a": "b"}}
    for line in (oqr.differential_line("container_inventory", "h", 5.7, "added", cols),
                 oqr.snapshot_line("container_inventory", "h", 5.7, [cols]),
                 oqr.batched_line("container_inventory", "h", 5.7, [cols])):
        obj = json.loads(line)
        assert obj["name"] == "pack_stowaway_stowaway_container_inventory"
        assert obj["unixTime"] == 5 and obj["hostIdentifier"] == "h"
        (row,) = oqr.parse_line(line)
        assert row.columns == {"id": "abc", "created": "1795805038", "labels": '{"a":"b"}'}


def test_a_flood_of_bad_lines_is_counted_not_logged_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    stats = ParseStats()
    with caplog.at_level(logging.WARNING):
        assert list(oqr.iter_lines(["junk"] * 1000, source="f", stats=stats)) == []
    assert stats.malformed == 1000
    assert len(caplog.records) == oqr.MAX_WARNINGS + 1
    assert caplog.messages[0].startswith("f:1:")


# ---- hostile lines: every exception a line can provoke is caught per line, named and counted ----

def _good(t: int) -> str:
    return oqr.differential_line("container_events", "h1", t, "added",
                                 {"action": "start", "container_id": f"c{t}"})


HOSTILE = [
    ("[" * 100_000, "nested too deeply"),                           # RecursionError in json
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    ('{"name": "container_events", "unixTime": ' + "9" * 5000 + ', "columns": {}, '
     '"action": "added"}', "JSON we read"),                          # ValueError: > 4300 digits
    ('{"name": "container_events", "unixTime": 1e999, "columns": {}, "action": "added"}',
     "unixTime"),                                                    # inf: not a finite time
    ('{"name": "container_events", "unixTime": NaN, "columns": {}, "action": "added"}',
     "unixTime"),
    ('{"name": "container_events", "unixTime": "1e400", "columns": {}, "action": "added"}',
     "unixTime"),
    ('{"name": "container_events", "unixTime": [1], "columns": {}, "action": "added"}',
     "unixTime is list"),
    ('{"name": "container_events", "unixTime": 1, "snapshot": [[1, 2]]}', "snapshot[0]"),
    ('{"name": "container_events", "unixTime": 1, "diffResults": {"added": ["x"]}}',
     "diffResults.added[0]"),
    ('{"name": "container_events", "unixTime": 1, "columns": [], "action": "added"}', "columns"),
    (b'{"name": "container_events", "unixTime": 1, "columns": {"a": "\xff\xfe"}}', "UTF-8"),
    ('[{"name": "container_events"}]', "list, not an object"),
]


@pytest.mark.parametrize("bad,why", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_line_is_named_counted_and_the_rest_is_read(bad: str | bytes, why: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    stats = ParseStats()
    parser = oqr.OsqueryResultsParser("results.log", stats)
    with caplog.at_level(logging.WARNING):
        rows = [r for n, line in enumerate([_good(1), bad, _good(3)], 1)
                for r in parser.parse_line(line, n)]
    assert [r.columns["container_id"] for r in rows] == ["c1", "c3"]
    assert stats.malformed == 1 and stats.rows == 2
    assert any(m.startswith("results.log:2:") and why in m for m in caplog.messages), caplog.messages


def test_truncated_gzip_gives_what_was_readable_and_names_the_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "osqueryd.results.log.gz"
    data = gzip.compress(("\n".join(_good(i) for i in range(3000)) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])         # the writer died mid-file
    stats = ParseStats()
    with caplog.at_level(logging.WARNING):
        rows = list(oqr.iter_results(path, stats))    # no EOFError
    assert 0 < len(rows) < 3000
    assert [int(r.unix_time) for r in rows] == list(range(len(rows)))   # in order, no gap
    assert stats.io_errors == 1
    assert any(str(path) in m and "EOFError" in m for m in caplog.messages), caplog.messages


def test_warnings_are_rate_limited_per_period_not_silenced_for_good(
        caplog: pytest.LogCaptureFixture) -> None:
    """After a burst, a bad line in a later period is logged again (a daemon runs for weeks)."""
    clock = [0.0]
    stats = ParseStats()
    stats.limiter.clock = lambda: clock[0]
    parser = oqr.OsqueryResultsParser("f", stats)
    with caplog.at_level(logging.WARNING):
        for n in range(1, 101):
            parser.parse_line("junk", n)
        burst = len(caplog.messages)
        clock[0] = 61.0
        parser.parse_line("junk", 101)
    assert stats.malformed == 101
    assert burst == oqr.MAX_WARNINGS + 1               # 20 lines + "only counted"
    assert any("80 more warnings" in m for m in caplog.messages)
    assert caplog.messages[-1].startswith("f:101:")
