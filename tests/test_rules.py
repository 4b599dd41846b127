"""Rules: one record in, a candidate (or nothing) out; churn on the recorded churn/benign_long."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.records import LifecycleRecord, NetRecord, ProcessRecord
from scheduler.detect import rules
from scheduler.alerting.alerts import (RULE_ANOMALY, RULE_CHURN, RULE_LOCATION, RULE_RISKY,
                              UNKNOWN_CONTAINER_NAME, ContainerRef)
from scheduler.config import Config
from scheduler.pipeline import Pipeline
from scheduler.collect.recording import Recording, demo_data_dir

WEB2 = ContainerRef(id="e011c40324138c0a", name="web-2", image="localhost/webapp:1.4",
                    runtime="podman", address="172.17.0.3")


def proc(cmd: str, **kw) -> ProcessRecord:
    name = cmd.split()[0]
    return ProcessRecord(ts=1795805066.45, container_id=WEB2.id, image=WEB2.image, pid=4242,
                         ppid=1, name=name, path=f"/bin/{name}", cmdline=cmd, host="h1", **kw)


def net(kind: str, domain: str = "", **kw) -> NetRecord:
    base = dict(ts=1795805066.5, kind=kind, container_id=WEB2.id, image=WEB2.image,
                orig_h="172.17.0.3", resp_h="10.0.0.2", resp_p=53, orig_p=40000, proto="udp",
                uid="Cabc", host="h1", domain=domain)
    base.update(kw)
    return NetRecord(**base)


# ---- T1614 host ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [
    "wget -qO- http://ipinfo.io/",
    "nslookup ipinfo.io",
    "wget -qO- https://ipinfo.io/",
    "sh -c nslookup checkip.amazonaws.com; sleep 1",
])
def test_host_location_discovery_fires_on_recorded_commands(cmd: str) -> None:
    c = rules.host_location_discovery(proc(cmd), WEB2)
    assert c is not None
    assert c.rule == RULE_LOCATION and c.severity == "high"
    ev = c.evidence[0]
    assert ev["side"] == "host" and ev["kind"] == "process" and ev["cmdline"] == cmd
    assert "web-2" in c.title


@pytest.mark.parametrize("cmd", [
    "wget -qO- http://172.17.0.3:8080/health",
    "wget -qO- http://api.example.com/v1/items?page=3",
    "nslookup db.svc.internal",
    "httpd -f -p 8080",
    "sleep 1.734",
])
def test_host_location_discovery_ignores_benign_background(cmd: str) -> None:
    assert rules.host_location_discovery(proc(cmd), WEB2) is None


def test_host_flag_from_extension_is_trusted_even_for_unknown_commands() -> None:
    r = proc("my-custom-tool --where", location_discovery=True, indicator="ext says so")
    c = rules.host_location_discovery(r, WEB2)
    assert c is not None and c.evidence[0]["indicator"] == "ext says so"


# ---- T1614 network -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,domain", [("dns", "ipinfo.io"), ("http", "ifconfig.me"),
                                          ("ssl", "api.ipify.org"), ("dns", "www.ipinfo.io"),
                                          ("dns", "checkip.amazonaws.com")])
def test_network_location_discovery(kind: str, domain: str) -> None:
    c = rules.network_location_discovery(net(kind, domain), WEB2)
    assert c is not None and c.rule == RULE_LOCATION
    ev = c.evidence[0]
    assert ev["side"] == "network" and ev["domain"] == domain and ev["service"]
    assert ev["source.ip"] == "172.17.0.3"


@pytest.mark.parametrize("domain", ["api.example.com", "notipinfo.io", "db.svc.internal",
                                    "a1b2c3.cdn-sync.test", ""])
def test_network_rule_ignores_other_names(domain: str) -> None:
    assert rules.network_location_discovery(net("dns", domain), WEB2) is None


def test_plain_conn_without_geo_tag_is_not_location_discovery() -> None:
    assert rules.network_location_discovery(net("conn", resp_h="34.117.59.81", resp_p=80), WEB2) is None
    tagged = net("conn", resp_h="34.117.59.81", resp_p=80, geo_service="ipinfo")
    assert rules.network_location_discovery(tagged, WEB2) is not None


def test_unknown_container_still_alerts() -> None:
    """A container-subnet address no known container held: alert as 'container unknown'."""
    p = Pipeline(Config(), host="h1")
    zeek = {"ts": 1795805186.5, "uid": "Cx", "id.orig_h": "172.17.0.99", "id.orig_p": 5000,
            "id.resp_h": "10.0.0.2", "id.resp_p": 53, "proto": "udp", "query": "icanhazip.com",
            "rcode_name": "NOERROR"}
    alerts = p.process([("dns", zeek)])
    assert len(alerts) == 1
    a = alerts[0]
    assert a.container.id == "" and a.container.name == UNKNOWN_CONTAINER_NAME
    assert a.container.address == "172.17.0.99"
    assert "unknown" in a.title


def test_host_traffic_outside_container_subnets_is_out_of_scope() -> None:
    p = Pipeline(Config(), host="h1")
    zeek = {"ts": 1.0, "uid": "Cy", "id.orig_h": "192.168.1.10", "id.orig_p": 5000,
            "id.resp_h": "10.0.0.2", "id.resp_p": 53, "proto": "udp", "query": "ipinfo.io"}
    assert p.process([("dns", zeek)]) == []


# ---- churn ---------------------------------------------------------------------------------------

def life(ts: float, action: str, i: int, image: str = "localhost/alpine-tools:3.19") -> LifecycleRecord:
    return LifecycleRecord(ts=ts, container_id=f"c{i:03d}", image=image, action=action,
                           name=f"n{i}", host="h1")


def test_churn_threshold_is_strictly_more_than_n() -> None:
    d = rules.ChurnDetector(n=10, t_s=60)
    ref = ContainerRef()
    hits = [d.observe(life(1000 + 5 * i, "create", i), ref) for i in range(10)]
    assert all(h is None for h in hits)               # 10 in 45 s: not more than 10
    c = d.observe(life(1050, "create", 10), ref)      # the 11th within 60 s
    assert c is not None and c.rule == RULE_CHURN
    assert c.container.image == "localhost/alpine-tools:3.19"
    assert c.evidence[0]["count"] == 11


def test_churn_window_slides() -> None:
    d = rules.ChurnDetector(n=3, t_s=10)
    ref = ContainerRef()
    for i in range(20):                                # one create every 4 s: 3 per 10 s at most
        assert d.observe(life(4 * i, "create", i), ref) is None


def test_churn_counts_per_image() -> None:
    d = rules.ChurnDetector(n=2, t_s=60)
    ref = ContainerRef()
    for i in range(2):
        assert d.observe(life(i, "create", i, "a:1"), ref) is None
        assert d.observe(life(i, "create", 100 + i, "b:1"), ref) is None


def test_churn_state_round_trip() -> None:
    d = rules.ChurnDetector(n=2, t_s=60)
    ref = ContainerRef()
    d.observe(life(1, "create", 1), ref)
    d.observe(life(2, "create", 2), ref)
    d2 = rules.ChurnDetector(n=2, t_s=60)
    d2.load_state(d.dump_state())
    assert d2.observe(life(3, "create", 3), ref) is not None


def _lifecycle_only(name: str) -> list:
    rec = Recording(demo_data_dir() / name)
    return [r for r in rec.iter_osquery_rows() if r.table in ("container_events",
                                                               "container_inventory")]


def test_churn_fires_on_recorded_churn_and_not_on_redeploys() -> None:
    """Defaults (10 per 60 s): the churn recording (40/min) alerts; benign_long's restart and two
    redeploys 15 s apart do not."""
    cfg = Config()
    churn = Pipeline(cfg, host="h").process(_lifecycle_only("churn"))
    hits = [a for a in churn if a.rule == RULE_CHURN]
    assert len(hits) == 1
    assert hits[0].container.image == "localhost/alpine-tools:3.19"
    benign = Pipeline(cfg, host="h").process(_lifecycle_only("benign_long"))
    assert [a for a in benign if a.rule == RULE_CHURN] == []


# ---- risky configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("row,flags", [
    ({"privileged": "1"}, ["privileged"]),
    ({"network_mode": "host"}, ["host_network"]),
    ({"pid_mode": "host"}, ["host_pid"]),
    ({"runtime_socket_mounted": "1", "host_root_mounted": "1"},
     ["runtime_socket_mounted", "host_root_mounted"]),
    ({"privileged": "0", "network_mode": "bridge", "pid_mode": "", "runtime_socket_mounted": "0",
      "host_root_mounted": "0"}, []),
])
def test_risky_flags(row: dict, flags: list) -> None:
    assert rules.risky_flags(row) == flags
    c = rules.risky_config(row, 10.0, "h1", WEB2)
    if flags:
        assert c is not None and c.rule == RULE_RISKY and c.severity == "low"
        assert c.evidence[0]["flags"] == flags
    else:
        assert c is None


def test_risky_config_from_inventory_row_once_per_container() -> None:
    from scheduler.collect.osquery_results import OsqueryRow

    cols = {"id": "abc123", "name": "priv", "image": "busybox:1", "privileged": "1",
            "network_mode": "host", "started": "1000", "ip_addresses": ""}
    rows = [OsqueryRow("container_inventory", "h1", 1000 + 60 * i, "snapshot", dict(cols))
            for i in range(5)]
    alerts = Pipeline(Config(), host="h1").process(rows)
    assert [a.rule for a in alerts] == [RULE_RISKY]
    assert alerts[0].container.name == "priv"


# ---- anomaly -------------------------------------------------------------------------------------

def test_anomaly_only_above_threshold_and_says_fallback() -> None:
    assert rules.anomaly(1.0, "h", WEB2, 0.5, 0.7, "x") is None
    assert rules.anomaly(1.0, "h", WEB2, 0.7, 0.7, "x") is None
    devs = [{"feature": "dns_queries", "value": 92.0, "baseline": 12.0}]
    c = rules.anomaly(1.0, "h", WEB2, 4.99, 0.78, devs, fallback="cold start: env model",
                      window=(0.0, 60.0), top_feature="dns_queries")
    assert c is not None and c.rule == RULE_ANOMALY
    assert c.score == pytest.approx(4.99) and c.threshold == pytest.approx(0.78)
    assert "dns_queries=92" in c.title
    assert c.evidence[0]["baseline_fallback"] == "cold start: env model"
    assert c.details["baseline_fallback"]


def test_container_geo_log_from_the_zeek_package() -> None:
    """container_geo.log lines (zeek_scripts/main.zeek Info) alert with the package's verdict."""
    p = Pipeline(Config(), host="h1")
    geo = {"ts": 1795805126.5, "uid": "Cgeo", "id.orig_h": "172.17.0.17", "id.orig_p": 41000,
           "id.resp_h": "104.26.12.205", "id.resp_p": 80, "method": "http", "service": "ipify",
           "category": "ip_echo", "host": "api.ipify.org", "uri": "/?format=json",
           "user_agent": "Wget", "container_id": "ab" * 32, "container_name": "tools-1",
           "image": "localhost/alpine-tools:3.19"}
    alerts = p.process([("container_geo", geo)])
    assert len(alerts) == 1
    a = alerts[0]
    assert a.container.id == "ab" * 32 and a.container.image == "localhost/alpine-tools:3.19"
    ev = a.evidence[0]
    assert ev["kind"] == "geo" and ev["method"] == "http" and ev["category"] == "ip_echo"
    assert ev["service"] == "ipify" and ev["domain"] == "api.ipify.org"
