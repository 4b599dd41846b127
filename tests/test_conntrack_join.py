"""The NAT join (scheduler.detect.nat_join through Joiner and Pipeline): uplink Zeek records, which
carry the host's address, tied to the container flow the host's conntrack reported.

The container_nat_flows rows are built from the real netlink bytes in tests/data/conntrack (a
masqueraded podman container's HTTP request and DNS query, captured through the uplink lab) by the
extension's own row builder, so the columns are the ones osquery would log.
"""
from __future__ import annotations

import json
from pathlib import Path

from osquery_ext import conntrack as ct
from scheduler.collect.osquery_results import OsqueryRow
from scheduler.config import Config
from scheduler.detect.join import Joiner
from scheduler.detect.nat_join import JOIN_ADDRESS, JOIN_NAT, JOIN_RESOLVER, NatFlows
from scheduler.pipeline import Pipeline

DATA = Path(__file__).resolve().parent / "data" / "conntrack"
META = json.loads((DATA / "meta.json").read_text())
CID = META["container_id"]
HOSTADDR = META["host_address"]
HOST = "node-1"


def _real_rows() -> list[dict[str, str]]:
    """container_nat_flows rows of the captured events, as the extension builds them."""
    rows = []
    for line in (DATA / "events.jsonl").read_text().splitlines():
        d = json.loads(line)
        for f in ct.parse_datagram(bytes.fromhex(d["hex"])).flows:
            rows.append(ct.flow_row(f, d["t_ns"], ct.Holder(CID), "event"))
    return rows


def _osq(cols: dict[str, str], host: str = HOST) -> OsqueryRow:
    return OsqueryRow(table="container_nat_flows", host=host, unix_time=float(cols["time"]),
                      action="added", columns=dict(cols))


def _http_row() -> dict[str, str]:
    return next(r for r in _real_rows() if r["remote_port"] == "80")


def _uplink_conn(row: dict[str, str], dt: float = 0.003, **kw) -> dict:
    """The uplink's view of a flow: the host's address and NAT port, the far end."""
    rec = {"ts": float(row["start_time"]) + dt, "uid": "CUp1", "id.orig_h": row["nat_address"],
           "id.orig_p": int(row["nat_port"]), "id.resp_h": row["nat_remote_address"],
           "id.resp_p": int(row["nat_remote_port"]), "proto": row["protocol"],
           "conn_state": "SF"}
    rec.update(kw)
    return rec


def test_rows_from_real_bytes_match_the_uplink_tuple():
    nat = NatFlows()
    for r in _real_rows():
        nat.observe(r, HOST)
    http = _http_row()
    ts = float(http["start_time"])
    f = nat.match(HOST, HOSTADDR, int(http["nat_port"]), "tcp", ts + 0.01,
                  http["nat_remote_address"], 80)
    assert f is not None and f.container_id == CID
    assert (f.container_addr, f.container_port) == (META["container_address"],
                                                    int(http["container_port"]))
    # wrong far end, wrong port, wrong protocol, or long before the flow: not this flow
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]), "tcp", ts, "198.51.100.99", 80) is None
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]) + 1, "tcp", ts) is None
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]), "udp", ts) is None
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]), "tcp", ts - 60) is None
    # a sensor clock 1.5 s behind the host still matches (skew 2 s); 5 s does not
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]), "tcp", ts - 1.5) is not None
    assert nat.match(HOST, HOSTADDR, int(http["nat_port"]), "tcp", ts - 5) is None
    assert nat.is_nat_address(HOSTADDR) and not nat.is_nat_address(META["container_address"])


def test_destroy_closes_the_flow_and_a_reused_port_finds_the_next_one():
    nat = NatFlows(skew_s=1.0)
    base = {"event": "new", "protocol": "tcp", "container_address": "10.89.0.2",
            "container_port": "40000", "remote_address": "198.51.100.201", "remote_port": "80",
            "nat_address": HOSTADDR, "nat_port": "40000", "nat_remote_address": "198.51.100.201",
            "nat_remote_port": "80", "container_id": "c-old", "conntrack_id": "7",
            "start_time": "1000.0", "end_time": "", "time": "1000"}
    nat.observe(base, HOST)
    nat.observe({**base, "event": "destroy", "end_time": "1010.0", "time": "1010"}, HOST)
    assert len(nat) == 1
    nat.observe({**base, "container_address": "10.89.0.3", "container_id": "c-new",
                 "conntrack_id": "8", "start_time": "1100.0", "time": "1100"}, HOST)
    assert nat.match(HOST, HOSTADDR, 40000, "tcp", 1005).container_id == "c-old"
    assert nat.match(HOST, HOSTADDR, 40000, "tcp", 1050) is None   # between the two flows
    assert nat.match(HOST, HOSTADDR, 40000, "tcp", 1200).container_id == "c-new"  # still open
    # the same NAT port towards another destination at the same time: told apart by the far end
    nat.observe({**base, "remote_address": "198.51.100.202", "nat_remote_address":
                 "198.51.100.202", "container_id": "c-other", "conntrack_id": "9",
                 "start_time": "1100.2", "time": "1100"}, HOST)
    assert nat.match(HOST, HOSTADDR, 40000, "tcp", 1101, "198.51.100.202", 80).container_id == "c-other"
    assert nat.match(HOST, HOSTADDR, 40000, "tcp", 1101, "198.51.100.201", 80).container_id == "c-new"
    # malformed rows are counted, not fatal
    assert nat.observe({"protocol": "tcp", "nat_port": "x"}, HOST) is None
    assert nat.stats.malformed == 1
    assert nat.prune(before=1050) == 1 and len(nat) == 2


def test_joiner_attributes_uplink_records_and_says_which_join():
    j = Joiner(default_host=HOST, hold_s=0, inbound=False, geo_from_names=False)
    for r in _real_rows():
        j.from_osquery(_osq(r))
    http = _http_row()
    nr = j.net_record("conn", _uplink_conn(http), HOST)
    assert nr is not None and nr.container_id == CID and nr.attribution == JOIN_NAT
    assert nr.container_addr == f"{META['container_address']}:{http['container_port']}"
    assert nr.orig_h == HOSTADDR  # the record still says what the sensor saw
    # the host's own traffic from the same address: not a container record
    own = _uplink_conn(http, **{"id.orig_p": 22, "id.resp_p": 5555})
    assert j.net_record("conn", own, HOST) is None
    # a bridge-side record (container address) keeps the address join
    bridge = {"ts": 1.0, "id.orig_h": META["container_address"], "id.orig_p": 1,
              "id.resp_h": "198.51.100.201", "id.resp_p": 80, "proto": "tcp"}
    inv = OsqueryRow("container_inventory", HOST, 0.5, "added",
                     {"id": CID, "name": "web", "image": "img", "ip_addresses":
                      META["container_address"], "created": "0", "started": "0",
                      "state": "running"})
    j.from_osquery(inv)
    b = j.net_record("conn", bridge, HOST)
    assert b is not None and b.container_id == CID and b.attribution == JOIN_ADDRESS
    assert b.container_addr == ""


def test_dns_through_the_hosts_resolver_only_when_unambiguous():
    j = Joiner(default_host=HOST, hold_s=0, inbound=False, geo_from_names=False)
    for r in _real_rows():   # teaches the host's uplink address
        j.from_osquery(_osq(r))
    t = 2000.0

    def resolver_row(cid: str, caddr: str, port: int, start: float) -> dict[str, str]:
        return {"time": str(int(start)), "event": "new", "protocol": "udp",
                "container_address": caddr, "container_port": str(port),
                "remote_address": "10.89.0.1", "remote_port": "53", "nat_address": caddr,
                "nat_port": str(port), "nat_remote_address": "10.89.0.1",
                "nat_remote_port": "53", "start_time": f"{start:.6f}", "end_time": "",
                "container_id": cid, "conntrack_id": str(port)}

    j.from_osquery(_osq(resolver_row("c-a", "10.89.0.5", 5000, t)))
    upstream = {"ts": t + 0.004, "id.orig_h": HOSTADDR, "id.orig_p": 33333,
                "id.resp_h": "192.0.2.53", "id.resp_p": 53, "proto": "udp",
                "query": "ipinfo.io", "rcode_name": "NOERROR"}
    nr = j.net_record("dns", upstream, HOST)
    assert nr is not None and nr.container_id == "c-a" and nr.attribution == JOIN_RESOLVER
    assert nr.domain == "ipinfo.io"
    # two containers asked the host's resolver then: not guessed
    j.from_osquery(_osq(resolver_row("c-b", "10.89.0.6", 5001, t + 100)))
    j.from_osquery(_osq(resolver_row("c-c", "10.89.0.7", 5002, t + 100.2)))
    assert j.net_record("dns", {**upstream, "ts": t + 100.3}, HOST) is None
    assert j.nat.stats.resolver_ambiguous == 1


def test_live_hold_waits_for_the_hosts_flow_report():
    j = Joiner(default_host=HOST, hold_s=30, inbound=False, geo_from_names=False)
    rows = _real_rows()
    http = _http_row()
    j.from_osquery(_osq(next(r for r in rows if r["remote_port"] == "53")))
    rec = _uplink_conn(http)
    assert j.should_hold(rec, HOST)       # the host's address, no flow reported for it yet
    j.from_osquery(_osq(http))
    assert not j.should_hold(rec, HOST)   # now explained
    other = _uplink_conn(http, **{"id.orig_h": "192.0.2.77"})
    assert not j.should_hold(other, HOST)  # not an uplink address of any container flow


def test_pipeline_alerts_on_the_container_behind_the_nat():
    """An uplink http.log record of ipinfo.io from the host's address: a T1614 alert on the
    container, whose network evidence names the NAT join and the container's own address."""
    http = _http_row()
    inv = OsqueryRow("container_inventory", HOST, float(http["time"]) - 5, "added",
                     {"id": CID, "name": "web-nat", "image": "localhost/stowaway-busybox:latest",
                      "ip_addresses": META["container_address"], "created": "1", "started": "1",
                      "state": "running"})
    rec = _uplink_conn(http)
    rec.update({"method": "GET", "host": "ipinfo.io", "uri": "/", "user_agent": "Wget"})
    items = [inv, _osq(http), ("http", rec)]
    alerts = Pipeline(Config(), host=HOST).process(items)
    loc = [a for a in alerts if a.rule == "location_discovery"]
    assert len(loc) == 1, [a.to_dict() for a in alerts]
    d = loc[0].to_dict()
    assert d["container"]["id"] == CID and d["container"]["name"] == "web-nat"
    ev = [e for e in d["evidence"] if e["side"] == "network"]
    assert ev and ev[0]["join"] == JOIN_NAT and ev[0]["source.ip"] == HOSTADDR
    assert ev[0]["container.address"].startswith(META["container_address"] + ":")
    assert "via nat_flow" in ev[0]["summary"]


def test_a_flow_found_by_a_dump_matches_records_from_before_the_dump():
    """Flows already tracked when the extension started come from a table dump, whose time is
    the dump's, not the flow's start: a long-lived flow's earlier records still match it."""
    nat = NatFlows()
    row = {"time": "5000", "event": "new", "source": "dump", "protocol": "tcp",
           "container_address": "10.89.0.9", "container_port": "41000",
           "remote_address": "198.51.100.201", "remote_port": "443", "nat_address": HOSTADDR,
           "nat_port": "41000", "nat_remote_address": "198.51.100.201",
           "nat_remote_port": "443", "start_time": "5000.0", "end_time": "",
           "container_id": "c-long", "conntrack_id": "77"}
    nat.observe(row, HOST)
    assert nat.match(HOST, HOSTADDR, 41000, "tcp", 3000.0).container_id == "c-long"
    nat.observe({**row, "source": "event", "conntrack_id": "78", "nat_port": "41001",
                 "container_port": "41001"}, HOST)
    assert nat.match(HOST, HOSTADDR, 41001, "tcp", 3000.0) is None  # an event's start is exact
