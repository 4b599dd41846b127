"""The join of Kubernetes requesters to alerts on containers, by pod: unit cases on generated
audit events, then the bundled k8s recordings through the whole pipeline (replay)."""
from __future__ import annotations

import json
from pathlib import Path

from scheduler.alerting.alerts import Alert, ContainerRef
from scheduler.collect.k8s_audit import parse_event
from scheduler.collect.k8s_recording import (CI_DEPLOYER, DEPLOY_CONTROLLER, JANE, RS_CONTROLLER,
                                             SRE, Cluster, Container)
from scheduler.detect.k8s_join import K8sJoin, pod_from_inventory

REPO = Path(__file__).resolve().parents[1]
T = 1795805000.0
WEB = [Container("web", "localhost/webapp:1.4")]
CID = "e011c40324138c0a6362bfc49c9e393dce6c69729934d213562998d29223894f"


def labels(uid: str, ns: str, pod: str, container: str) -> dict:
    return {"id": CID, "labels": json.dumps({
        "io.kubernetes.container.name": container, "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": uid}),
        "pod_name": pod, "pod_namespace": ns}


def joined(cl: Cluster, inventory: dict | None, t_proc: float, cmd: str = "wget -qO- http://ipinfo.io/",
           process_uid: str = "") -> tuple[bool, Alert, K8sJoin]:
    j = K8sJoin()
    if inventory is not None:
        j.observe_inventory(CID, inventory)
    if process_uid:
        j.observe_process(CID, process_uid)
    for e in cl.events:
        if e["stage"] == "ResponseComplete":
            j.observe(parse_event(e))
    alert = Alert(id="x", time=t_proc, rule="location_discovery", severity="high",
                  title="Location discovery (T1614) in container web-2: host and network evidence",
                  host="lab-host-1", container=ContainerRef(id=CID, name="web-2"),
                  evidence=[{"side": "host", "kind": "process", "time": t_proc, "cmdline": cmd,
                             "summary": cmd},
                            {"side": "network", "kind": "dns", "time": t_proc + 0.05,
                             "summary": "dns ipinfo.io NOERROR"}])
    return j.finish_alert(alert), alert, j


def test_pod_labels_from_inventory_rows() -> None:
    ref = pod_from_inventory(labels("u-1", "shop", "web-1", "web"))
    assert (ref.uid, ref.namespace, ref.name, ref.container) == ("u-1", "shop", "web-1", "web")
    assert pod_from_inventory({"labels": "{}", "pod_name": "", "pod_namespace": ""}) is None
    assert pod_from_inventory({"labels": "not json", "pod_name": "p", "pod_namespace": "n"}).name == "p"


def test_exec_session_and_the_process_merge_into_one_alert() -> None:
    cl = Cluster("j")
    uid = cl.create_pod(RS_CONTROLLER, T, "shop", "web-7f9", WEB)
    cl.session(JANE, T + 100.0, T + 100.6, "shop", "web-7f9", ["wget", "-qO-", "http://ipinfo.io/"],
               container="web")
    ok, alert, _ = joined(cl, labels(uid, "shop", "web-7f9", "web"), T + 100.4)
    assert ok
    k = alert.details["kubernetes"]
    assert k["summary"] == ("user jane@corp exec'd into shop/web-7f9 at 18:45:00.000; "
                            "wget -qO- http://ipinfo.io/ ran 0.4 s later in that pod")
    assert (k["requester"], k["how"], k["pod_uid"], k["lag_s"]) == ("jane@corp", "exec", uid, 0.4)
    assert [e["side"] for e in alert.evidence] == ["orchestration", "host", "network"]
    ev = alert.evidence[0]
    assert ev["kind"] == "k8s_exec" and ev["command"] == ["wget", "-qO-", "http://ipinfo.io/"]
    assert ev["join"] == "exec (during the session)" and ev["source_ips"] == ["198.51.100.23"]
    assert alert.title.endswith("[kubectl exec by jane@corp]")
    assert "orchestration" in alert.to_dict()["event"]["evidence_sides"]


def test_session_of_another_container_or_long_ago_does_not_explain_the_process() -> None:
    cl = Cluster("j")
    uid = cl.create_pod(SRE, T, "shop", "web-7f9", WEB)
    cl.session(JANE, T + 100, T + 101, "shop", "web-7f9", ["id"], container="sidecar")
    cl.session(JANE, T + 200, T + 201, "shop", "web-7f9", ["id"], container="web")
    # the process at T+1000: 799 s after the last session into its container: not that session;
    # the pod's creator is named instead
    ok, alert, _ = joined(cl, labels(uid, "shop", "web-7f9", "web"), T + 1000.0)
    assert ok and alert.details["kubernetes"]["how"] == "created"
    assert alert.details["kubernetes"]["requester"] == "sre@corp"
    # 100 s after the session into its container ended: that session ("after")
    ok, alert, _ = joined(cl, labels(uid, "shop", "web-7f9", "web"), T + 301.0)
    assert alert.details["kubernetes"]["how"] == "exec"
    assert alert.evidence[0]["join"] == "exec (after the session)"


def test_pod_made_by_a_controller_names_the_workload_requester() -> None:
    cl = Cluster("j")
    cl.workload(CI_DEPLOYER, T, "Deployment", "shop", "web", WEB, verb="patch")
    cl.workload(DEPLOY_CONTROLLER, T + 0.2, "ReplicaSet", "shop", "web-6d9", WEB,
                owner=("Deployment", "web"))
    uid = cl.create_pod(RS_CONTROLLER, T + 0.4, "shop", "web-6d9-x", WEB,
                        owner=("ReplicaSet", "web-6d9"))
    ok, alert, _ = joined(cl, labels(uid, "shop", "web-6d9-x", "web"), T + 60)
    assert ok and alert.details["kubernetes"]["how"] == "workload"
    assert alert.details["kubernetes"]["summary"].startswith(
        "service account ci/deployer changed Deployment shop/web at 18:43:20.000, whose "
        "controller made pod shop/web-6d9-x;")


def test_pod_uid_from_the_process_cgroup_alone() -> None:
    cl = Cluster("j")
    uid = cl.create_pod(JANE, T, "shop", "probe", [Container("probe", "x:1")])
    ok, alert, _ = joined(cl, None, T + 2.0, process_uid=uid)
    assert ok and alert.details["kubernetes"]["summary"].startswith(
        "user jane@corp created pod shop/probe at 18:43:20.000; wget")


def test_containers_outside_pods_are_left_alone() -> None:
    cl = Cluster("j")
    cl.session(JANE, T, T + 5, "shop", "web-7f9", ["id"])
    ok, alert, _ = joined(cl, None, T + 1)
    assert not ok and "kubernetes" not in alert.details and len(alert.evidence) == 2
    ok, alert, _ = joined(cl, labels("u-9", "shop", "other-pod", "web"), T + 1)
    assert not ok


def test_state_round_trip() -> None:
    cl = Cluster("j")
    uid = cl.create_pod(RS_CONTROLLER, T, "shop", "web-7f9", WEB)
    cl.session(JANE, T + 100.0, T + 100.6, "shop", "web-7f9", ["id"], container="web")
    _, _, j = joined(cl, labels(uid, "shop", "web-7f9", "web"), T + 100.4)
    j2 = K8sJoin()
    j2.load_state(json.loads(json.dumps(j.dump_state())))
    ctx = j2.context(CID, T + 100.4)
    assert ctx["how"] == "exec" and ctx["record"].user == "jane@corp"


def test_prune_forgets_gone_containers_and_old_records() -> None:
    cl = Cluster("j")
    uid = cl.create_pod(RS_CONTROLLER, T, "shop", "web-7f9", WEB)
    cl.session(JANE, T + 100.0, T + 100.6, "shop", "web-7f9", ["id"], container="web")
    _, _, j = joined(cl, labels(uid, "shop", "web-7f9", "web"), T + 100.4)
    j.prune(T + 200, keep_s=3600, containers={CID})
    assert CID in j.pods and uid in j.created and j.sessions
    j.prune(T + 5000, keep_s=3600, containers=set())          # container gone, records old
    assert j.pods == {} and j.created == {} and j.sessions == {}
