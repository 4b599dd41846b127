"""Kubernetes through the whole engine: the bundled k8s recordings replayed (the T1614 alert names
the requester, pod and command beside its host and network evidence; the pod-churn alert), a
killed replay resumes to the same alerts, bad audit lines are counted and skipped; and the daemon
reading the audit log and the webhook, exactly once across a restart."""
from __future__ import annotations

import gzip
import http.client
import json
import shutil
import time
from pathlib import Path

import pytest

from scheduler.collect.k8s_recording import JANE, RS_CONTROLLER, Cluster, Container
from scheduler.collect.osquery_results import batched_line, differential_line
from scheduler.config import Config
from scheduler.daemon import Daemon
from scheduler.replay import replay

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "scheduler" / "demo_data"


def k8s_config() -> Config:
    cfg = Config()
    cfg.kubernetes.baseline_s = 3600.0      # the recordings' history: the first hour learns
    return cfg


def by_rule(alerts, rule: str) -> list[dict]:
    return [a.to_dict() for a in alerts if a.rule == rule]


def test_k8s_geo_t1614_alert_names_requester_pod_command_and_network() -> None:
    res = replay(DATA / "k8s_geo", k8s_config())
    assert res.stats["k8s"]["malformed"] == 0 and res.stats["pipeline"]["k8s_records"] == 41
    t1614 = {a["container"]["name"]: a for a in by_rule(res.alerts, "location_discovery")}
    web2 = t1614["web-2"]
    k = web2["details"]["kubernetes"]
    assert (k["requester"], k["how"], k["namespace"], k["pod"]) == \
        ("jane@corp", "exec", "shop", "web-6d9f8c7b5-h4m8z")
    assert k["summary"] == ("user jane@corp exec'd into shop/web-6d9f8c7b5-h4m8z at "
                            "18:44:26.096; wget -qO- http://ipinfo.io/ ran 0.4 s later in that pod")
    assert set(web2["event"]["evidence_sides"]) == {"orchestration", "host", "network"}
    orch = [e for e in web2["evidence"] if e["side"] == "orchestration"]
    assert len(orch) == 1 and orch[0]["command"] == ["wget", "-qO-", "http://ipinfo.io/"]
    assert any(e.get("domain") == "ipinfo.io" for e in web2["evidence"] if e["side"] == "network")
    assert web2["title"].endswith("[kubectl exec by jane@corp]")
    assert web2["mitre"][0]["technique"] == "T1614"
    # every labelled action names the requester the ground truth says
    gt = json.loads((DATA / "k8s_geo" / "ground_truth.json").read_text())["kubernetes"]
    named = {a["container"]["id"]: a["details"]["kubernetes"]["user"]
             for a in by_rule(res.alerts, "location_discovery")}
    assert {x["container_id"]: x["requester"] for x in gt["attributions"]} == \
        {cid: named[cid] for cid in (x["container_id"] for x in gt["attributions"])}
    # k8s rules: jane (never exec'd in the baseline) for each pod; nobody else
    ex = by_rule(res.alerts, "k8s_exec_new_requester")
    assert {a["details"]["kubernetes"]["requester"] for a in ex} == {"jane@corp"}
    assert {a["container"]["name"] for a in ex} == {
        "(pod) shop/web-6d9f8c7b5-h4m8z", "(pod) shop/web-6d9f8c7b5-p2r6w", "(pod) shop/probe"}
    assert ex[0]["mitre"][0]["technique"] == "T1609" and ex[0]["host"]["name"] == "kubernetes"
    assert not [a for a in res.alerts if a.rule in ("k8s_pod_churn", "k8s_privileged_workload",
                                                   "k8s_unexpected_image", "k8s_ephemeral_container")]


def test_k8s_churn_pod_churn_alert_and_each_probe_named() -> None:
    res = replay(DATA / "k8s_churn", k8s_config())
    churn = by_rule(res.alerts, "k8s_pod_churn")
    assert len(churn) == 1
    c = churn[0]
    assert c["details"]["kubernetes"]["requester"] == "system:serviceaccount:ci:runner"
    assert c["container"]["name"] == "(namespace) scratch" and c["mitre"][0]["technique"] == "T1610"
    assert {e["source_ips"][0] for e in c["evidence"]} == {"203.0.113.77"}
    probes = [a for a in by_rule(res.alerts, "location_discovery")
              if a["container"]["image"] == "localhost/alpine-tools:3.19"]
    assert len(probes) == 40
    assert {a["details"]["kubernetes"]["service_account"] for a in probes} == {"ci/runner"}
    assert all(a["details"]["kubernetes"]["how"] == "created" for a in probes)
    # the host-side churn rule still fires too: two views of one burst
    assert len(by_rule(res.alerts, "container_churn")) == 1


def test_killed_replay_resumes_to_the_same_k8s_alerts(tmp_path: Path) -> None:
    straight = replay(DATA / "k8s_geo", k8s_config())

    def boom(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    db = tmp_path / "state.db"
    with pytest.raises(KeyboardInterrupt):
        replay(DATA / "k8s_geo", k8s_config(), state_db=db, chunk=700, after_chunk=boom)
    resumed = replay(DATA / "k8s_geo", k8s_config(), state_db=db, chunk=700)
    assert resumed.resumed_from == 700

    def key(alerts):
        return sorted((a.id, a.rule, json.dumps(a.details.get("kubernetes", {}), sort_keys=True))
                      for a in alerts)
    assert key(resumed.alerts) == key(straight.alerts)


def test_bad_audit_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    rec = tmp_path / "k8s_geo"
    shutil.copytree(DATA / "k8s_geo", rec)
    log = rec / "k8s" / "audit.log.gz"
    lines = gzip.decompress(log.read_bytes()).decode().splitlines()
    lines.insert(10, "{this is not json")
    lines.insert(20, json.dumps({"kind": "Event", "stage": "ResponseComplete"}))
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    res = replay(rec, k8s_config())
    assert res.stats["k8s"]["malformed"] == 2
    assert {a["details"]["kubernetes"]["user"] for a in by_rule(res.alerts, "location_discovery")
            if "kubernetes" in a["details"]} == {"jane@corp", "sre@corp"}


# ---- the daemon --------------------------------------------------------------------------------

CID = "e011c40324138c0a6362bfc49c9e393dce6c69729934d213562998d29223894f"
T = 1795805066.447


def _setup(tmp: Path) -> tuple[Config, Cluster, str]:
    cfg = Config()
    cfg.host, cfg.state_db = "h1", str(tmp / "state.db")
    cfg.sources.osquery_results_log = str(tmp / "osqueryd.results.log")
    cfg.sources.zeek_log_dir, cfg.sources.address_map = "", ""
    cfg.sinks.jsonl, cfg.model.dir = str(tmp / "alerts.jsonl"), str(tmp / "models")
    cfg.detection.merge_s = 1.0
    k = cfg.kubernetes
    k.audit_log, k.webhook, k.webhook_port, k.baseline_s = str(tmp / "audit.log"), True, 0, 0.0
    k.webhook_token_file = str(tmp / "token")
    (tmp / "token").write_text("tok\n")
    cl = Cluster("daemon")
    uid = cl.create_pod(RS_CONTROLLER, T - 28, "shop", "web-7f9", [Container("web", "w:1")])
    inv = {"id": CID, "name": "web-2", "image": "localhost/webapp:1.4", "state": "running",
           "created": "1795805038", "started": "1795805038", "ip_addresses": "172.17.0.3",
           "labels": json.dumps({"io.kubernetes.pod.uid": uid, "io.kubernetes.pod.name": "web-7f9",
                                 "io.kubernetes.pod.namespace": "shop",
                                 "io.kubernetes.container.name": "web"}),
           "pod_name": "web-7f9", "pod_namespace": "shop", "runtime": "containerd"}
    ev = {"time": "1795805066", "time_nano": "1795805066847000000", "pid": "5000", "ppid": "1",
          "name": "wget", "cmdline": "wget -qO- http://ipinfo.io/", "path": "/bin/wget",
          "container_id": CID, "container_name": "web-2", "image": "localhost/webapp:1.4"}
    (tmp / "osqueryd.results.log").write_text("\n".join([
        differential_line("container_inventory", "h1", 1795805040, "added", inv),
        batched_line("container_process_events", "h1", 1795805070, [ev])]) + "\n")
    (tmp / "audit.log").write_text("\n".join(cl.lines()) + "\n")     # the pod create: a file
    ex = Cluster("daemon-exec")
    ex.session(JANE, T + 0.0, T + 1.0, "shop", "web-7f9", ["wget", "-qO-", "http://ipinfo.io/"],
               container="web")
    body = json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                       "items": [json.loads(x) for x in ex.lines()]})
    return cfg, cl, body


def _post(port: int, body: str) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/k8s-audit", body=body, headers={"Authorization": "Bearer tok"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    assert r.status == 200
    return out


def test_daemon_reads_file_and_webhook_once_across_a_restart(tmp_path: Path) -> None:
    cfg, _, body = _setup(tmp_path)
    d = Daemon(cfg)
    try:
        assert _post(d.k8s.server.server_port, body)["accepted"] == 1     # the exec, via webhook
        d.collect_once()
        d.score_once(now=time.time() + 5 + cfg.daemon.lag_s)   # merge_s + lag_s on
    finally:
        d.close()
    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    t1614 = [a for a in alerts if a["rule"] == "location_discovery"]
    assert len(t1614) == 1
    assert t1614[0]["details"]["kubernetes"]["summary"] == (
        "user jane@corp exec'd into shop/web-7f9 at 18:44:26.447; wget -qO- http://ipinfo.io/ "
        "ran 0.4 s later in that pod")
    # restart: nothing re-read, a re-sent batch is a duplicate, no alert twice
    d2 = Daemon(cfg)
    try:
        assert _post(d2.k8s.server.server_port, body)["duplicates"] == 1
        d2.collect_once()
        d2.score_once(now=time.time() + 5 + cfg.daemon.lag_s)
        assert d2.pipeline.stats.k8s_records == 2          # pod create + exec, from the state
    finally:
        d2.close()
    again = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["id"] for a in again] == [a["id"] for a in alerts]


def test_replay_command_with_a_loose_audit_log(tmp_path: Path) -> None:
    from scheduler.cli import main

    rec = DATA / "k8s_geo"
    cfg = tmp_path / "s.toml"
    cfg.write_text("[kubernetes]\nbaseline_s = 3600.0\n")
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", "--config", str(cfg), "--zeek-dir", str(rec / "zeek"),
                 "--osquery-log", str(rec / "osquery" / "osqueryd.results.log.gz"),
                 "--k8s-audit-log", str(rec / "k8s" / "audit.log.gz"), "--host", "k8s-node-1",
                 "--out", str(out), "--no-progress"]) == 0
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    web2 = [a for a in alerts if a["rule"] == "location_discovery"
            and a["container"]["name"] == "web-2"]
    assert web2 and web2[0]["details"]["kubernetes"]["requester"] == "jane@corp"
    assert {a["rule"] for a in alerts} >= {"k8s_exec_new_requester", "location_discovery"}


def test_kubernetes_config_is_checked(tmp_path: Path) -> None:
    from scheduler.collect.k8s_source import K8sAuditSource
    from scheduler.collect.state import StateStore
    from scheduler.config import ConfigError, config_from_dict, validate

    cfg = config_from_dict({"kubernetes": {"webhook": True, "webhook_tls_key": "k.pem",
                                           "churn_n": 0}})
    problems = validate(cfg)
    assert len(problems) == 2 and any("kubernetes.webhook_tls_key" in x for x in problems)
    assert any("kubernetes.churn_n" in x for x in problems)
    with pytest.raises(ConfigError, match="kubernetes.audit_path"):
        config_from_dict({"kubernetes": {"audit_path": "/x"}})
    cfg = config_from_dict({"kubernetes": {"webhook": True, "webhook_port": 0,
                                           "webhook_token_file": str(tmp_path / "missing")}})
    store = StateStore(tmp_path / "s.db")
    with pytest.raises(ValueError, match="kubernetes.webhook_token_file: cannot read"):
        K8sAuditSource(cfg.kubernetes, store)
    store.close()
    assert not Config().kubernetes.enabled


def test_daemon_counts_bad_audit_input_in_its_metrics(tmp_path: Path) -> None:
    import urllib.request

    cfg, cl, body = _setup(tmp_path)
    cfg.metrics.enabled, cfg.metrics.port = True, 0
    with (tmp_path / "audit.log").open("a") as fh:
        fh.write("{broken line\n")
    d = Daemon(cfg)
    try:
        port = d.k8s.server.server_port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/k8s-audit", body=body, headers={"Authorization": "Bearer nope"})
        assert c.getresponse().status == 401
        c.close()
        d.collect_once()
        text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=5).read().decode()
        assert 'stowaway_bad_lines_total{source="k8s:audit"} 2.0' in text
        assert 'stowaway_records_total{source="k8s"} 1.0' in text      # the pod create
    finally:
        d.close()
