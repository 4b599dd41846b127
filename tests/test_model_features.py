"""Every feature of model.features on small hand-made records (exact expected values)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.features import (FEATURE_NAMES, FeatureWindows, build_windows, domain_of, executable_name,
                            label_entropy, leaves_rfc1918)
from model.records import ContainerInfo, LifecycleRecord, NetRecord, ProcessRecord

T0 = 1_000_000.0          # container creation; windows are anchored here (align="container")
W = 60.0
CID = "c" * 64
IMG = "registry.example.com/shop/web:2.1"


def proc(dt, cmd, name="", **kw):
    return ProcessRecord(ts=T0 + dt, container_id=kw.pop("cid", CID), image=IMG, pid=kw.pop("pid", 100),
                         name=name, path=kw.pop("path", "/bin/busybox"), cmdline=cmd, **kw)


def net(dt, kind, resp_h="10.0.0.9", **kw):
    return NetRecord(ts=T0 + dt, kind=kind, container_id=kw.pop("cid", CID), image=IMG, orig_h="172.17.0.3",
                     resp_h=resp_h, **kw)


def info(**kw):
    return ContainerInfo(container_id=kw.pop("cid", CID), image=IMG, name="web", host="h1", created=T0, **kw)


def one(fw: FeatureWindows, k: int = 0, cid: str = CID) -> dict[str, float]:
    rows = [i for i in range(len(fw)) if fw.container_id[i] == cid]
    return fw.row_dict(rows[k])


def test_feature_names_are_unique_and_stable():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_NAMES[:3] == ("processes_started", "distinct_executables", "shell_processes")


def test_process_features():
    recs = [
        proc(1, "sh -c while true; do wget ...; done", "sh"),
        proc(2, "wget -qO- http://api.example.com/", "exe"),      # busybox: comm 'exe', argv0 wget
        proc(3, "wget -qO- http://api.example.com/", "wget"),
        proc(4, "/bin/cat /etc/passwd", "cat"),
        proc(5, "nc -w 1 10.0.0.2 22", "nc"),
        proc(6, "bash -i", "bash"),
        proc(7, "curl ipinfo.io", "curl", location_discovery=True),
        proc(8, "/usr/bin/runc init", "runc"),                   # runtime bootstrap: not the workload
        proc(61, "dig example.com", "dig"),                      # next window
    ]
    fw = build_windows(recs, containers=[info()], window_s=W)
    f = one(fw)
    assert f["processes_started"] == 7
    assert f["distinct_executables"] == 6          # sh wget cat nc bash curl
    assert f["shell_processes"] == 2               # sh, bash
    assert f["network_tool_processes"] == 4        # wget x2, nc, curl
    assert f["location_discovery_processes"] == 1
    assert fw.executables[0] == ("bash", "cat", "curl", "nc", "sh", "wget")
    f2 = one(fw, 1)
    assert f2["processes_started"] == 1 and f2["network_tool_processes"] == 1


def test_executable_name_prefers_argv0():
    assert executable_name(ProcessRecord(0, CID, IMG, 1, name="exe", path="/bin/busybox",
                                         cmdline="/bin/nslookup x")) == "nslookup"
    assert executable_name(ProcessRecord(0, CID, IMG, 1, name="python3", path="/usr/bin/python3.11",
                                         cmdline="")) == "python3"


def test_connection_features():
    recs = [
        net(1, "conn", "10.0.0.9", resp_p=8080, conn_state="SF", bytes_out=100, bytes_in=1000),
        net(2, "conn", "10.0.0.9", resp_p=8080, conn_state="SF", bytes_out=100, bytes_in=1000),
        net(3, "conn", "10.0.0.10", resp_p=22, conn_state="REJ"),
        net(4, "conn", "93.184.215.14", resp_p=443, conn_state="S0", bytes_out=50),
        net(5, "conn", "fe80::1", resp_p=0, proto="icmp"),
    ]
    f = one(build_windows(nets=recs, containers=[info()], window_s=W))
    assert f["outbound_conns"] == 5
    assert f["failed_conns"] == 2                  # REJ, S0
    assert f["distinct_remote_addrs"] == 4
    assert f["distinct_remote_ports"] == 3         # 8080, 22, 443 (0 = no port, not counted)
    assert f["bytes_out"] == 250 and f["bytes_in"] == 2000
    assert f["public_conn_share"] == pytest.approx(1 / 5)   # only 93.184.215.14 leaves private space


def test_dns_http_domain_features():
    recs = [
        net(1, "dns", "10.0.0.2", domain="db.svc.internal", rcode="NOERROR"),
        net(1.1, "dns", "10.0.0.2", domain="db.svc.internal", rcode="NOERROR"),
        net(2, "dns", "10.0.0.2", domain="x7k2p9q4m1z8.cdn-sync.test", rcode="NXDOMAIN"),
        net(3, "dns", "10.0.0.2", domain="api.example.com", rcode=""),     # unanswered: not in the share
        net(4, "http", "93.184.215.14", domain="api.example.com", uri="/v1/items"),
        net(5, "http", "172.17.0.4", domain="172.17.0.4:8080", uri="/health"),   # IP literal: no domain
        net(6, "ssl", "34.117.59.81", domain="ipinfo.io", geo_service="ipinfo"),
    ]
    f = one(build_windows(nets=recs, containers=[info()], window_s=W))
    assert f["dns_queries"] == 4
    assert f["distinct_domains"] == 4              # db.svc.internal, x7k...test, api.example.com, ipinfo.io
    assert f["nxdomain_share"] == pytest.approx(1 / 3)
    expect = np.mean([label_entropy("db"), label_entropy("db"), label_entropy("x7k2p9q4m1z8"), label_entropy("api")])
    assert f["dns_label_entropy_mean"] == pytest.approx(expect)
    assert f["http_requests"] == 2
    assert f["geo_service_contacts"] == 1
    assert f["outbound_conns"] == 0                # dns/http/ssl records are not conns


def test_label_entropy_and_helpers():
    assert label_entropy("aaaa.example.com") == 0.0
    assert label_entropy("ab.x") == pytest.approx(1.0)
    assert label_entropy("abcdefgh") == pytest.approx(3.0)
    assert label_entropy("") == 0.0
    assert domain_of("Api.Example.com.") == "api.example.com"
    assert domain_of("172.17.0.3:8080") == "" and domain_of("[::1]:80") == ""
    assert leaves_rfc1918("8.8.8.8") and not leaves_rfc1918("172.31.255.1")
    assert leaves_rfc1918("172.32.0.1") and not leaves_rfc1918("192.168.1.1")
    assert not leaves_rfc1918("fe80::1") and leaves_rfc1918("2001:4860::8888")
    assert not leaves_rfc1918("not-an-ip")


def test_age_restarts_exec_and_churn():
    other = "d" * 64
    life = [
        LifecycleRecord(T0, CID, IMG, "create", host="h1"),
        LifecycleRecord(T0 + 0.1, CID, IMG, "start", host="h1"),
        LifecycleRecord(T0 + 70, CID, IMG, "restart", host="h1"),
        LifecycleRecord(T0 + 75, CID, IMG, "exec", host="h1"),
        LifecycleRecord(T0 + 76, CID, IMG, "exec", host="h1"),
        # a short-lived container of the same image on the same host: churn for both
        LifecycleRecord(T0 + 80, other, IMG, "create", host="h1"),
        LifecycleRecord(T0 + 81, other, IMG, "destroy", host="h1"),
        # same image on another host: not this host's churn
        LifecycleRecord(T0 + 82, "e" * 64, IMG, "create", host="h2"),
    ]
    fw = build_windows(lifecycle=life, containers=[info()], window_s=W, end=T0 + 180)
    w0, w1 = one(fw, 0), one(fw, 1)
    assert w0["container_age_s"] == pytest.approx(60.0)
    assert w1["container_age_s"] == pytest.approx(120.0)
    assert (w0["restarts"], w1["restarts"]) == (0, 1)
    assert (w0["exec_sessions"], w1["exec_sessions"]) == (0, 2)
    assert (w0["image_creates"], w0["image_destroys"]) == (1, 0)      # its own create
    assert (w1["image_creates"], w1["image_destroys"]) == (1, 1)      # the short-lived one
    short = one(fw, 0, cid=other)
    assert short["image_creates"] == 1 and short["image_destroys"] == 1
    # the running container has a row for every window up to `end`, quiet ones included
    assert len([c for c in fw.container_id if c == CID]) == 3


def test_windows_alignment_quiet_rows_and_order():
    recs = [proc(5, "wget x", "wget"), proc(200, "wget x", "wget")]
    fw = build_windows(recs, containers=[info()], window_s=W)
    assert list(fw.window_start - T0) == [0.0, 60.0, 120.0, 180.0]
    assert list(fw.column("processes_started")) == [1, 0, 0, 1]     # quiet windows are zero rows
    ep = build_windows(recs, containers=[info()], window_s=W, align="epoch")
    assert all(s % W == 0 for s in ep.window_start)
    # start/end restrict rows to windows overlapping the range
    cut = build_windows(recs, containers=[info()], window_s=W, start=T0 + 61, end=T0 + 180)
    assert list(cut.window_start - T0) == [60.0, 120.0]


def test_records_of_unknown_or_other_containers_are_ignored():
    recs = [net(1, "conn", cid=""), net(2, "conn")]
    fw = build_windows(nets=recs, containers=[info()], window_s=W)
    assert len(fw) == 1 and one(fw)["outbound_conns"] == 1


def test_empty_and_invalid():
    assert len(build_windows()) == 0
    with pytest.raises(ValueError):
        build_windows(window_s=0)
    fw = build_windows([proc(1, "sh", "sh")], containers=[info()], window_s=W)
    assert fw.X.shape == (1, len(FEATURE_NAMES)) and not np.isnan(fw.X).any()
    assert math.isfinite(float(fw.X.sum()))


def test_a_container_known_by_name_only_has_no_window_and_spoils_no_other():
    """No creation time and no record: nothing says when it lived. It used to raise
    OverflowError (an infinite window index) or add a row at an infinite start that threw the
    other rows' lookup off; now it has no row, and the others are what they are without it."""
    from model.window_agg import NetWindowAgg

    agg = NetWindowAgg()
    agg.add(NetRecord(ts=130.0, host="h", container_id="c1", image="img", orig_h="172.17.0.2",
                      resp_h="192.0.2.1", kind="http", domain="a.example"))
    live = ContainerInfo(container_id="c1", image="img", name="web", host="h", created=100.0)
    ghost = ContainerInfo(container_id="c0", image="img", name="ghost", host="h", created=None)
    kw = dict(window_s=60.0, start=100.0, end=400.0, net_windows={("c1", 0): agg})
    alone = build_windows([], (), [], [live], **kw)
    both = build_windows([], (), [], [ghost, live], **kw)
    assert both.container_id == alone.container_id == ["c1"] * 5
    assert np.array_equal(both.window_start, alone.window_start)
    assert np.array_equal(both.X, alone.X) and both.X[0, FEATURE_NAMES.index("http_requests")] == 1


def test_window_accumulators_give_what_their_records_give():
    """build_windows from the live engine's accumulators (`net_windows`, one per container and
    window) and from the records themselves: the same rows, identity columns and features. The
    containers are known by their records only, so each one's span (first and last time, image,
    host) comes from the accumulators taken together; images and hosts appear only from a later
    window on and change after, so the first non-empty one must win (it fails when the last
    one does)."""
    import random

    from model.window_agg import NetWindowAgg

    rng = random.Random(7)
    recs: list[NetRecord] = []
    for c in range(4):
        cid = f"{c:x}" * 64
        for i in range(rng.randint(20, 60)):
            t = T0 + c * 7 + i * rng.uniform(3, 25)
            w = int((t - T0 - c * 7) // W)
            kind = rng.choice(["conn", "dns", "http", "ssl"])
            recs.append(NetRecord(
                ts=t, kind=kind, container_id=cid, orig_h="172.17.0.3",
                image="" if w == 0 else f"img:{c}:{min(w, 2)}",
                host="" if w < 2 else f"h{w}",
                resp_h=rng.choice(["10.0.0.9", "192.0.2.7", "198.51.100.3"]),
                resp_p=rng.choice([53, 80, 443]), conn_state=rng.choice(["SF", "S0", "REJ"]),
                domain=rng.choice(["a.example", "xk2j9q.example", "b.test"]),
                rcode=rng.choice(["NOERROR", "NXDOMAIN", ""]) if kind == "dns" else "",
                bytes_out=rng.randint(0, 900), bytes_in=rng.randint(0, 900)))
    recs.sort(key=lambda r: r.ts)
    origin = {}
    for r in recs:
        origin.setdefault(r.container_id, r.ts)
    aggs: dict[tuple[str, int], NetWindowAgg] = {}
    for r in recs:
        k = int((r.ts - origin[r.container_id]) // W)
        aggs.setdefault((r.container_id, k), NetWindowAgg()).add(r)
    by_records = build_windows(nets=recs, window_s=W)
    by_aggs = build_windows(window_s=W, net_windows=aggs)
    assert len(by_records) >= len(aggs) > 20          # quiet windows are zero rows in both
    assert by_aggs.container_id == by_records.container_id
    assert by_aggs.image == by_records.image and by_aggs.host == by_records.host
    assert {i.split(":")[2] for i in by_aggs.image} == {"1"}          # the first non-empty
    assert np.array_equal(by_aggs.window_start, by_records.window_start)
    assert np.array_equal(by_aggs.X, by_records.X)


def test_only_given_keeps_the_rows_of_the_given_accumulators_in_built_order():
    """A flush builds the rows of the windows that closed (`only_given`): what selecting them
    from every built row gives (quiet windows and other windows of the same containers are
    built too, then left out), in the same order (window, then container)."""
    import random

    from model.window_agg import NetWindowAgg

    rng = random.Random(3)
    infos, aggs = [], {}
    for c in range(5):
        cid = f"{c}" * 64
        origin = T0 + 11.0 * c
        infos.append(ContainerInfo(container_id=cid, image=f"img{c}", name=f"n{c}", host="h1",
                                   created=origin))
        for k in rng.sample(range(8), 5):
            agg = NetWindowAgg()
            for j in range(rng.randint(0, 4)):
                agg.add(NetRecord(ts=origin + k * W + 1.0 + j, kind="http", container_id=cid,
                                  image=f"img{c}", orig_h="172.17.0.3", resp_h="10.0.0.9",
                                  domain=f"d{j}.example"))
            aggs[(cid, k)] = agg
    given = dict(rng.sample(sorted(aggs.items(), key=lambda kv: kv[0]), 12))
    kw = dict(window_s=W, start=T0, end=T0 + 10 * W, net_windows=given)
    full = build_windows([], (), [], infos, **kw)
    origin = {i.container_id: i.created for i in infos}
    want = [i for i in range(len(full))
            if (full.container_id[i], round((full.window_start[i] - origin[full.container_id[i]])
                                            / W)) in given]
    got = build_windows([], (), [], infos, only_given=True, **kw)
    assert len(full) > len(want) == len(got) == len(given)
    ref = full.select(want)
    assert got.container_id == ref.container_id and got.image == ref.image
    assert got.name == ref.name and got.host == ref.host
    assert np.array_equal(got.window_start, ref.window_start) and np.array_equal(got.X, ref.X)
    assert list(got.window_start) == sorted(got.window_start)
    # each row's identity and age are its own container's
    assert got.image == [f"img{c[0]}" for c in got.container_id]
    assert got.name == [f"n{c[0]}" for c in got.container_id]
    assert list(got.column("container_age_s")) == [
        e - origin[c] for c, e in zip(got.container_id, got.window_end)]
