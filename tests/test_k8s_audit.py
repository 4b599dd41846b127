"""Kubernetes audit source: Event -> record normalisation, the log-file source with its
checkpoint, the spool's dedupe by auditID, bad input counted and skipped."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from scheduler.collect import k8s_spool
from scheduler.collect.k8s_audit import (ATTACH, EPHEMERAL, EXEC, POD_CREATE, POD_DELETE,
                                         WORKLOAD_CREATE, AuditEventError, AuditLineParser,
                                         AuditStats, parse_event, recording_records)
from scheduler.collect.k8s_recording import (JANE, RS_CONTROLLER, SRE, Cluster, Container,
                                             exec_uri)
from scheduler.collect.k8s_source import K8sAuditSource
from scheduler.collect.state import StateStore
from scheduler.collect.k8s_config import KubernetesConfig

REPO = Path(__file__).resolve().parents[1]
T = 1795805000.0


def complete(cl: Cluster) -> list[dict]:
    return [e for e in cl.events if e["stage"] == "ResponseComplete"]


def test_pod_create_carries_requester_uid_images_and_risky_settings() -> None:
    cl = Cluster("t")
    uid = cl.create_pod(JANE, T, "shop", "debug", [
        Container("a", "registry.evil.example/tools:1", privileged=True,
                  capabilities=("SYS_ADMIN", "net_raw")),
        Container("b", "localhost/webapp:1.4")],
        host_network=True, host_pid=True, host_paths=["/", "/var/run/docker.sock"])
    rec = parse_event(complete(cl)[0], cluster="prod")
    assert rec is not None and rec.action == POD_CREATE and rec.verb == "create"
    assert rec.user == "jane@corp" and rec.groups == ["developers", "system:authenticated"]
    assert rec.source_ips == ["198.51.100.23"] and rec.user_agent.startswith("kubectl/")
    assert rec.pod_uid == uid and rec.target == "shop/debug" and rec.cluster == "prod"
    assert rec.images == ["registry.evil.example/tools:1", "localhost/webapp:1.4"]
    assert rec.privileged and rec.host_network and rec.host_pid and not rec.host_ipc
    assert rec.host_paths == ["/", "/var/run/docker.sock"]
    assert rec.capabilities == ["SYS_ADMIN", "NET_RAW"]
    assert rec.risky_settings() == ["privileged", "hostNetwork", "hostPID", "hostPath:/",
                                    "hostPath:/var/run/docker.sock"]
    assert rec.ts == pytest.approx(T) and rec.end_ts == pytest.approx(T + 0.012)
    assert rec.code == 201 and rec.ok


def test_exec_attach_ephemeral_delete_and_workloads() -> None:
    cl = Cluster("t")
    cl.session(JANE, T, T + 3.5, "shop", "web-1", ["sh", "-c", "wget -qO- http://ipinfo.io/"],
               container="web")
    cl.session(JANE, T + 10, T + 12, "shop", "probe", [], container="probe", sub="attach",
               tty=True)
    cl.debug(SRE, T + 20, "shop", "web-1", [Container("web", "localhost/webapp:1.4")],
             "busybox:1.36")
    cl.delete_pod(JANE, T + 30, "shop", "probe")
    cl.workload(SRE, T + 40, "CronJob", "ops", "backup", [Container("b", "alpine:3.19")],
                host_paths=["/etc"])
    cl.create_pod(RS_CONTROLLER, T + 50, "shop", "web-x", [Container("web", "localhost/webapp:1.4")],
                  owner=("ReplicaSet", "web-6d9f8c7b5"))
    recs = [parse_event(e) for e in complete(cl)]
    ex, at, dbg, dl, cj, pod = recs
    assert ex.action == EXEC and ex.command == ["sh", "-c", "wget -qO- http://ipinfo.io/"]
    assert ex.container == "web" and ex.end_ts - ex.ts == pytest.approx(3.5) and ex.code == 101
    assert ex.ok and ex.subresource == "exec" and ex.target == "shop/web-1"
    assert at.action == ATTACH and at.command == [] and at.container == "probe"
    assert dbg.action == EPHEMERAL and dbg.images == ["busybox:1.36"] and dbg.verb == "patch"
    assert dl.action == POD_DELETE and dl.images == [] and dl.pod_uid == cl.pod_uid("shop", "probe")
    assert cj.action == WORKLOAD_CREATE and cj.kind == "CronJob" and cj.images == ["alpine:3.19"]
    assert cj.host_paths == ["/etc"]
    assert pod.owner == "ReplicaSet/web-6d9f8c7b5" and pod.service_account == \
        "kube-system/replicaset-controller"


def test_other_stages_and_unread_resources_give_no_record() -> None:
    cl = Cluster("t")
    cl.session(JANE, T, T + 1, "shop", "web-1", ["id"])
    stages = [e["stage"] for e in cl.events]
    assert stages == ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    assert [parse_event(e) is None for e in cl.events] == [True, True, False]
    secret = dict(complete(cl)[0], objectRef={"resource": "secrets", "namespace": "shop",
                                              "name": "db"}, verb="get")
    assert parse_event(secret) is None


@pytest.mark.parametrize("mutate, field", [
    (lambda e: e.pop("auditID"), "auditID"),
    (lambda e: e.pop("stage"), "stage"),
    (lambda e: e.update(requestReceivedTimestamp="yesterday"), "requestReceivedTimestamp"),
    (lambda e: e.update(user="jane"), "user"),
    (lambda e: e.update(kind="Pod"), "kind"),
])
def test_schema_breaks_name_the_field(mutate, field) -> None:
    cl = Cluster("t")
    cl.create_pod(JANE, T, "shop", "p", [Container("c", "x:1")])
    ev = complete(cl)[0]
    mutate(ev)
    with pytest.raises(AuditEventError, match=field):
        parse_event(ev)


def test_line_parser_counts_and_skips_bad_lines(caplog) -> None:
    cl = Cluster("t")
    cl.create_pod(JANE, T, "shop", "p", [Container("c", "x:1")])
    lines = cl.lines()           # RequestReceived + ResponseComplete
    bad = ["{not json", json.dumps({"kind": "Event", "stage": "ResponseComplete"}), "[1, 2]"]
    st = AuditStats()
    p = AuditLineParser("audit.log", st)
    out = []
    for i, line in enumerate([lines[0], bad[0], bad[1], lines[1], bad[2], ""], 1):
        out += p.parse_line(line, i)
    assert [e["stage"] for e in out] == ["ResponseComplete"]
    assert st.malformed == 3 and st.other_stages == 1 and st.events == 2
    assert "audit.log:2:" in caplog.text and "audit.log:5:" in caplog.text


def _cfg(tmp: Path, **kw) -> object:
    c = KubernetesConfig()
    c.audit_log = str(tmp / "audit.log")
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_file_source_spools_once_resumes_after_restart_and_dedupes(tmp_path: Path) -> None:
    cl = Cluster("t")
    for i in range(6):
        cl.create_pod(JANE, T + i, "shop", f"p{i}", [Container("c", "x:1")])
    lines = cl.lines()
    log_path = tmp_path / "audit.log"
    log_path.write_text("\n".join(lines[:6]) + "\n{broken\n")
    db = tmp_path / "state.db"
    store = StateStore(db)
    src = K8sAuditSource(_cfg(tmp_path), store)
    assert src.spool_file() == 3 and src.stats.malformed == 1
    ids, recs = src.take()
    assert [r.name for r in recs] == ["p0", "p1", "p2"]
    with store.transaction() as conn:
        src.mark_consumed(conn, ids)
    store.close()
    # restart: the checkpoint says where the file was left; new lines and a repeated event
    with log_path.open("a") as fh:
        fh.write("\n".join(lines[6:]) + "\n" + lines[1] + "\n")
    store = StateStore(db)
    src = K8sAuditSource(_cfg(tmp_path), store)
    assert src.spool_file() == 4            # p3..p5 and the repeat of p0's event
    assert src.stats.duplicates == 1
    ids, recs = src.take()
    assert [r.name for r in recs] == ["p3", "p4", "p5"]
    assert k8s_spool.counts(store.conn)["events"] == 6
    store.close()


def test_recording_records_of_the_bundled_k8s_scenarios() -> None:
    st = AuditStats()
    recs = recording_records(REPO / "scheduler/demo_data/k8s_geo", st)
    assert st.malformed == 0 and st.other_stages > 0 and st.records == len(recs)
    assert [r.ts for r in recs] == sorted(r.ts for r in recs)
    jane = [r for r in recs if r.user == "jane@corp" and r.action == EXEC]
    assert [r.command[0] for r in jane] == ["wget", "wget", "wget"]
    gt = json.loads((REPO / "scheduler/demo_data/k8s_geo/ground_truth.json").read_text())
    a1 = next(a for a in gt["malicious_actions"] if a["action_id"] == "A1")
    # the exec reaches the API server before the recorded command and ends after it
    assert jane[0].ts < a1["start"] < a1["end"] < jane[0].end_ts
    # every pod on the host side carries the UID of a pod the audit log created
    created = {r.pod_uid for r in recs if r.action == POD_CREATE}
    with gzip.open(REPO / "scheduler/demo_data/k8s_geo/osquery/osqueryd.results.log.gz",
                   "rt") as fh:
        uids = {json.loads(row["labels"]).get("io.kubernetes.pod.uid")
                for line in fh for d in [json.loads(line)]
                if d["name"].endswith("container_inventory") for row in d["snapshot"]}
    uids.discard(None)
    assert len(uids) == 6 and uids <= created


def test_generated_demo_data_is_reproducible(tmp_path: Path) -> None:
    from scheduler.collect.k8s_recording import build_scenario

    data = REPO / "scheduler/demo_data"
    build_scenario(data, "k8s_geo", out=tmp_path)
    for rel in ("k8s/audit.log.gz", "osquery/osqueryd.results.log.gz", "ground_truth.json",
                "meta.json"):
        assert (tmp_path / "k8s_geo" / rel).read_bytes() == \
            (data / "k8s_geo" / rel).read_bytes(), rel


def test_hostile_events_cost_only_themselves() -> None:
    from scheduler.collect.k8s_audit import records_from_events

    cl = Cluster("t")
    for i in range(3):
        cl.create_pod(JANE, T + i, "shop", f"p{i}", [Container("c", "x:1")])
    good = complete(cl)
    weird = json.loads(json.dumps(good[1]))
    weird["responseObject"]["spec"]["volumes"] = 5                 # wrong JSON types
    weird["responseObject"]["spec"]["containers"] = {"c": "x"}
    weird["responseObject"]["metadata"]["ownerReferences"] = "me"
    weird["user"]["groups"] = "admins"
    broken = dict(good[2], objectRef={"resource": "pods", "namespace": "shop"}, auditID="b-1",
                  requestReceivedTimestamp=12)
    st = AuditStats()
    recs = list(records_from_events([good[0], weird, broken, good[2]], st))
    assert [r.name for r in recs] == ["p0", "p1", "p2"] and st.malformed == 1
    assert recs[1].images == [] and recs[1].groups == [] and recs[1].owner == ""
    p = AuditLineParser("audit.log", st)
    assert p.parse_line("[" * 100_000 + "]" * 100_000, 1) == []       # nesting: counted
    assert p.parse_line("{" + '"a":' * 5, 2) == [] and st.malformed == 3
