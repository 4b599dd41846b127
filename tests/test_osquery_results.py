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
