"""The engine's ingest path: restricted Zeek parsing and the Joiner options the pipeline uses.

The pipeline attributes through scheduler.detect.join.Joiner with `inbound=False` and
`geo_from_names=False`, holds records on a wall clock (hold/due), and reads only the fields of
`pipeline.ingest_fields`. These tests pin what that must not change: the parsed values of the fields
read, and the attribution rules (records take their container's host, outbound only).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from datafiles import resolve, scenario_dir
from scheduler.detect.join import Joiner
from scheduler.collect.osquery_results import OsqueryRow
from scheduler.pipeline import Pipeline, ingest_fields
from scheduler.collect.zeeklog import ZeekLogParser, iter_zeek_log

ZEEK = scenario_dir("geo_lookup") / "zeek"


@pytest.mark.parametrize("stream", ["conn", "dns", "http", "ssl"])
@pytest.mark.parametrize("sub", ["", "json"])
def test_engine_fields_parse_like_the_full_record(stream: str, sub: str) -> None:
    path = resolve(ZEEK / sub / f"{stream}.log")
    full = list(iter_zeek_log(path))
    part = list(iter_zeek_log(path, fields=ingest_fields(stream)))
    assert len(full) == len(part) > 0
    wanted = ingest_fields(stream)
    for f, p in zip(full, part):
        assert p == {k: v for k, v in f.items() if k in wanted}
    assert any(p.get("id.orig_h") for p in part)


def test_tsv_values_unset_empty_sets_escapes_with_and_without_fields() -> None:
    header = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
              "#fields\tts\tuid\thost\tport\ttags\tnames\tlast",
              "#types\ttime\tstring\tstring\tport\tset[string]\tvector[count]\tstring"]
    line = "1.5\tC1\ta\\x09b\t-\t(empty)\t1,2\t(empty)"
    for fields in (None, ("ts", "host", "port", "names")):
        p = ZeekLogParser("mem", fields=fields)
        for h in header:
            p.parse_line(h, 0)
        rec = p.parse_line(line, 1)
        expect = {"ts": 1.5, "uid": "C1", "host": "a\tb", "port": None, "tags": [],
                  "names": [1, 2], "last": ""}
        assert rec == (expect if fields is None else {k: expect[k] for k in fields})
        assert p.parse_line("1.5\tC1\tx", 2) is None          # wrong field count
        assert p.parse_line("x\tC1\ta\t-\t(empty)\t1\t-", 3) is None   # bad time
        assert p.stats.bad_lines == 2


def _inventory_row(host: str, cid: str, addr: str) -> OsqueryRow:
    return OsqueryRow("container_inventory", host, 100, "snapshot",
                      {"id": cid, "name": "web", "image": "img:1", "ip_addresses": addr,
                       "created": "90", "state": "running"})


def test_pipeline_joiner_outbound_only_and_container_host() -> None:
    j = Joiner(subnets=["172.17.0.0/16"], default_host="sensor", hold_s=0, inbound=False,
               geo_from_names=False)
    j.inventory.observe(_inventory_row("node-a", "c" * 64, "172.17.0.2"))
    out = j.net_record("dns", {"ts": 101.0, "id.orig_h": "172.17.0.2", "id.resp_h": "10.0.0.2",
                               "query": "ipinfo.io", "rcode_name": "NOERROR"}, "sensor")
    # found on the one host that had the address; the record is about that host
    assert (out.container_id, out.host, out.geo_service) == ("c" * 64, "node-a", "")
    inbound = {"ts": 101.0, "id.orig_h": "192.0.2.7", "id.resp_h": "172.17.0.2"}
    assert j.net_record("conn", inbound) is None
    kept = j.net_record("conn", inbound, keep_non_container=True)
    assert kept.container_id == "" and kept.orig_h == "192.0.2.7"
    http = j.net_record("http", {"ts": 101.0, "id.orig_h": "172.17.0.2", "host": "ipinfo.io:80"})
    assert (http.domain, http.proto) == ("ipinfo.io", "tcp")
    assert j.net_record("conn", {"ts": None, "id.orig_h": "172.17.0.2"}) is None
    assert j.stats.malformed == 1


def test_hold_and_due_on_a_caller_clock() -> None:
    j = Joiner(subnets=["172.17.0.0/16"], default_host="h", hold_s=30)
    rec = {"ts": 200.0, "id.orig_h": "172.17.0.9", "id.resp_h": "1.1.1.1"}
    assert j.should_hold(rec) and not j.should_hold(dict(rec, container_id="x"))
    j.hold("conn", rec, None, at=1000.0)
    assert j.due(now=1010.0) == [] and j.held == 1
    j.inventory.observe(OsqueryRow("container_inventory", "h", 205, "snapshot",
                                   {"id": "d" * 64, "ip_addresses": "172.17.0.9", "image": "t:1",
                                    "created": "199", "state": "running"}))
    assert j.due(now=1011.0) == [("conn", rec, None)]   # attributable now: released early
    j.hold("conn", dict(rec, **{"id.orig_h": "172.17.0.10"}), None, at=1000.0)  # nobody's
    assert j.due(now=1029.0) == [] and len(j.due(now=1030.0)) == 1


def test_pipeline_hold_state_round_trip() -> None:
    p = Pipeline(host="h")
    p.hold_s = 30
    rec = {"ts": 200.0, "id.orig_h": "172.17.0.9", "id.resp_h": "1.1.1.1", "uid": "C1"}
    p.feed_zeek("conn", rec)
    assert p.joiner.held == 1 and p.stats.zeek_records == 0
    q = Pipeline(host="h")
    q.hold_s = 30
    q.load_state(p.dump_state())
    assert q.joiner.held_records() == [("conn", rec, None)]
    assert q.release_held(force=True) == 1 and q.joiner.held == 0
    assert q.stats.zeek_records == 1 and q.stats.nets_unattributed == 1
