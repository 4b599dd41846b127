"""Network feature windows as counts (issue 13, windows part): model.window_agg.NetWindowAgg gives
the features build_windows gives from the same records, keeps a bounded evidence sample that
selects the same evidence, and the windows' batch entry (`_window_add_nets`) decides as the
row-by-row `_window_add` does."""
from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from model.features import FEATURE_INDEX, build_windows
from model.records import ContainerInfo, NetRecord, ProcessRecord
from model.window_agg import (DISTINCT_CAP, NET_FEATURES, SAMPLE_K, SELECTIONS,
                              NetWindowAgg, add_groups, columns_of, features_of,
                              keeps_no_sample, new_windows)
from scheduler.detect import rules
from scheduler.detect.windowing import WindowingMixin

W = 60.0
DOMAINS = ["db", "api.example.com", "xk3j9q2mz8.evil.net", "10.0.0.5:8080", "[::1]:443",
           "ipinfo.io", "API.Example.com.", "", "a.b", "q7w8e9r0t1y2u3.tunnel.org"]
ADDRS = ["10.0.0.9", "172.17.0.4", "8.8.8.8", "1.1.1.1", "192.168.1.1", "fe80::1", "2001:db8::1",
         "", "127.0.0.1", "93.184.216.34"]
STATES = ["SF", "REJ", "S0", "RSTO", "OTH", "SH", "", "S1"]
RCODES = ["NOERROR", "NXDOMAIN", "nxdomain", "", "SERVFAIL"]


KINDS = ("conn", "conn", "dns", "http", "ssl", "geo")
#: an http/ssl log's rows: none an evidence sample keeps
WEB_KINDS = ("http", "http", "ssl")


def random_nets(rng: random.Random, n: int, cids=("c1", "c2", "c3"), t0=1000.0,
                span=4 * W, kinds=KINDS) -> list[NetRecord]:
    out = []
    for _ in range(n):
        kind = rng.choice(kinds)
        out.append(NetRecord(
            ts=round(t0 + rng.random() * span, 3), kind=kind, container_id=rng.choice(cids),
            image=rng.choice(["", "web:1"]), orig_h="172.17.0.3", resp_h=rng.choice(ADDRS),
            resp_p=rng.choice([0, 53, 80, 443, 4444, 8080]), proto=rng.choice(["tcp", "udp"]),
            uid=f"C{rng.random()}", domain=rng.choice(DOMAINS),
            rcode=rng.choice(RCODES) if kind == "dns" else "",
            conn_state=rng.choice(STATES) if kind == "conn" else "",
            bytes_out=rng.randrange(0, 5000), bytes_in=rng.randrange(0, 90000),
            geo_service=rng.choice(["", "", "", "ipinfo"]) if kinds is KINDS else "",
            host=rng.choice(["", "h1"])))
    out.sort(key=lambda r: r.ts)
    return out


def reference_features(recs: list[NetRecord]) -> list[float]:
    """The network features of one window, written out plainly (the pre-accumulator formulas)."""
    from model.features import FAILED_CONN_STATES, domain_of, label_entropy, leaves_rfc1918

    conns = [r for r in recs if r.kind == "conn"]
    dns = [r for r in recs if r.kind == "dns"]
    answered = [r for r in dns if r.rcode]
    ent = 0.0
    for r in dns:
        ent += label_entropy(r.domain)
    public = sum(leaves_rfc1918(r.resp_h) for r in conns)
    doms = {domain_of(r.domain) for r in recs if r.kind in ("dns", "http", "ssl", "geo")} - {""}
    return [
        float(len(conns)), float(sum(r.conn_state in FAILED_CONN_STATES for r in conns)),
        float(min(len({r.resp_h for r in conns} - {""}), DISTINCT_CAP)),
        float(min(len({r.resp_p for r in conns} - {0}), DISTINCT_CAP)),
        float(min(len(doms), DISTINCT_CAP)), float(len(dns)), ent / len(dns) if dns else 0.0,
        sum(r.rcode.upper() == "NXDOMAIN" for r in answered) / len(answered) if answered else 0.0,
        float(sum(r.kind == "http" for r in recs)), float(sum(bool(r.geo_service) for r in recs)),
        float(sum(r.bytes_out for r in conns)), float(sum(r.bytes_in for r in conns)),
        public / len(conns) if conns else 0.0,
    ]


def by_window(recs: list[NetRecord], origins: dict[str, float]) -> dict[tuple[str, int], list]:
    out: dict[tuple[str, int], list] = {}
    for r in recs:
        out.setdefault((r.container_id, math.floor((r.ts - origins[r.container_id]) / W)),
                       []).append(r)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_accumulator_features_equal_build_windows_exactly(seed):
    rng = random.Random(seed)
    recs = random_nets(rng, 400 + 300 * seed)
    origins = {"c1": 1000.0, "c2": 990.0, "c3": 1010.0}
    infos = [ContainerInfo(container_id=c, image="web:1", created=o) for c, o in origins.items()]
    fw = build_windows((), recs, (), infos, window_s=W, end=1000.0 + 4 * W)
    groups = by_window(recs, origins)
    cols = columns_of(recs)
    checked = 0
    for i, (cid, ws) in enumerate(zip(fw.container_id, fw.window_start)):
        k = int(round((ws - origins[cid]) / W))
        part = groups.get((cid, k), [])
        want = reference_features(part)
        built = [float(fw.X[i, FEATURE_INDEX[f]]) for f in NET_FEATURES]
        one = NetWindowAgg.of_records(part)
        many = NetWindowAgg()
        idx = np.array([j for j, r in enumerate(recs) if r.container_id == cid
                        and math.floor((r.ts - origins[cid]) / W) == k], dtype=np.int64)
        for chunk in np.array_split(idx, rng.randint(1, 5)):    # random batch boundaries
            many.add_columns(cols, chunk)
        assert built == want, (cid, k)          # exact: no tolerance, entropy means included
        assert one.features() == want and many.features() == want, (cid, k)
        checked += bool(part)
    assert checked >= 10



@pytest.mark.parametrize("seed", range(4))
def test_add_groups_equals_record_by_record_for_many_windows_at_once(seed):
    """One add_groups call over interleaved groups (a window may come back in a later group,
    some windows already hold rows, rows given as lists or as an empty group) gives every window the counts, distinct sets, entropy sum,
    span, image/host and evidence sample of adding its records one by one in the same order."""
    from model.window_agg import add_groups

    rng = random.Random(100 + seed)
    recs = random_nets(rng, 600)
    cols = columns_of(recs)
    keys = ["a", "b", "c", "d"]
    one = {k: NetWindowAgg() for k in keys}
    many = {k: NetWindowAgg() for k in keys}
    pre = [rng.randrange(len(recs)) for _ in range(5)]      # rows a window held before
    for j in pre:
        one["a"].add(recs[j])
        many["a"].add_columns(cols, np.array([j]))
    groups = []
    for _ in range(12):
        k = rng.choice(keys)
        rows = np.array(sorted(rng.sample(range(len(recs)), rng.randint(1, 60))), dtype=np.int64)
        groups.append((k, rows))
    for k, rows in groups:
        for j in rows.tolist():
            one[k].add(recs[j])
    # rows as arrays, some as lists, and an empty group among them (added nothing)
    call = [(many[k], rows.tolist() if i % 5 == 0 else rows) for i, (k, rows) in enumerate(groups)]
    call.insert(3, (many["b"], np.zeros(0, dtype=np.int64)))
    add_groups(cols, call)
    for k in keys:
        a, b = one[k], many[k]
        assert b.features() == a.features(), k             # exact, the entropy sum included
        assert (b.n, b.t_min, b.t_max, b.image, b.host) == (a.n, a.t_min, a.t_max, a.image, a.host)
        assert (b.addrs, b.ports, b.domains) == (a.addrs, a.ports, a.domains)
        assert [r.uid for r in b.sample_rows()] == [r.uid for r in a.sample_rows()], k
    assert any(many[k].n for k in keys) and sum(m.n for m in many.values()) > 100

def test_distinct_sets_saturate_at_the_cap_in_both_builders():
    recs = [NetRecord(ts=1000.0 + i * 1e-3, kind="conn", container_id="c", image="i",
                      orig_h="172.17.0.2", resp_h=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                      resp_p=1 + i, proto="tcp") for i in range(DISTINCT_CAP + 500)]
    agg = NetWindowAgg()
    agg.add_columns(columns_of(recs))
    f = dict(zip(NET_FEATURES, agg.features()))
    assert f["distinct_remote_ports"] == f["distinct_remote_addrs"] == DISTINCT_CAP
    assert f["outbound_conns"] == DISTINCT_CAP + 500
    assert len(agg.ports) == len(agg.addrs) == DISTINCT_CAP
    fw = build_windows((), recs, (), [ContainerInfo("c", "i", created=1000.0)], window_s=W,
                       end=1000.0 + W)
    assert fw.column("distinct_remote_ports")[0] == DISTINCT_CAP


DEVIATION_SETS = [["failed_conns"], ["distinct_remote_ports"], ["distinct_remote_addrs"],
                  ["geo_service_contacts"], ["dns_queries"], ["nxdomain_share"],
                  ["outbound_conns", "bytes_out"], ["http_requests"],
                  ["failed_conns", "distinct_remote_ports"], ["distinct_domains"]]


def test_a_window_of_100k_rows_keeps_a_bounded_sample_with_the_same_evidence():
    rng = random.Random(7)
    recs = random_nets(rng, 100_000, cids=("c",), span=W * 0.99)
    # ties in time too: the order among equal times is arrival order, as a stable sort keeps it
    for r in recs[::50]:
        r.ts = round(r.ts, 0)
    recs.sort(key=lambda r: r.ts)
    cols = columns_of(recs)
    batched = NetWindowAgg()
    for chunk in np.array_split(np.arange(len(recs)), 37):
        batched.add_columns(cols, chunk)
    single = NetWindowAgg.of_records(recs)
    for agg in (batched, single):
        assert len(agg.sample.records) <= SAMPLE_K * len(SELECTIONS)
        assert agg.features() == NetWindowAgg.of_records(recs, sample=False).features()
    for feats in DEVIATION_SETS:
        devs = [{"feature": f, "value": 1.0} for f in feats]
        want = rules.window_samples([], recs, devs)
        assert want or feats == ["http_requests"], feats     # no network evidence for http
        assert rules.window_samples([], batched.sample_rows(), devs) == want, feats
        assert rules.window_samples([], batched, devs) == want, feats    # the window's own form
        assert rules.window_samples([], single.sample_rows(), devs) == want, feats


def test_the_sample_holds_for_rows_that_arrive_out_of_time_order():
    rng = random.Random(11)
    recs = random_nets(rng, 5000, cids=("c",), span=W * 0.99)
    shuffled = recs[:]
    rng.shuffle(shuffled)
    agg = NetWindowAgg.of_records(shuffled)
    again = NetWindowAgg.from_json(json.loads(json.dumps(agg.to_json())))
    for feats in DEVIATION_SETS:
        devs = [{"feature": f} for f in feats]
        want = rules.window_samples([], shuffled, devs)
        assert rules.window_samples([], agg.sample_rows(), devs) == want, feats
        assert rules.window_samples([], again.sample_rows(), devs) == want, feats
    assert again.features() == agg.features()


def test_json_state_round_trips_and_keeps_counting():
    rng = random.Random(3)
    recs = random_nets(rng, 3000, cids=("c",), span=W * 0.99)
    agg = NetWindowAgg.of_records(recs[:1500])
    back = NetWindowAgg.from_json(json.loads(json.dumps(agg.to_json())))
    back.add_columns(columns_of(recs[1500:]))
    assert back.features() == reference_features(recs)
    devs = [{"feature": "distinct_remote_ports"}]
    assert rules.window_samples([], back.sample_rows(), devs) == \
        rules.window_samples([], recs, devs)


def test_a_batch_fed_sample_saves_the_same_state_as_a_record_fed_one():
    """The batch engine's samples keep their rows as value tuples until read; the saved state
    (a daemon's checkpoint) is the record path's, before and after its rows are read, and
    restores to the same evidence."""
    rng = random.Random(5)
    recs = random_nets(rng, 4000, cids=("c",), span=W * 0.99)
    recs.sort(key=lambda r: r.ts)
    batched = NetWindowAgg()
    cols = columns_of(recs)
    for chunk in np.array_split(np.arange(len(recs)), 9):
        batched.add_columns(cols, chunk)
    single = NetWindowAgg.of_records(recs)
    assert any(type(r) is tuple for r in batched.sample.records.values())
    state = json.loads(json.dumps(single.to_json()))
    assert json.loads(json.dumps(batched.to_json())) == state
    rows = batched.sample_rows()                       # read: the rows become NetRecords
    assert rows == single.sample_rows()
    assert json.loads(json.dumps(batched.to_json())) == state
    back = NetWindowAgg.from_json(state)
    for feats in DEVIATION_SETS:
        devs = [{"feature": f} for f in feats]
        assert rules.window_samples([], back.sample_rows(), devs) == \
            rules.window_samples([], recs, devs), feats


# --------------------------------------------------------------------------- the batch entry

class _Engine(WindowingMixin):
    """The parts of the engine the windows rely on, no more."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(detection=SimpleNamespace(anomaly=True))
        self.baselines = None
        self.host = "h"
        self.environment = "default"
        self.stats = SimpleNamespace(late_records=0, windows_scored=0)
        created = {"c1": 995.0, "c2": None}
        self.inventory = SimpleNamespace(get=lambda host, cid: SimpleNamespace(
            begin=created.get(cid), image="web:1", name=cid) if cid in created else None)
        self._init_windows(W)
        self.collect_windows = True


def _state(e: _Engine) -> dict:
    if e._pending:                 # what every reader of the accumulators does first
        e._count_pending()

    def win(cw):
        return (cw["origin"], cw["k"], cw["n"].features(), cw["n"].n,
                [(r.ts, r.uid) for r in cw["n"].sample_rows()])
    new = [(c, (origin, k, rows.X[j].tolist(), int(rows.n[j]), []))     # made as arrays
           for cids, ks, origins, rows in e._closed_new
           for j, (c, k, origin) in enumerate(zip(cids, ks, origins))]
    return {"open": {c: win(cw) for c, cw in e._cw.items()},
            "closed": sorted([(c, win(cw)) for c, cw in e._closed] + new),
            "late": e.stats.late_records, "last_closed": dict(e._last_closed),
            "origins": dict(e._origins), "pos": dict(e._win_pos),
            # the time-heap entries that close an open window (`_advance` skips the others)
            "heap": sorted(x for x in e._heap if x[1] in e._cw and e._cw[x[1]]["k"] == x[2])}


def _scenario(e: _Engine) -> None:
    e._stopped["c3"] = 1000.0 + 2.5 * W        # stopped: no window starting after this
    e._last_closed["c2"] = 0                   # window 0 of c2 already scored: late
    e._skip.add(("c4", 1))                     # a window held at a stop: skipped


@pytest.mark.parametrize("kinds", [KINDS, WEB_KINDS], ids=["mixed", "web"])
@pytest.mark.parametrize("chunks", [7, 1])
@pytest.mark.parametrize("windows_only", [False, True])
def test_window_add_nets_decides_as_row_by_row(windows_only, chunks, kinds):
    """Whole calls of many windows per container (chunks=1: most windows are opened and closed
    within the call) and calls of about one; then rows for windows closed already: late in
    both."""
    rng = random.Random(5)
    recs = random_nets(rng, 3000, cids=("c1", "c2", "c3", "c4", ""), span=6 * W, kinds=kinds)
    for r in recs[::97]:                       # a few late rows among the time-ordered ones
        r.ts -= 2 * W
    cols = columns_of(recs)
    again = columns_of(random_nets(random.Random(6), 300, cids=("c1", "c2", "c3", "c4"),
                                   t0=1000.0 + W, span=3 * W, kinds=kinds))
    a, b = _Engine(), _Engine()
    for e in (a, b):
        _scenario(e)
        e.windows_only = windows_only
        e._rebuild = {("c1", 1), ("c2", 2), ("c4", 3)}
    for chunk in [*np.array_split(np.arange(len(recs)), chunks), None]:
        part = cols.take(chunk) if chunk is not None else again
        for i in range(len(part)):             # the reference: one record at a time
            if part.container_id[i]:
                a._window_add("n", float(part.ts[i]), part.record(i))
        b._window_add_nets(part)
    sa, sb = _state(a), _state(b)
    assert sa == sb
    assert sa["closed"] and (windows_only or sa["late"] > 300)
    built = []
    for e in (a, b):                   # the feature rows the flush builds of them: the same
        e.close_windows()
        e._score_closed()
        fw = e.collected[-1]
        built.append((fw.X.tolist(), fw.container_id, fw.window_start.tolist(), fw.image))
    assert built[0] == built[1] and len(built[0][0]) == len(sa["closed"]) + len(sa["open"])


def test_score_closed_builds_windows_from_the_accumulators():
    rng = random.Random(9)
    recs = random_nets(rng, 2000, cids=("c1",), t0=1000.0, span=3 * W)
    e = _Engine()
    e._window_add("p", 1001.0, ProcessRecord(ts=1001.0, container_id="c1", image="web:1", pid=5,
                                             cmdline="sh -c id"))
    e._window_add_nets(columns_of(recs))
    e.close_windows()
    e._score_closed()
    fw = e.collected[0]
    origin = e._origins["c1"]
    groups = by_window(recs, {"c1": origin})
    for i, ws in enumerate(fw.window_start):
        k = int(round((ws - origin) / W))
        got = [float(fw.X[i, FEATURE_INDEX[f]]) for f in NET_FEATURES]
        assert got == reference_features(groups.get(("c1", k), []))
    assert fw.column("processes_started").sum() == 1


def test_a_key_seen_late_first_is_moved_to_its_earliest_row():
    from test_anomaly_evidence import conn

    recs = [conn(1000.0 + i, 80) for i in range(100)] + \
        [conn(1050.0 + i * 0.5, 9999) for i in range(100)]
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    agg = NetWindowAgg()
    for chunk in np.array_split(np.arange(len(shuffled)), 9):
        agg.add_columns(columns_of(shuffled), chunk)
    devs = [{"feature": "distinct_remote_ports"}]
    got = rules.window_samples([], agg.sample_rows(), devs)
    assert [e["time"] for e in got] == [1000.0, 1050.0]
    assert got == rules.window_samples([], recs, devs)


def test_the_close_lag_queue_holds_chunks_and_feeds_windows_as_record_by_record():
    """The daemon's queue (close lag): a batch's rows wait as one chunk per container and
    reach the windows in the order the per-record queue gave, between the container's process
    and lifecycle records (stops, unknown containers held for their origin, late rows)."""
    from model.records import LifecycleRecord
    from scheduler.pipeline import Pipeline

    rng = random.Random(21)
    recs = random_nets(rng, 4000, cids=("c1", "c2", "c3", ""), span=8 * W)
    for r in recs:                          # arrival a little out of time order (lag 10 s)
        r.ts = round(r.ts - rng.random() * 8.0, 3)
    life = [LifecycleRecord(ts=1000.0 + 3.2 * W, container_id="c2", image="web:1", action="die"),
            LifecycleRecord(ts=1000.0 + 5.1 * W, container_id="c2", image="web:1",
                            action="start")]
    procs = [ProcessRecord(ts=1000.0 + i * 7.3, container_id=rng.choice(["c1", "c3"]),
                           image="web:1", pid=i, cmdline=rng.choice(["sh", "id", "nc x"]))
             for i in range(60)]

    def run(batched: bool) -> Pipeline:
        p = Pipeline()
        p.collect_windows = True
        p.close_lag_s = 10.0
        arrivals = sorted([(r.ts, 0, r) for r in procs] + [(r.ts, 1, r) for r in life],
                          key=lambda x: x[0])
        chunks = np.array_split(np.arange(len(recs)), 40)
        cols = columns_of(recs)
        j = 0
        for chunk in chunks:
            part = cols.take(chunk)
            t = float(np.max(part.ts))
            while j < len(arrivals) and arrivals[j][0] <= t:
                ts, kind, rec = arrivals[j]
                p._window_add("p" if kind == 0 else "l", ts, rec)
                j += 1
            if batched:
                p._window_add_nets(part)
            else:
                for i in range(len(part)):
                    if part.container_id[i]:
                        p._window_add("n", float(part.ts[i]), part.record(i))
            p._advance(t)
        p.close_windows()
        p._score_closed()
        return p

    a, b = run(False), run(True)
    assert b._wqueue == [] and b._wqueue_rows == 0
    fa, fb = (FeatureWindows_concat(p.collected) for p in (a, b))
    assert fa[0] == fb[0] and np.array_equal(fa[1], fb[1])
    assert a.stats.late_records == b.stats.late_records
    assert len(fa[0]) > 10


def FeatureWindows_concat(parts):
    from model.features import FeatureWindows

    fw = FeatureWindows.concat(parts)
    return list(zip(fw.container_id, fw.window_start.tolist())), fw.X


def test_the_sample_keeps_as_many_rows_as_the_evidence_takes():
    from model.window_agg import FAILED_CONN_STATES

    assert SAMPLE_K == rules.SAMPLES_PER_SIDE
    assert rules._FAILED_STATES == FAILED_CONN_STATES


def test_a_restart_saves_open_windows_as_counts_and_the_queue_as_rows():
    """dump_state(full=True) -> JSON -> load_state: open windows come back as accumulators
    (not record lists) and queued chunks as rows; the windows built after the restart equal
    those of a run without one."""
    from scheduler.pipeline import Pipeline

    rng = random.Random(33)
    recs = random_nets(rng, 3000, cids=("c1", "c2"), span=5 * W)
    cols = columns_of(recs)
    chunks = np.array_split(np.arange(len(recs)), 12)

    def fresh() -> Pipeline:
        p = Pipeline()
        p.collect_windows = True
        p.close_lag_s = 10.0
        return p

    def feed(p: Pipeline, parts) -> None:
        for chunk in parts:
            part = cols.take(chunk)
            p._window_add_nets(part)
            p._advance(float(np.max(part.ts)))

    def windows(p: Pipeline):
        p.close_windows()
        p._score_closed()
        return FeatureWindows_concat(p.collected)

    whole = fresh()
    feed(whole, chunks)
    a = fresh()
    feed(a, chunks[:5])
    st = json.loads(json.dumps(a.dump_state(full=True)))
    assert st["window_queue"] and all(k == "n" for _, k, _ in st["window_queue"])
    assert all(isinstance(w["n"], dict) for w in st["windows"].values())
    b = fresh()
    b.load_state(st)
    a._score_closed()             # the daemon scores what closed before it saves
    b.collected = list(a.collected)
    feed(b, chunks[5:])
    wa, wb = windows(whole), windows(b)
    assert wa[0] == wb[0] and np.array_equal(wa[1], wb[1])


# --------------------------------------------------------------------------- windows as arrays

def _fresh_reference(cols, rs):
    """What `new_windows` stands for: an accumulator per list of rows, filled by add_groups."""
    aggs = [NetWindowAgg() for _ in rs]
    add_groups(cols, list(zip(aggs, rs)))
    return aggs


def test_new_windows_equal_new_accumulators():
    """Web rows (none an evidence sample keeps) in groups of every size, one window past the
    distinct cap with each name spelled two ways (two codes, one domain), images and hosts often
    empty."""
    rng = random.Random(11)
    recs = random_nets(rng, 12000, cids=("c1", "c2"), span=30 * W, kinds=WEB_KINDS)
    for i, r in enumerate(recs[:9000]):
        r.domain = f"d{i // 2}.example" if i % 2 else f"D{i // 2}.EXAMPLE:80"
        r.image = "" if i % 7 else "web:1"
    cols = columns_of(recs)
    cuts = sorted(set(rng.sample(range(9001, 12000), 120)))
    rs = [np.arange(0, 9000)] + [np.arange(a, b) for a, b in zip([9000] + cuts, cuts + [12000])]
    rs = [r[rng.random() < 0.5:] if len(r) > 1 else r for r in rs]        # gaps too
    got = new_windows(cols, np.concatenate(rs), [len(r) for r in rs])
    want = _fresh_reference(cols, rs)
    assert got.X.tolist() == features_of(want).tolist()
    assert got.n.tolist() == [a.n for a in want]
    assert got.t_min.tolist() == [a.t_min for a in want]
    assert got.t_max.tolist() == [a.t_max for a in want]
    assert got.image == [a.image for a in want] and got.host == [a.host for a in want]
    assert max(got.X[:, NET_FEATURES.index("distinct_domains")]) == DISTINCT_CAP
    assert all(a.sample is None for a in want)                 # nothing to keep: no evidence


def test_new_windows_refuse_rows_a_sample_keeps():
    rng = random.Random(12)
    cols = columns_of(random_nets(rng, 200, cids=("c1",), kinds=("http", "dns")))
    assert not keeps_no_sample(cols)
    with pytest.raises(ValueError):
        new_windows(cols, np.arange(200), [100, 100])
    web = columns_of(random_nets(rng, 50, cids=("c1",), kinds=WEB_KINDS))
    assert keeps_no_sample(web)
    for sizes in ([5, 0, 5], [5, 4]):          # a window without rows; sizes that do not add up
        with pytest.raises(ValueError):
            new_windows(web, np.arange(10), sizes)


def test_distinct_sets_count_values_not_codes():
    """A (codes, values) pair may list one value twice: the set holds it once, in both paths."""
    recs = random_nets(random.Random(13), 40, cids=("c1",), kinds=("conn",))
    for i, r in enumerate(recs):
        r.resp_h, r.resp_p = ("8.8.8.8", 80) if i % 2 else ("8.8.4.4", 443)
        if i % 4 < 2:           # half the rows http, their Host spelled two ways
            r.kind, r.domain = "http", "a.example" if i % 4 else "A.example:80"
    cols = columns_of(recs)
    twice = np.empty(3, dtype=object)
    twice[:] = ["8.8.8.8", "8.8.4.4", "8.8.8.8"]
    cols.codes["resp_h"] = (np.where(np.arange(40) % 4 == 1, 0,
                                     np.where(np.arange(40) % 2, 2, 1)), twice)
    agg = NetWindowAgg()
    add_groups(cols, [(agg, np.arange(40))])
    assert agg.addrs == {"8.8.8.8", "8.8.4.4"} and len(agg.domains) == 1


def test_build_windows_takes_windows_as_arrays_as_it_takes_accumulators():
    """The same windows handed to build_windows as accumulators or as `new_windows` arrays: the
    same rows, also for a container that was destroyed (its span ends at its last row) and one
    the inventory does not know (its image and span from its windows), only_given or not."""
    from model.records import LifecycleRecord

    rng = random.Random(14)
    recs = random_nets(rng, 3000, cids=("c1", "c2", "c3"), span=12 * W, kinds=WEB_KINDS)
    for r in recs:
        r.image = "" if r.container_id == "c3" or rng.random() < 0.5 else "web:1"
    cols = columns_of(recs)
    origin = {"c1": 995.0, "c2": 1000.0, "c3": float(min(r.ts for r in recs
                                                         if r.container_id == "c3"))}
    keys: list[tuple[str, int]] = []
    rs = []
    for (c, k), rows in sorted(by_window_rows(recs, origin).items()):
        keys.append((c, k))
        rs.append(np.asarray(rows))
    aggs = _fresh_reference(cols, rs)
    made = new_windows(cols, np.concatenate(rs), [len(r) for r in rs])
    infos = [ContainerInfo(container_id="c1", image="web:1", created=995.0),
             ContainerInfo(container_id="c2", image="", created=1000.0)]
    life = [LifecycleRecord(ts=1000.0 + 7.5 * W, container_id="c2", image="", action="destroy")]
    for only in (False, True):
        kw = dict(window_s=W, start=1000.0, end=1000.0 + 13 * W, only_given=only)
        want = build_windows((), (), life, infos, net_windows=dict(zip(keys, aggs)), **kw)
        got = build_windows((), (), life, infos,
                            new_windows=[([c for c, _ in keys], [k for _, k in keys], made)],
                            **kw)
        assert got.X.tolist() == want.X.tolist() and len(want) > 20
        assert (got.container_id, got.image, got.window_start.tolist()) == \
            (want.container_id, want.image, want.window_start.tolist())


def by_window_rows(recs, origin):
    """{(container, window index): row numbers} of records."""
    out: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(recs):
        k = math.floor((r.ts - origin[r.container_id]) / W)
        out.setdefault((r.container_id, k), []).append(i)
    return out


class _Scoring(_Engine):
    """An engine whose baselines call every window anomalous, keeping the candidates."""

    def __init__(self) -> None:
        super().__init__()
        self.collect_windows = False
        self.window_sink = lambda fw: None
        self.candidates: list = []

        def score(fw):
            return [SimpleNamespace(
                is_anomaly=True, container_id=fw.container_id[i], image=fw.image[i],
                deviations=[{"feature": "distinct_domains", "value": 1}], fallback=False,
                image_key=fw.image[i], environment="default", explanation="x",
                window_start=float(fw.window_start[i]), window_end=float(fw.window_end[i]),
                score=2.0, threshold=1.0, model_scope="image") for i in range(len(fw))]

        self.baselines = SimpleNamespace(score=score)

    def container_ref(self, host, cid, image=""):
        from scheduler.detect.candidate import ContainerRef

        return ContainerRef(id=cid, name=cid, image=image)

    def _add(self, cand):
        self.candidates.append(cand)


def test_windows_made_as_arrays_alert_as_accumulators_do(monkeypatch):
    """Every window anomalous: the same alerts (window, time, evidence) whether the windows a
    call opens and closes are made as arrays or as accumulators."""
    import scheduler.detect.windowing as windowing

    recs = random_nets(random.Random(15), 3000, cids=("c1", "c2"), span=20 * W, kinds=WEB_KINDS)
    got = []
    for arrays in (True, False):
        if not arrays:
            monkeypatch.setattr(windowing, "keeps_no_sample", lambda nets, rows=None: False)
        e = _Scoring()
        e._window_add_nets(columns_of(recs))
        assert bool(e._pending[0][2]) == arrays           # the windows made as arrays
        e.close_windows()
        e._score_closed()
        got.append(sorted((c.ts, c.container.id, json.dumps(c.evidence, sort_keys=True, default=str))
                          for c in e.candidates))
    assert got[0] == got[1] and len(got[0]) > 30
