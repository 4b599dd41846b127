"""Recording format and the fixture converter, checked against the fixtures themselves."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from datafiles import open_text, read_bytes, scenarios_dir
from scheduler.collect import osquery_results as oqr
from scheduler.collect.osquery_results import ParseStats
from scheduler.collect.recording import (DEMO_SCENARIOS, Recording, RecordingMeta, RecordingWriter,
                                 convert_scenario, demo_data_dir, list_recordings,
                                 parse_rfc3339_ns, rewrite_text, _rewrite_map)

SCEN = scenarios_dir()


def test_rfc3339_ns() -> None:
    assert parse_rfc3339_ns("2026-11-27T18:43:58.477598817Z") == 1795805038477598817
    assert parse_rfc3339_ns("2026-11-27T18:43:58Z") == 1795805038000000000
    assert parse_rfc3339_ns("2026-11-27T19:43:58.5+01:00") == 1795805038500000000


def test_rewrite_text_first_match_wins() -> None:
    rules = _rewrite_map([{"original": "10.89.0.201/32", "rewritten": "34.117.59.81"},
                          {"original": "10.89.0.250/32", "rewritten": "10.0.0.2"},
                          {"original": "10.89.0.0/24", "rewritten": "172.17.0.0"}])
    assert rewrite_text("wget http://10.89.0.3:8080/health", rules) == "wget http://172.17.0.3:8080/health"
    assert rewrite_text("nc 10.89.0.201 80; dig @10.89.0.250", rules) == "nc 34.117.59.81 80; dig @10.0.0.2"
    assert rewrite_text("110.89.0.3 10.89.0.35", rules) == "110.89.0.3 172.17.0.35"


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    meta = RecordingMeta("t", "h1", "prod", "unit test", [1.0, 2.0])
    zsrc = tmp_path / "conn.log"
    zsrc.write_text("#separator \\x09\n#fields\tts\tuid\tid.orig_h\n#types\ttime\tstring\taddr\n"
                    "1.5\tCa\t172.17.0.2\n")
    with RecordingWriter(tmp_path / "rec", meta) as w:
        w.write_line(oqr.snapshot_line("container_inventory", "h1", 1, [{"id": "x"}]))
        w.write_line("not json")
        w.add_zeek_log(zsrc)
        w.write_ground_truth({"scenario": "t"})
    rec = Recording(tmp_path / "rec")
    assert rec.meta == meta and rec.host == "h1"
    assert rec.osquery_log().name == "osqueryd.results.log.gz"
    stats = ParseStats()
    rows = list(rec.iter_osquery_rows(stats))
    assert [r.columns for r in rows] == [{"id": "x"}] and stats.malformed == 1
    assert set(rec.zeek_logs()) == {"conn"}
    assert [r["uid"] for r in rec.iter_zeek("conn")] == ["Ca"]
    assert rec.ground_truth() == {"scenario": "t"}
    assert list(rec.iter_zeek("dns")) == []


def test_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Recording(tmp_path)


@pytest.mark.parametrize("scenario", ["geo_lookup", "churn", "drift"])
def test_converter_matches_fixture(scenario: str, tmp_path: Path) -> None:
    src = SCEN / scenario
    counts = convert_scenario(src, tmp_path / scenario)
    rec = Recording(tmp_path / scenario)
    stats = ParseStats()
    rows = list(rec.iter_osquery_rows(stats))
    assert stats.malformed == 0
    by_table = Counter(r.table for r in rows)
    # every podman event line becomes one container_events row
    n_events = sum(1 for line in open(src / "events.jsonl") if line.strip())
    assert by_table["container_events"] == n_events == counts["container_events"]
    ev_actions = Counter(r.columns["action"] for r in rows if r.table == "container_events")
    assert "died" not in ev_actions and "remove" not in ev_actions
    assert ev_actions["die"] == sum(1 for l in open(src / "events.jsonl") if '"Status":"died"' in l)
    # log order is unixTime order and unixTime never precedes the event
    times = [r.unix_time for r in rows]
    assert times == sorted(times)
    for r in rows:
        if "time_nano" in r.columns:
            assert int(r.columns["time_nano"]) / 1e9 <= r.unix_time
    # every container of containers.json is in an inventory snapshot with its rewritten address
    doc = json.loads((src / "containers.json").read_text())
    inv = {r.columns["id"]: r.columns for r in rows if r.table == "container_inventory"}
    for c in doc["containers"]:
        assert inv[c["id"]]["ip_addresses"] == c["ip_address"], c["name"]
        assert inv[c["id"]]["image"] == c["image"]
    # every process line yields at least one exec row, and no original address leaks
    with open_text(src / "processes.jsonl") as fh:
        procs = [json.loads(l) for l in fh]
    pev = [r for r in rows if r.table == "container_process_events"]
    assert {(int(r.columns["pid"]), r.columns["container_id"]) for r in pev} == \
        {(p["pid"], p["container_id"]) for p in procs}
    assert not any("10.89.0." in r.columns.get("cmdline", "") for r in rows)
    # the Zeek logs are the fixture's, byte for byte (gzip-compressed)
    for name, path in rec.zeek_logs().items():
        with gzip.open(path, "rb") as fh:
            assert fh.read() == read_bytes(src / "zeek" / f"{name}.log")
    assert rec.ground_truth() == json.loads((src / "ground_truth.json").read_text())


def test_geo_lookup_rm_container_and_classification(tmp_path: Path) -> None:
    convert_scenario(SCEN / "geo_lookup", tmp_path / "g")
    rows = list(Recording(tmp_path / "g").iter_osquery_rows())
    gt = json.loads((SCEN / "geo_lookup" / "ground_truth.json").read_text())
    a7 = next(a for a in gt["malicious_actions"] if a["action_id"] == "A7")
    inv = [r for r in rows if r.table == "container_inventory" and r.columns["id"] == a7["container_id"]]
    assert inv and inv[0].columns["ip_addresses"] == "172.17.0.18"
    assert inv[0].columns["state"] in ("exited", "removed")
    acts = [r.columns["action"] for r in rows if r.table == "container_events"
            and r.columns["container_id"] == a7["container_id"]]
    assert acts[:3] == ["create", "init", "start"] and "destroy" in acts
    ld = [r for r in rows if r.table == "container_process_events" and r.columns["location_discovery"] == "1"]
    ld_containers = {r.columns["container_id"] for r in ld}
    assert a7["container_id"] in ld_containers
    assert ld_containers <= {a["container_id"] for a in gt["malicious_actions"]}
    wget = next(r for r in ld if r.columns["container_id"] == a7["container_id"])
    assert wget.columns["name"] == "wget" and wget.columns["cmdline"] == "wget -qO- http://icanhazip.com/"
    assert wget.columns["indicator"]


def test_benign_long_restart_and_redeploy_rows(tmp_path: Path) -> None:
    convert_scenario(SCEN / "benign_long", tmp_path / "b")
    rec = Recording(tmp_path / "b")
    rows = list(rec.iter_osquery_rows())
    doc = json.loads((SCEN / "benign_long" / "containers.json").read_text())
    web3 = next(c for c in doc["containers"] if c["name"] == "web-3")
    acts = [r.columns["action"] for r in rows if r.table == "container_events"
            and r.columns["container_id"] == web3["id"]]
    assert "restart" in acts and acts.count("start") == 2
    # web-3 is reported running across its restart (same id, same IP)
    states = {r.columns["state"] for r in rows if r.table == "container_inventory"
              and r.columns["id"] == web3["id"] and web3["restarts"][0]["start_ts"] < r.unix_time < web3["finished_ts"]}
    assert states == {"running"}
    assert not any(r.columns.get("location_discovery") == "1" for r in rows)
    assert rec.zeek_log("conn").name == "conn.log.gz"


def test_bundled_demo_data_is_readable() -> None:
    recs = {r.name: r for r in list_recordings(demo_data_dir())}
    assert set(DEMO_SCENARIOS[:4]) <= set(recs)
    total = sum(p.stat().st_size for p in demo_data_dir().rglob("*") if p.is_file())
    assert total < 5_000_000
    for name in ("benign_long", "geo_lookup", "churn", "drift"):
        r = recs[name]
        assert r.meta.host == "lab-host-1" and r.meta.time_range[0] < r.meta.time_range[1]
        assert r.osquery_log() is not None and {"conn", "dns", "http"} <= set(r.zeek_logs())
        assert r.ground_truth()["scenario"] == name
    stats = ParseStats()
    n = sum(1 for _ in recs["geo_lookup"].iter_osquery_rows(stats))
    assert n > 500 and stats.malformed == 0


def test_rotated_zeek_files_are_read_in_order(tmp_path: Path) -> None:
    meta = RecordingMeta("r", "h")
    hdr = "#separator \\x09\n#fields\tts\tuid\n#types\ttime\tstring\n"
    src = tmp_path / "src"
    src.mkdir()
    (src / "dns.2026-11-27-19-00-00.log").write_text(hdr + "1.0\tA\n")
    (src / "dns.log").write_text(hdr + "2.0\tB\n")
    with RecordingWriter(tmp_path / "rec", meta) as w:
        for p in sorted(src.iterdir()):
            w.add_zeek_log(p, compress=p.name == "dns.log")
    rec = Recording(tmp_path / "rec")
    assert rec.zeek_log("dns").name == "dns.log.gz"
    assert [r["uid"] for r in rec.iter_zeek("dns")] == ["A", "B"]
