"""Stock-Zeek-log detection of location-discovery lookups, checked against the recorded scenarios'
ground truth (real Zeek 7.0.11 output, TSV and JSON) and against third-party logs where nothing
may be found."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from datafiles import data_root, scenarios_dir
from osquery_ext import classifier
from scheduler.detect.geo_stock import GeoStockDetector, detect_directory, strip_port
from scheduler.collect.zeeklog import ParseStats

FIXTURES = data_root()
SCEN = scenarios_dir()
FORMATS = {"tsv": "zeek", "json": "zeek/json"}

def _truth(scenario: str) -> dict:
    return json.loads((SCEN / scenario / "ground_truth.json").read_text())


def _detect(scenario: str, fmt: str) -> tuple[list, ParseStats]:
    stats = ParseStats()
    found = detect_directory(SCEN / scenario / FORMATS[fmt], GeoStockDetector(), stats)
    assert stats.records + stats.filtered > 0 and stats.io_errors == 0
    return found, stats


# -- geo_lookup: A1-A7 -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_geo_lookup_every_action_found(fmt: str) -> None:
    found, stats = _detect("geo_lookup", fmt)
    assert stats.bad_lines == 0
    uid_key = f"uid_{fmt}"
    by_uid: dict[str, list] = {}
    for d in found:
        by_uid.setdefault(d.uid, []).append(d)

    expected_uids: set[str] = set()
    for action in _truth("geo_lookup")["malicious_actions"]:
        aid, ip, name = action["action_id"], action["container_ip"], action["dest_name"]
        mine = [d for d in found if d.orig_h == ip and d.host == name]
        methods = {d.method for d in mine if d.ts >= action["start"] - 1 and d.ts <= action["end"] + 1}
        proto = action["protocol"]
        want = {"http": "http", "dns": "dns", "tls": "tls"}[proto]
        assert want in methods, (aid, methods)
        if action.get("dns_lookup_first") or proto == "dns":
            assert "dns" in methods, (aid, methods)
        if proto in ("http", "tls"):
            hit = [d for d in mine if d.method == want]
            assert any(d.resp_h == action["dest_ip"] and d.resp_p == action["dest_port"]
                       for d in hit), (aid, hit)
        if proto == "tls":
            assert any(d.host == action["tls_sni"] for d in mine if d.method == "tls"), aid
        # Every piece of Zeek evidence the ground truth lists (DNS, HTTP, TLS) was reported,
        # under the uid of this format's run.
        for ev in action["zeek_evidence"]:
            if not ({"dns", "http", "ssl"} & set(ev)) and ev.get("service") not in ("dns", "http", "ssl"):
                continue
            uid = ev[uid_key]
            expected_uids.add(uid)
            assert uid in by_uid, (aid, ev)
            assert all(d.orig_h == ip for d in by_uid[uid])

    # ... and nothing else: every detection belongs to a labelled action.
    assert set(by_uid) == expected_uids
    assert Counter(d.method for d in found) == {"dns": 7, "http": 4, "tls": 2}


def test_geo_lookup_a5_tls13_and_a3_dns_only() -> None:
    found, _ = _detect("geo_lookup", "tsv")
    a5 = [d for d in found if d.method == "tls" and d.orig_h == "172.17.0.17"]
    assert [(d.host, d.resp_h, d.service, d.category) for d in a5] == [
        ("api.ipify.org", "104.26.12.205", "ipify", "ip_echo")]
    a3 = [d for d in found if d.orig_h == "172.17.0.17" and d.host == "ipinfo.io"]
    assert [(d.method, d.resp_h, d.resp_p) for d in a3] == [("dns", "10.0.0.2", 53)]
    a7 = [d for d in found if d.orig_h == "172.17.0.18"]
    assert {d.method for d in a7} == {"dns", "http"}
    assert all(d.service == "icanhazip" for d in a7)


def test_tsv_and_json_agree() -> None:
    tsv, _ = _detect("geo_lookup", "tsv")
    js, _ = _detect("geo_lookup", "json")

    def key(d):
        return (round(d.ts, 6), d.orig_h, d.orig_p, d.resp_h, d.resp_p, d.method, d.service,
                d.host, d.uri, d.user_agent)

    assert sorted(map(key, tsv)) == sorted(map(key, js))


# -- churn: 40 short-lived containers --------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_churn_forty_lookups(fmt: str) -> None:
    found, stats = _detect("churn", fmt)
    assert stats.bad_lines == 0
    truth = _truth("churn")["malicious_actions"]
    assert len(truth) == 40
    want = {a["container_ip"] for a in truth}
    assert all(a["dest_name"] == "checkip.amazonaws.com" for a in truth)
    got = {d.orig_h for d in found}
    assert got == want
    assert len(found) == 40            # A + AAAA on one socket count once
    assert {(d.method, d.service, d.host) for d in found} == {
        ("dns", "aws-checkip", "checkip.amazonaws.com")}
    for a in truth:
        mine = [d for d in found if d.orig_h == a["container_ip"]]
        assert len(mine) == 1 and a["start"] - 1 <= mine[0].ts <= a["end"] + 1


# -- benign scenarios: nothing -----------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["benign", "benign_long", "drift"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_benign_scenarios_find_nothing(scenario: str, fmt: str) -> None:
    found, stats = _detect(scenario, fmt)
    assert found == []
    assert stats.bad_lines == 0
    assert not any(a.get("dest_name") for a in _truth(scenario)["malicious_actions"]
                   if "location" in a.get("label", ""))


def test_benign_long_json_is_gzip_and_read() -> None:
    files = sorted((SCEN / "benign_long" / "zeek" / "json").glob("*.log.gz"))
    assert files, "benign_long JSON logs are .gz"
    _, stats = _detect("benign_long", "json")
    assert stats.records + stats.filtered >= 6594 + 6506 + 9888  # dns + http + conn lines


# -- third-party corpora: nothing may be found, nothing may crash -------------------------------

def _third_party_dirs() -> list[Path]:
    dirs = sorted(p for p in (FIXTURES / "zeek-traces").iterdir() if p.is_dir())
    return dirs + [FIXTURES / "zat-data", FIXTURES / "zat-data" / "json"]


@pytest.mark.parametrize("directory", _third_party_dirs(), ids=lambda p: p.name)
def test_third_party_logs_find_nothing(directory: Path) -> None:
    stats = ParseStats()
    assert detect_directory(directory, GeoStockDetector(), stats) == []
    assert stats.files > 0 and stats.records + stats.filtered > 0


def test_negative_result_is_not_vacuous() -> None:
    """zat-data has a real geolocation lookup (j.maxmind.com/app/geoip.js from 192.168.33.10).
    Declare that host's network a container subnet and list the name: it is found, so the
    empty result above is the subnet rule at work, not a reader that sees nothing."""

    def match(name: str):
        if name.endswith("j.maxmind.com"):
            return SimpleNamespace(service="maxmind-js", category="ip_geolocation",
                                   domain="j.maxmind.com")
        return classifier.match_domain(name)

    det = GeoStockDetector(subnets=["192.168.33.0/24"], match_domain=match)
    found = detect_directory(FIXTURES / "zat-data", det, ParseStats())
    methods = Counter(d.method for d in found)
    assert methods["http"] >= 1 and methods["dns"] >= 1
    http = [d for d in found if d.method == "http"]
    assert any(d.uri == "/app/geoip.js" for d in http)


# -- unit rules --------------------------------------------------------------------------------

def _det(**kw) -> GeoStockDetector:
    return GeoStockDetector(subnets=["172.17.0.0/16"], **kw)


def test_strip_port() -> None:
    assert strip_port("ipinfo.io:80") == "ipinfo.io"
    assert strip_port("IPINFO.io.") == "ipinfo.io"
    assert strip_port("[2001:db8::1]:8080") == "2001:db8::1"
    assert strip_port("fd00:ec2::254") == "fd00:ec2::254"


def test_label_boundaries_and_sources() -> None:
    d = _det()
    base = {"ts": 1.0, "uid": "C1", "id.orig_p": 1, "id.resp_h": "1.2.3.4", "id.resp_p": 80}
    assert d.on_http({**base, "id.orig_h": "172.17.0.9", "host": "www.ipinfo.io:8080", "uri": "/"})
    assert not d.on_http({**base, "id.orig_h": "172.17.0.9", "host": "notipinfo.io"})
    assert not d.on_http({**base, "id.orig_h": "172.17.0.9", "host": "ipinfo.io.evil.test"})
    assert not d.on_http({**base, "id.orig_h": "192.168.1.9", "host": "ipinfo.io"})
    assert not d.on_http({**base, "id.orig_h": "172.17.0.9", "host": None})
    hit = d.on_dns({**base, "uid": "C2", "id.orig_h": "172.17.0.9", "query": "myip.opendns.com"})
    assert hit and hit[0].category == "dns_echo"


def test_metadata_location_request() -> None:
    d = _det()
    rec = {"ts": 1.0, "uid": "C9", "id.orig_h": "172.17.0.5", "id.orig_p": 4, "id.resp_h":
           "169.254.169.254", "id.resp_p": 80, "host": "169.254.169.254",
           "uri": "/latest/meta-data/placement/region", "user_agent": "curl/8"}
    [hit] = d.on_http(rec)
    assert (hit.method, hit.service, hit.category) == ("http", "aws-metadata", "cloud_metadata")
    assert not d.on_http({**rec, "uri": "/latest/meta-data/iam/info"})


def test_resolved_ip_ttl_window_and_sni_rules() -> None:
    d = _det(ttl_grace=60.0)
    # any client's answer is learned (here the host's, through its own resolver)
    d.on_dns({"ts": 100.0, "uid": "D1", "id.orig_h": "10.0.0.9", "query": "ipinfo.io",
              "answers": ["ipinfo.io.cdn.example", "34.117.59.81"], "TTLs": [30.0, 300.0]})
    ssl = {"uid": "S1", "id.orig_h": "172.17.0.4", "id.orig_p": 5, "id.resp_h": "34.117.59.81",
           "id.resp_p": 443, "server_name": None}
    [hit] = d.on_ssl({**ssl, "ts": 101.0})
    assert (hit.method, hit.host, hit.service) == ("resolved_ip", "ipinfo.io", "ipinfo")
    assert d.on_ssl({**ssl, "uid": "S2", "ts": 100.0 + 300 + 59})       # inside TTL + grace
    assert not d.on_ssl({**ssl, "uid": "S3", "ts": 100.0 + 300 + 61})   # expired
    assert not d.on_ssl({**ssl, "uid": "S4", "ts": 50.0})               # before the answer
    # the conn of an already-reported uid is not reported twice; another conn is
    assert not d.on_conn({**ssl, "ts": 101.0})
    assert d.on_conn({**ssl, "uid": "S5", "ts": 102.0})
    # a listed SNI is a tls detection, not resolved_ip
    [tls] = d.on_ssl({**ssl, "uid": "S6", "ts": 103.0, "server_name": "ipinfo.io"})
    assert tls.method == "tls"
    # DNS-echo answers are the asker's own address: never learned
    d.on_dns({"ts": 200.0, "uid": "D2", "id.orig_h": "172.17.0.4", "query": "myip.opendns.com",
              "answers": ["203.0.113.45"], "TTLs": [0.0]})
    assert d.resolved_for("203.0.113.45", 200.5) is None


def test_resolved_cache_is_bounded() -> None:
    d = _det(resolved_max=10)
    for i in range(50):
        d.on_dns({"ts": float(i), "uid": f"D{i}", "id.orig_h": "172.17.0.4", "query": "ipinfo.io",
                  "answers": [f"198.51.100.{i}"], "TTLs": [300.0]})
    assert sum(len(v) for v in d.resolved.values()) <= 10
    assert d.resolved_for("198.51.100.49", 49.5) is not None
    assert d.resolved_for("198.51.100.0", 0.5) is None


def test_dns_a_and_aaaa_count_once() -> None:
    d = _det()
    rec = {"ts": 1.0, "uid": "U1", "id.orig_h": "172.17.0.4", "query": "ifconfig.me"}
    assert len(d.on_dns(rec)) == 1
    assert d.on_dns({**rec, "ts": 1.001}) == []
    assert len(d.on_dns({**rec, "uid": "U2"})) == 1


@pytest.mark.parametrize("scenario", ["geo_lookup", "churn"])
def test_prefilter_drops_nothing_reportable(scenario: str, monkeypatch) -> None:
    """The early row filters are only a speed-up: without them the same lookups are found."""
    fast = detect_directory(SCEN / scenario / "zeek", GeoStockDetector(), ParseStats())
    slow_det = GeoStockDetector()
    monkeypatch.setattr(slow_det, "prefilter", lambda stream: {})
    stats = ParseStats()
    slow = detect_directory(SCEN / scenario / "zeek", slow_det, stats)
    assert stats.filtered == 0
    assert [d.to_dict() for d in fast] == [d.to_dict() for d in slow]


def test_ipv4_mapped_source_counts() -> None:
    d = _det()
    assert d.is_container("::ffff:172.17.0.9") and d.is_container("172.17.255.1")
    assert not d.is_container("::ffff:192.168.1.1") and not d.is_container("not-an-ip")


def test_cli_prints_json_lines(capsys) -> None:
    from scheduler.detect.geo_stock import main

    assert main([str(SCEN / "geo_lookup" / "zeek")]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert len(rows) == 13 and {r["method"] for r in rows} == {"dns", "http", "tls"}
    assert "bad_lines=0" in out.err


def test_conn_after_its_http_is_reported_when_asked() -> None:
    """The standalone reader reports one detection per lookup; the pipeline asks for the conn
    too (conn_after_name), because Zeek writes a connection after its http/ssl record."""
    answer = {"ts": 100.0, "uid": "D1", "id.orig_h": "172.17.0.4", "query": "ipinfo.io",
              "answers": ["34.117.59.81"], "TTLs": [300.0]}
    http = {"ts": 100.2, "uid": "H1", "id.orig_h": "172.17.0.4", "id.orig_p": 5,
            "id.resp_h": "34.117.59.81", "id.resp_p": 80, "host": "ipinfo.io", "uri": "/"}
    conn = {**http, "ts": 100.1, "proto": "tcp", "service": "http"}
    for asked, reported in ((False, False), (True, True)):
        d = _det(conn_after_name=asked)
        d.on_dns(answer)
        assert d.on_http(http)
        assert bool(d.on_conn(conn)) is reported


def test_pipeline_verdicts_do_not_depend_on_reading_order() -> None:
    """The replay takes conn (its start) before http; the daemon reads Zeek's conn.log line,
    written when the connection ends, after the http one. Same alert either way."""
    from scheduler.pipeline import Pipeline

    answer = {"ts": 100.0, "uid": "D1", "id.orig_h": "172.17.0.4", "id.orig_p": 40000,
              "id.resp_h": "10.0.0.2", "id.resp_p": 53, "proto": "udp", "query": "ipinfo.io",
              "qtype_name": "A", "rcode_name": "NOERROR", "answers": ["34.117.59.81"],
              "TTLs": [300.0]}
    http = {"ts": 100.2, "uid": "H1", "id.orig_h": "172.17.0.4", "id.orig_p": 5,
            "id.resp_h": "34.117.59.81", "id.resp_p": 80, "method": "GET", "host": "ipinfo.io",
            "uri": "/"}
    conn = {**http, "ts": 100.1, "proto": "tcp", "service": "http", "conn_state": "SF"}

    def evidence(order: list[tuple[str, dict]]) -> list[tuple[str, str]]:
        p = Pipeline()
        for stream, rec in order:
            p.feed_zeek(stream, dict(rec))
        [alert] = p.flush(force=True)
        return sorted((e["kind"], e.get("uid", "")) for e in alert.evidence)

    in_time_order = evidence([("dns", answer), ("conn", conn), ("http", http)])
    as_zeek_writes = evidence([("dns", answer), ("http", http), ("conn", conn)])
    assert ("conn", "H1") in in_time_order
    assert as_zeek_writes == in_time_order
