"""Attributed conn and dns rows through the batch engine give what they give row by row.

The misuse rules keep per-connection and per-query state (recent connections per container,
beacon times per destination, names answers gave addresses, recent names per parent domain).
The batch path sends only the rows a rule may report on through `feed_zeek`
(`MisuseDetector.rows_of_interest`) and adds the others to that state a run at a time
(`MisuseDetector.absorb`). Here one scenario has every rule that acts on conn/dns fire among
thousands of plain rows, conn rows out of start-time order (a conn.log is written when
connections end) and windows being built, with and without the daemon's close lag; alerts,
windows, counters and the misuse state must equal the row-by-row run's.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from scheduler.collect.osquery_results import OsqueryRow
from scheduler.collect.zeekbatch import batch_from_records
from scheduler.config import Config
from scheduler.detect import windowing
from scheduler.detect.misuse import destination_keys
from scheduler.pipeline import Pipeline
from test_engine_equality import _outcome as _engine_outcome

HOST = "h1"
T0 = 1_800_000_000.0
IMAGE = "localhost/app:1"
CONTAINERS = {"a" * 64: "172.17.0.5", "b" * 64: "172.17.0.6", "c" * 64: "172.17.0.7"}
BEACON = ("203.0.113.50", 8443)             # not in the image's training destinations
KNOWN = ("10.0.0.9", 80)                    # in them
SHELL = ("198.51.100.7", 4444)
GEO_ADDR = "34.117.59.81"


def _inventory(cid: str, addr: str) -> list[OsqueryRow]:
    ev = [OsqueryRow(table="container_events", host=HOST, unix_time=T0 + dt, action="added",
                     columns={"time": str(int(T0 + dt)), "time_nano": str(int((T0 + dt) * 1e9)),
                              "action": a, "container_id": cid, "image": IMAGE,
                              "name": cid[:4]})
          for a, dt in (("create", 0.0), ("start", 0.1))]
    inv = OsqueryRow(table="container_inventory", host=HOST, unix_time=T0 + 1, action="added",
                     columns={"id": cid, "name": cid[:4], "image": IMAGE, "state": "running",
                              "ip_addresses": addr, "created": str(int(T0))})
    return ev + [inv]


def _process(cid: str, t: float, pid: int, name: str, cmd: str, remote: str = "") -> OsqueryRow:
    cols = {"pid": str(pid), "ppid": "1", "name": name, "path": "/bin/busybox",
            "cmdline": cmd, "uid": "0", "start_time": str(int(t)), "container_id": cid,
            "image": IMAGE, "stdio_socket": "0,1,2" if remote else "",
            "stdio_remote": remote}
    return OsqueryRow(table="container_processes", host=HOST, unix_time=t, action="added",
                      columns=cols)


def _conn(t: float, orig: str, resp: tuple[str, int], uid: str, orig_p: int) -> dict[str, Any]:
    return {"ts": t, "uid": uid, "id.orig_h": orig, "id.orig_p": orig_p, "id.resp_h": resp[0],
            "id.resp_p": resp[1], "proto": "tcp", "service": "", "orig_bytes": 120,
            "resp_bytes": 900, "conn_state": "SF"}


def _dns(t: float, orig: str, query: str, uid: str, answers: str = "",
         qtype: str = "A") -> dict[str, Any]:
    return {"ts": t, "uid": uid, "id.orig_h": orig, "id.orig_p": 53000, "id.resp_h": "10.0.0.2",
            "id.resp_p": 53, "proto": "udp", "query": query, "qtype_name": qtype, "rcode": 0,
            "rcode_name": "NOERROR", "answers": answers.split(",") if answers else [],
            "TTLs": [300.0] * len(answers.split(",")) if answers else []}


def _http(t: float, orig: str, resp: str, host: str, uid: str) -> dict[str, Any]:
    return {"ts": t, "uid": uid, "id.orig_h": orig, "id.orig_p": 51000, "id.resp_h": resp,
            "id.resp_p": 80, "method": "GET", "host": host, "uri": "/", "user_agent": "Wget"}


def _scenario(seed: int) -> tuple[list[dict], list[dict], list[dict],
                                  list[tuple[float, OsqueryRow]]]:
    rng = random.Random(seed)
    conns, dnss, https, procs = [], [], [], []
    a, b, c = CONTAINERS
    for k in range(1500):                        # ~25 minutes of plain traffic, 3 containers
        t = T0 + 5.0 + k * 1.0
        for cid, addr in CONTAINERS.items():
            if rng.random() < 0.6:
                # written when the connection ends: start times up to 3 minutes back
                back = rng.choice([0.0, 0.0, 0.2, 2.0, 15.0, 70.0, 190.0])
                conns.append(_conn(t - back, addr, KNOWN if rng.random() < 0.8 else
                                   (f"10.0.1.{rng.randrange(1, 40)}", 443),
                                   f"C{k}{cid[0]}", 40000 + k % 20000))
            if rng.random() < 0.3:
                dnss.append(_dns(t + 0.3, addr, f"svc{rng.randrange(5)}.internal.example",
                                 f"D{k}{cid[0]}", f"10.0.1.{rng.randrange(1, 40)}"))
            if rng.random() < 0.3:           # http naming the addresses conns go to
                ip = f"10.0.1.{rng.randrange(1, 40)}"
                https.append(_http(t + 0.5, addr, ip, f"api{ip[-2:]}.example", f"H{k}{cid[0]}"))
    # a location lookup: the answer makes the later connection to that address interesting
    dnss.append(_dns(T0 + 500.2, CONTAINERS[a], "ipinfo.io", "Dgeo", GEO_ADDR))
    conns.append(_conn(T0 + 500.4, CONTAINERS[a], (GEO_ADDR, 443), "Ggeo", 47000))
    # the beacon's address named by http just before a beat (the beacon verdict reads it)
    https.append(_http(T0 + 339.0, CONTAINERS[a], BEACON[0], "beacon-cdn.example", "Hbeacon"))
    for j in range(30):                          # a beacon every 30 s from container a
        conns.append(_conn(T0 + 40.0 + 30.0 * j + rng.uniform(-0.2, 0.2), CONTAINERS[a],
                           BEACON, f"B{j}", 50000 + j))
    dnss.append(_dns(T0 + 39.0, CONTAINERS[a], "c2.updates.example", "Dname",
                     f"update.example,{BEACON[0]}"))
    for j in range(14):                          # DNS tunnelling from container b
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(40))
        dnss.append(_dns(T0 + 600.0 + 3.0 * j, CONTAINERS[b], f"{label}.t.evil-example.net",
                         f"T{j}", qtype="TXT"))
    # container c: a reverse shell, its connection logged later; a tunnel tool and its conns
    procs.append((T0 + 300.0, _process(c, T0 + 300.0, 77, "sh", "sh",
                                       f"tcp {SHELL[0]}:{SHELL[1]}")))
    conns.append(_conn(T0 + 299.5, CONTAINERS[c], SHELL, "Cshell", 45555))
    procs.append((T0 + 900.0, _process(c, T0 + 900.0, 88, "socat",
                                       "socat TCP-LISTEN:9000,fork TCP:10.0.0.5:80")))
    for j in range(8):
        conns.append(_conn(T0 + 901.0 + j, CONTAINERS[c], ("10.0.0.5", 80), f"R{j}", 46000 + j))
    conns.sort(key=lambda r: r["ts"] + (0 if r["uid"][0] != "C" else rng.uniform(0, 190)))
    dnss.sort(key=lambda r: r["ts"])
    https.sort(key=lambda r: r["ts"])
    return conns, dnss, https, procs


def _pipeline(lag: float) -> tuple[Pipeline, list[Any]]:
    p = Pipeline(Config(), host=HOST)
    for cid, addr in CONTAINERS.items():
        for row in _inventory(cid, addr):
            p.inventory.observe(row)
    # the beacon's first name is a known one: only once http names its address otherwise
    # (in the middle of a poll) can it be reported
    # (the location service's address is a known destination too: its connection is then
    # taken for the geo detector's sake only, which the DNS answer just before it decides)
    p.misuse.baseline = {IMAGE: destination_keys(KNOWN[0], KNOWN[1], "", False)
                         | destination_keys(GEO_ADDR, 443, "", False) | {"c2.updates.example"}}
    p.close_lag_s = lag
    windows: list[Any] = []
    p.window_sink = windows.append
    return p, windows


def _outcome(p: Pipeline, windows: list[Any], alerts: list[Any]) -> dict[str, Any]:
    """test_engine_equality's outcome (alerts without ids, counters, names, windows) and the
    rest of the misuse rules' state: beacon times, DNS groups, recent connections."""
    out = _engine_outcome(p, windows, alerts)
    m = p.misuse
    out["misuse"] = m.dump_state()
    out["conns"] = {c: [(r.ts, r.uid, r.resp_h, r.resp_p, r.conn_state) for r in q]
                    for c, q in m._conns.items()}
    return out


def _run(batched: bool, lag: float, seed: int, mixed: bool = False) -> dict[str, Any]:
    conns, dnss, https, procs = _scenario(seed)
    p, windows = _pipeline(lag)
    p.batch_min_rows = 1
    cb, db = batch_from_records("conn", "conn.log", conns), batch_from_records("dns", "dns.log", dnss)
    hb = batch_from_records("http", "http.log", https)
    source = {id(cb): conns, id(db): dnss, id(hb): https}
    # A daemon's polls: each poll's rows of each stream in file order, the process rows of
    # that stretch of time first, then conn, then dns, then http (`mixed`: the poll's rows of
    # all streams sorted by time, as the daemon sorts them, so runs mix streams).
    alerts: list[Any] = []
    ci = di = hi = pi = 0
    step = 50.0
    t = T0
    while ci < len(conns) or di < len(dnss) or pi < len(procs):
        t += step
        items: list[tuple[str, Any]] = []
        while pi < len(procs) and procs[pi][0] < t:
            items.append(("osq", procs[pi][1]))
            pi += 1
        c0, d0, h0 = ci, di, hi
        while ci < len(conns) and conns[ci]["ts"] < t:
            ci += 1
        while di < len(dnss) and dnss[di]["ts"] < t:
            di += 1
        while hi < len(https) and https[hi]["ts"] < t:
            hi += 1
        if t > T0 + 3000:            # the stragglers
            ci, di, hi = len(conns), len(dnss), len(https)
        rows = [(cb, j) for j in range(c0, ci)] + [(db, j) for j in range(d0, di)] \
            + [(hb, j) for j in range(h0, hi)]
        if mixed:
            rows.sort(key=lambda bj: source[id(bj[0])][bj[1]]["ts"])
        items += [("zrow", bj) for bj in rows]
        if batched:
            p.dispatch(items)
        else:
            for kind, payload in items:
                if kind == "zrow":
                    b, j = payload
                    p.feed_zeek(b.stream, dict(source[id(b)][j]))
                else:
                    p._dispatch(kind, payload)
        alerts += p.flush()
    alerts += p.flush(force=True)
    return _outcome(p, windows, alerts)


@pytest.mark.parametrize("mixed", [False, True], ids=["per-stream", "mixed"])
@pytest.mark.parametrize("lag", [0.0, 30.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_conn_and_dns_batches_equal_row_by_row(lag: float, seed: int, mixed: bool) -> None:
    want = _run(False, lag, seed, mixed)
    rules = {a["rule"] for a in want["alerts"]}
    # the case under test: every rule that keeps conn/dns state reported something
    assert {"beaconing", "dns_tunnel", "reverse_shell", "tunnel",
            "location_discovery"} <= rules, rules
    assert want["windows"] and want["conns"] and want["misuse"]["series"]
    got = _run(True, lag, seed, mixed)
    for key in want:
        assert got[key] == want[key], key


@pytest.mark.parametrize("small", [0, 1 << 30], ids=["numpy-stretches", "python-stretches"])
def test_window_decisions_equal_either_way(small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_window_add_nets` decides a stretch's windows in numpy or, for a few rows, in plain
    Python (`SMALL_STRETCH`): each way alone gives the row-by-row run's outcome."""
    monkeypatch.setattr(windowing, "SMALL_STRETCH", small)
    want = _run(False, 30.0, 1, True)
    got = _run(True, 30.0, 1, True)
    for key in want:
        assert got[key] == want[key], key


@pytest.mark.parametrize("small", [0, 1 << 30], ids=["numpy-stretches", "python-stretches"])
def test_a_stretch_that_goes_back_a_window(small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One stretch of a container's rows in windows 5, 5, 6, 5, 6, 7 of its life (a conn.log
    row for an older window that data time has not passed, so no late cut splits the
    stretch): the third window-5 row comes after window 6 opened and is late, as row by row;
    the others are counted in their own windows."""
    from model.records import NetRecord
    from model.window_agg import columns_of

    monkeypatch.setattr(windowing, "SMALL_STRETCH", small)
    cid = next(iter(CONTAINERS))
    probe, _ = _pipeline(0.0)
    origin, w = probe._origin(cid, T0 + 100.0), probe.window_s
    times = [origin + k * w + dt for k, dt in ((5, 1), (5, 2), (6, 1), (5, 3), (6, 2), (7, 1))]
    recs = [NetRecord(ts=t, kind="conn", container_id=cid, image=IMAGE, orig_h=CONTAINERS[cid],
                      resp_h="10.0.0.9", resp_p=80 + i, proto="tcp", uid=f"C{i}")
            for i, t in enumerate(times)]

    def run(batched: bool) -> tuple[int, list[Any]]:
        p, windows = _pipeline(0.0)
        if batched:
            p._window_add_nets(columns_of(recs))
            p._count_pending()
        else:
            for r in recs:
                p._window_add("n", r.ts, r)
        p.close_windows()
        p.flush(force=True)
        return p.stats.late_records, [(fw.container_id, list(fw.window_start), fw.X.tolist())
                                      for fw in windows]

    want = run(False)
    assert want[0] == 1 and want[1]
    assert run(True) == want


def test_dns_groups_a_group_at_a_time_equal_query_by_query() -> None:
    """`_dns_names_grouped` (a run's queries a group at a time, dropping once when the newest
    comes last) leaves the groups `_dns_names` leaves query by query: the same groups in the
    same order, the same items; groups whose times go back take the query-by-query path."""
    import numpy as np

    from scheduler.detect.misuse import MisuseDetector

    rng = np.random.default_rng(11)
    for trial in range(200):
        one, other = MisuseDetector(), MisuseDetector()
        window = one.cfg.dns_window_s
        t0 = 1000.0
        for _ in range(rng.integers(1, 5)):                 # several runs, state carried over
            n = int(rng.integers(1, 40))
            steps = rng.exponential(window / 6, n)
            if trial % 3 == 0:
                steps -= window / 8                           # times that go back
            ts = t0 + np.cumsum(steps)
            t0 = float(ts.max())
            cids = np.array([f"c{k}" for k in rng.integers(0, 3, n)], dtype=object)
            parents = np.array([f"p{k}.example" for k in rng.integers(0, 3, n)], dtype=object)
            names = np.array([f"x{k}.{p}" for k, p in zip(rng.integers(0, 9, n), parents)],
                             dtype=object)
            qt = np.array([rng.choice(["A", "TXT", ""]) for _ in range(n)], dtype=object)
            keys = np.array([int(c[1:]) * 3 + int(p[1]) for c, p in zip(cids, parents)])
            one._dns_names((c, p, float(t), nm, q, False)
                           for c, p, t, nm, q in zip(cids, parents, ts, names, qt))
            other._dns_names_grouped(keys, cids, parents, ts, names, qt)
        assert list(one._dns) == list(other._dns)
        assert {k: list(g.items) for k, g in one._dns.items()} == \
            {k: list(g.items) for k, g in other._dns.items()}


def test_push_plan_leaves_what_push_leaves() -> None:
    """`MisuseDetector._push_plan` (the batch's recent-connections queue) against `_push` item
    by item: queues that overflow RECENT_MAX within one batch, batches spanning more than
    RECENT_S, times that go back, empty and full queues before."""
    from collections import deque
    from types import SimpleNamespace

    from scheduler.detect.misuse import RECENT_MAX, RECENT_S, MisuseDetector

    rng = random.Random(5)
    for case in range(300):
        old_n = rng.choice([0, 1, 5, RECENT_MAX - 1, RECENT_MAX])
        t = 1000.0
        old = []
        for _ in range(old_n):
            t += rng.choice([0.0, 0.5, 3.0])
            old.append(SimpleNamespace(ts=t))
        new_n = rng.choice([1, 3, 40, RECENT_MAX + 50, 2 * RECENT_MAX + 7])
        times = []
        for _ in range(new_n):
            t += rng.choice([0.0, 0.1, 1.0, 30.0, RECENT_S + 1.0, -50.0, -RECENT_S - 5.0])
            times.append(t)
        new = [SimpleNamespace(ts=ts) for ts in times]
        want = {"k": deque(old)} if old else {}
        for item in new:
            MisuseDetector._push(want, "k", item, item.ts)
        got = {"k": deque(old)} if old else {}
        q, pops, start = MisuseDetector._push_plan(got, "k", times)
        for _ in range(pops):
            q.popleft()
        q.extend(new[start:])
        assert [id(x) for x in got["k"]] == [id(x) for x in want["k"]], case
