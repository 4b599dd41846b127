"""Join on the real fixtures: Zeek evidence -> the right container (id and image) at the right time.

The expected container is computed independently of scheduler.detect.inventory: from containers.json, the
container whose address was the record's address and whose [created, removed] interval contains
the record's time. The recordings are built from the fixtures by scheduler.collect.recording (as the demo).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datafiles import scenarios_dir
from model.records import LifecycleRecord, NetRecord, ProcessRecord
from scheduler.detect.inventory import Inventory
from scheduler.detect.join import Joiner, join_batch, normalise_action
from scheduler.collect.osquery_results import OsqueryRow
from scheduler.collect.recording import Recording, convert_scenario
from scheduler.collect.zeeklog import iter_zeek_log

SCEN = scenarios_dir()
HOST = "lab-host-1"



def _zeek(src: Path, json_logs: bool = False) -> dict[str, list[dict[str, Any]]]:
    d = src / "zeek" / ("json" if json_logs else "")
    out = {}
    for stream in ("conn", "dns", "http", "ssl"):
        for cand in (d / f"{stream}.log", d / f"{stream}.log.gz"):
            if cand.exists():
                out[stream] = list(iter_zeek_log(cand))
                break
    return out


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory):
    """scenario -> (recording, host records, net records, joiner, containers.json containers)."""
    cache: dict[str, Any] = {}

    def get(name: str, json_logs: bool = False):
        key = f"{name}:{json_logs}"
        if key not in cache:
            out = tmp_path_factory.mktemp(name)
            convert_scenario(SCEN / name, out, host=HOST)
            rec = Recording(out)
            host_recs, net, joiner = join_batch(rec.iter_osquery_rows(), _zeek(SCEN / name, json_logs),
                                                host=HOST)
            containers = json.loads((SCEN / name / "containers.json").read_text())["containers"]
            cache[key] = (rec, host_recs, net, joiner, containers)
        return cache[key]
    return get


def expected_holder(containers: list[dict[str, Any]], ip: str, ts: float) -> dict[str, Any] | None:
    """Ground truth from containers.json alone: who had `ip` at `ts`."""
    hits = [c for c in containers if c.get("ip_address") == ip
            and c["created_ts"] <= ts <= (c.get("removed_ts") or float("inf"))]
    assert len(hits) <= 1, f"ambiguous truth for {ip} at {ts}"
    return hits[0] if hits else None


def index(net: list[NetRecord]) -> dict[tuple[str, float, int], NetRecord]:
    """(log, ts, orig_p) is stable between Zeek runs (fixtures README); uids are not."""
    return {(n.kind, round(n.ts, 6), n.orig_p): n for n in net}


def evidence(actions: list[dict[str, Any]]):
    for a in actions:
        for ev in a.get("zeek_evidence") or []:
            yield a, ev


def check_evidence(actions, net, joiner, containers) -> int:
    idx = index(net)
    n = 0
    for a, ev in evidence(actions):
        rec = idx.get((ev["log"], round(ev["ts"], 6), ev["orig_p"]))
        assert rec is not None, f"{a.get('action_id') or a.get('op_id')}: no NetRecord for {ev}"
        want_orig = expected_holder(containers, ev["orig_h"], ev["ts"])
        assert want_orig is not None
        assert (rec.container_id, rec.image) == (want_orig["id"], want_orig["image"]), (a, ev)
        # the labelled container, whichever side of the connection it is on
        want = expected_holder(containers, a["container_ip"], ev["ts"])
        got = joiner.inventory.lookup(HOST, a["container_ip"], ev["ts"])
        assert got is not None and got.container_id == want["id"] and got.image == want["image"]
        if "container_id" in a and ev["orig_h"] == a["container_ip"]:
            assert rec.container_id == a["container_id"] and rec.image == a["image"]
        n += 1
    return n


def test_geo_lookup_every_action_joins_incl_rm_container(joined) -> None:
    rec, _, net, joiner, containers = joined("geo_lookup")
    actions = rec.ground_truth()["malicious_actions"]
    assert check_evidence(actions, net, joiner, containers) == 13
    a7 = next(a for a in actions if a["action_id"] == "A7")
    a7_recs = [n for n in net if n.orig_h == a7["container_ip"]]
    assert len(a7_recs) >= 2  # DNS conn + HTTP conn (+ dns/http log records)
    assert {n.container_id for n in a7_recs} == {a7["container_id"]}
    lived = next(c for c in containers if c["id"] == a7["container_id"])["lifetime_s"]
    assert lived < 0.05
    # geolocation services are named on the joined dns/http/ssl records
    services = {n.geo_service for n in a7_recs if n.kind in ("dns", "http")}
    assert services and "" not in services


def test_geo_lookup_json_logs_join_the_same(joined) -> None:
    _, _, net_tsv, _, _ = joined("geo_lookup")
    _, _, net_json, _, _ = joined("geo_lookup", json_logs=True)
    key = lambda n: (n.kind, round(n.ts, 6), n.orig_p, n.container_id)  # noqa: E731
    assert sorted(map(key, net_tsv)) == sorted(map(key, net_json))


def test_benign_long_restart_and_redeploys_reusing_ips(joined) -> None:
    rec, _, net, joiner, containers = joined("benign_long")
    ops = rec.ground_truth()["benign_operations"]
    assert [o["kind"] for o in ops] == ["restart", "redeploy", "redeploy"]
    assert check_evidence(ops, net, joiner, containers) >= 12
    # the restart kept id and IP: one container on either side of the gap
    n1 = ops[0]
    before = joiner.inventory.lookup(HOST, n1["container_ip"], n1["start"] - 1)
    after = joiner.inventory.lookup(HOST, n1["container_ip"], n1["end"] + 1)
    assert before is after and before.container_id == n1["container_id"]
    # a redeploy: the old container before, the new one after, same IP
    for op in ops[1:]:
        old_c = next(c for c in containers if c["id"] == op["container_id_old"])
        new_c = next(c for c in containers if c["id"] == op["container_id_new"])
        assert joiner.inventory.lookup(HOST, op["container_ip"], old_c["removed_ts"] - 0.05).container_id == old_c["id"]
        assert joiner.inventory.lookup(HOST, op["container_ip"], new_c["created_ts"] + 0.05).container_id == new_c["id"]
        recs = [n for n in net if n.orig_h == op["container_ip"]]
        assert {n.container_id for n in recs} == {old_c["id"], new_c["id"]}
        assert all(n.container_id == (old_c["id"] if n.ts <= old_c["removed_ts"] else new_c["id"])
                   for n in recs)


def test_every_container_record_attributed_in_all_scenarios(joined) -> None:
    """No IPv4 record from the container bridge is left unknown, and each is the true holder."""
    for name in ("benign", "geo_lookup", "churn", "drift", "benign_long"):
        _, _, net, joiner, containers = joined(name)
        assert joiner.stats.net_unknown == 0, name
        wrong = [n for n in net if n.orig_h.startswith("172.17.")
                 and n.container_id != (expected_holder(containers, n.orig_h, n.ts) or {}).get("id")]
        assert not wrong, (name, wrong[:3])


def test_churn_each_short_lived_container(joined) -> None:
    rec, host_recs, net, joiner, containers = joined("churn")
    churn = [c for c in containers if c["role"] == "churn"]
    assert len(churn) == 40
    dns = [n for n in net if n.kind == "dns" and n.domain == "checkip.amazonaws.com"]
    assert len(dns) == 80
    assert {n.container_id for n in dns} == {c["id"] for c in churn}
    creates = [r for r in host_recs if isinstance(r, LifecycleRecord) and r.action == "create"
               and r.image == "localhost/alpine-tools:3.19"]
    destroys = [r for r in host_recs if isinstance(r, LifecycleRecord) and r.action == "destroy"
                and r.image == "localhost/alpine-tools:3.19"]
    assert len(creates) == 40 and len(destroys) == 40


def test_drift_evidence_joins_to_web2(joined) -> None:
    rec, host_recs, net, joiner, containers = joined("drift")
    actions = rec.ground_truth()["malicious_actions"]
    # D1: 40 DNS conns (+80 dns.log lines are not in zeek_evidence), D2: 50 conns, D3: none
    assert check_evidence(actions, net, joiner, containers) == 90
    web2 = next(c for c in containers if c["name"] == "web-2")
    nx = [n for n in net if n.kind == "dns" and n.rcode == "NXDOMAIN"]
    assert len(nx) == 80 and {n.container_id for n in nx} == {web2["id"]}


def test_host_records_from_osquery(joined) -> None:
    rec, host_recs, _, _, containers = joined("geo_lookup")
    procs = [r for r in host_recs if isinstance(r, ProcessRecord)]
    ld = [p for p in procs if p.location_discovery]
    gt = rec.ground_truth()["malicious_actions"]
    for a in gt:
        for pe in a["process_evidence"]:
            hit = [p for p in procs if p.pid == pe["pid"] and p.container_id == a["container_id"]]
            assert hit, (a["action_id"], pe)
            assert hit[0].image == a["image"]
            if a["action_id"] != "A5":   # A5's evidence includes printf / sh around openssl
                assert any(h.location_discovery for h in hit), (a["action_id"], hit)
    # background never looks up its location
    assert all(p.container_id in {a["container_id"] for a in gt} for p in ld)
    # snapshots repeat processes; each is reported once
    keys = [(p.container_id, p.pid, p.cmdline) for p in procs]
    assert len(keys) == len(set(keys))


def test_unknown_container_in_subnet_and_non_container_traffic() -> None:
    j = Joiner(subnets=["172.17.0.0/16"], default_host=HOST, hold_s=0)
    j.inventory.observe(OsqueryRow("container_inventory", HOST, 100, "snapshot",
                                   {"id": "c" * 64, "name": "web", "image": "img:1",
                                    "ip_addresses": "172.17.0.2", "created": "90", "state": "running"}))
    known = j.net_record("conn", {"ts": 101.0, "id.orig_h": "172.17.0.2", "id.orig_p": 1,
                                  "id.resp_h": "8.8.8.8", "id.resp_p": 53, "proto": "udp"})
    assert known.container_id == "c" * 64 and known.image == "img:1"
    unknown = j.net_record("dns", {"ts": 101.0, "id.orig_h": "172.17.0.99", "id.orig_p": 2,
                                   "id.resp_h": "10.0.0.2", "id.resp_p": 53, "query": "ipinfo.io",
                                   "rcode_name": "NOERROR"})
    assert unknown is not None and unknown.container_id == "" and unknown.domain == "ipinfo.io"
    assert unknown.geo_service  # the classifier knows ipinfo.io
    # before the container existed its address was nobody's
    early = j.net_record("conn", {"ts": 50.0, "id.orig_h": "172.17.0.2", "id.resp_h": "1.1.1.1"})
    assert early.container_id == ""
    # host traffic is not a container record; inbound to a container is the container's
    assert j.net_record("conn", {"ts": 101.0, "id.orig_h": "192.0.2.7", "id.resp_h": "8.8.8.8"}) is None
    inbound = j.net_record("conn", {"ts": 101.0, "id.orig_h": "192.0.2.7", "id.resp_h": "172.17.0.2",
                                    "id.resp_p": 8080})
    assert inbound.container_id == "c" * 64
    assert j.stats.net_unknown == 2 and j.stats.net_not_container == 1


def test_streaming_hold_attributes_a_container_reported_late() -> None:
    """Zeek logs a 23 ms container's connection before osquery reports the container."""
    t0 = 1795805186
    j = Joiner(subnets=["172.17.0.0/16"], default_host=HOST, hold_s=30)
    rec = {"ts": t0 + 0.5, "id.orig_h": "172.17.0.18", "id.orig_p": 5, "id.resp_h": "104.16.184.241",
           "id.resp_p": 80, "proto": "tcp", "uid": "Cx"}
    assert j.feed_zeek("conn", rec) == [] and j.held == 1
    for row in (OsqueryRow("container_events", HOST, t0 + 5, "added",
                           {"time": str(t0), "time_nano": f"{t0}400000000", "action": "create",
                            "container_id": "d" * 64, "name": "strange_black", "image": "tools:1"}),
                OsqueryRow("container_events", HOST, t0 + 5, "added",
                           {"time": str(t0), "time_nano": f"{t0}700000000", "action": "destroy",
                            "container_id": "d" * 64}),
                OsqueryRow("container_inventory", HOST, t0 + 10, "snapshot",
                           {"id": "d" * 64, "ip_addresses": "172.17.0.18", "state": "removed",
                            "created": str(t0), "image": "tools:1"})):
        j.from_osquery(row)
    out = j.release(now_ts=t0 + 10)
    assert [(n.uid, n.container_id, n.image) for n in out] == [("Cx", "d" * 64, "tools:1")]
    # a record nobody claims is released as unknown once the hold expires
    j.feed_zeek("conn", dict(rec, ts=t0 + 1000.0, uid="Cy"))
    assert j.release(now_ts=t0 + 1010) == []
    (late,) = j.release(now_ts=t0 + 1031)
    assert late.uid == "Cy" and late.container_id == ""


def test_normalise_action() -> None:
    assert [normalise_action(a) for a in ("died", "remove", "exec_died", "exec_start: sh", "start")] == \
        ["die", "destroy", "exec_die", "exec", "start"]


def test_address_map_file(tmp_path: Path, joined) -> None:
    _, _, _, joiner, containers = joined("geo_lookup")
    inv = Inventory()
    rows = [OsqueryRow("container_inventory", HOST, 10, "snapshot",
                       {"id": "a" * 64, "name": "web-1", "image": "webapp:1.4", "ip_addresses": "172.17.0.2",
                        "state": "running", "created": "5"}),
            OsqueryRow("container_inventory", HOST, 10, "snapshot",
                       {"id": "b" * 64, "name": "gone", "image": "x", "ip_addresses": "172.17.0.3",
                        "state": "exited", "created": "5"})]
    inv.observe_rows(rows)
    path = tmp_path / "container_addresses.tsv"
    assert inv.write_address_map(path) == 1
    assert path.read_text().splitlines() == [
        "#fields\tip\tcontainer_id\tcontainer_name\timage", f"172.17.0.2\t{'a' * 64}\tweb-1\twebapp:1.4"]
    assert not list(tmp_path.glob(".tmp-*"))
    # the Zeek package ships the same header
    shipped = Path(__file__).resolve().parents[1] / "zeek_scripts" / "data" / "container_addresses.tsv"
    if shipped.exists():
        assert shipped.read_text().splitlines()[0] == path.read_text().splitlines()[0]


def test_redeploy_within_the_same_second_uses_event_precision() -> None:
    """Inventory times are whole seconds; a record 10 ms before the old container's destroy must
    still go to the old one (the new container's inventory `created` floors to before it)."""
    t0 = 1795807614
    inv = Inventory()
    old, new = "o" * 64, "n" * 64
    rows = [
        OsqueryRow("container_inventory", HOST, t0 - 10, "snapshot",
                   {"id": old, "image": "webapp:1.4", "ip_addresses": "172.17.0.7", "created": str(t0 - 1200),
                    "state": "running"}),
        OsqueryRow("container_events", HOST, t0 + 5, "added",
                   {"time": str(t0), "time_nano": f"{t0}040000000", "action": "destroy", "container_id": old}),
        OsqueryRow("container_events", HOST, t0 + 5, "added",
                   {"time": str(t0), "time_nano": f"{t0}066000000", "action": "create", "container_id": new}),
        OsqueryRow("container_inventory", HOST, t0 + 10, "snapshot",
                   {"id": new, "image": "webapp:1.4", "ip_addresses": "172.17.0.7", "created": str(t0),
                    "state": "running"}),
    ]
    inv.observe_rows(rows)
    assert inv.lookup(HOST, "172.17.0.7", t0 + 0.030).container_id == old
    assert inv.lookup(HOST, "172.17.0.7", t0 + 0.070).container_id == new
    assert inv.lookup(HOST, "172.17.0.7", t0 - 600).container_id == old
    # without events, the whole-second inventory is all there is: the newer holder wins from t0
    inv2 = Inventory()
    inv2.observe_rows([rows[0], rows[3]])
    assert inv2.lookup(HOST, "172.17.0.7", t0 + 0.5).container_id == new
    assert inv2.lookup(HOST, "172.17.0.7", t0 - 5).container_id == old


def _inv_row(action: str, t: float, **cols: str) -> OsqueryRow:
    base = {"id": "e" * 64, "name": "api", "image": "api:2", "ip_addresses": "172.17.0.40",
            "created": "1795800000", "state": "running"}
    base.update(cols)
    return OsqueryRow("container_inventory", HOST, t, action, base)


def test_differential_inventory_changed_row_is_not_a_disappearance() -> None:
    for order in (("removed", "added"), ("added", "removed")):
        inv = Inventory()
        inv.observe(_inv_row("added", 1795800010))
        rows = {"removed": _inv_row("removed", 1795800020),
                "added": _inv_row("added", 1795800020, state="exited")}
        for action in order:
            inv.observe(rows[action])
        c = inv.get(HOST, "e" * 64)
        assert c.end is None and c.state == "exited", order
    # an unchanged row removed = the container is gone
    inv.observe(_inv_row("removed", 1795800030, state="exited"))
    assert inv.get(HOST, "e" * 64).end == 1795800030
    assert inv.lookup(HOST, "172.17.0.40", 1795800025).container_id == "e" * 64
    assert inv.lookup(HOST, "172.17.0.40", 1795800100) is None


def test_snapshot_disappearance_and_persistence(tmp_path: Path) -> None:
    from scheduler.collect.state import StateStore
    inv = Inventory()
    inv.observe_rows([_inv_row("snapshot", 1795800010),
                      _inv_row("snapshot", 1795800010, id="f" * 64, ip_addresses="172.17.0.41")])
    inv.observe_rows([_inv_row("snapshot", 1795800020, id="f" * 64, ip_addresses="172.17.0.41")])
    assert inv.get(HOST, "e" * 64).end == 1795800020       # missing from the full snapshot
    assert inv.get(HOST, "f" * 64).end is None
    assert [a for a, _ in inv.current_map()] == ["172.17.0.41"]
    store = StateStore(tmp_path / "s.db")
    with store.transaction() as conn:
        assert inv.save(store, conn) == 2
    again = Inventory.load(store)
    assert len(again) == 2
    assert again.lookup(HOST, "172.17.0.40", 1795800015).container_id == "e" * 64
    assert again.lookup(HOST, "172.17.0.41", 1795800500).container_id == "f" * 64
    assert again.get(HOST, "f" * 12).container_id == "f" * 64   # short ids resolve
    assert again.prune(1795800021) == 1 and store.prune_containers(1795800021) == 1
    assert len(Inventory.load(store)) == 1
    store.close()


@pytest.mark.parametrize("name", ["geo_lookup", "churn"])
def test_streaming_join_in_arrival_order_matches_batch(joined, name: str) -> None:
    """Fed as a live collector sees them (osquery rows at their unixTime, i.e. seconds after the
    fact; Zeek records at their ts), the streaming join attributes exactly like the batch join."""
    rec, _, batch_net, _, _ = joined(name)
    items: list[tuple[float, int, Any]] = []
    for row in rec.iter_osquery_rows():
        items.append((row.unix_time, 0, row))
    for stream, records in _zeek(SCEN / name).items():
        for r in records:
            items.append((float(r["ts"]), 1, (stream, r)))
    items.sort(key=lambda x: (x[0], x[1]))
    j = Joiner(default_host=HOST, hold_s=30)
    net: list[NetRecord] = []
    for _, kind, payload in items:
        if kind == 0:
            j.from_osquery(payload)
            net.extend(j.release(now_ts=payload.unix_time))
        else:
            net.extend(j.feed_zeek(*payload))
    net.extend(j.flush())
    key = lambda n: (n.kind, round(n.ts, 6), n.orig_p, n.container_id)  # noqa: E731
    assert sorted(map(key, net)) == sorted(map(key, batch_net))
    assert j.stats.net_unknown == 0
