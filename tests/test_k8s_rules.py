"""Kubernetes rules, each on generated audit events (the published schema) and, where the
bundled k8s recordings have the case, on those: fires on the attack, quiet on the baseline."""
from __future__ import annotations

import json
from pathlib import Path

from scheduler.collect.k8s_audit import parse_event, recording_records
from scheduler.collect.k8s_recording import (CI_DEPLOYER, CI_RUNNER, JANE, RS_CONTROLLER, SRE,
                                             Cluster, Container)
from scheduler.detect.k8s_rules import (K8S_MITRE, RULE_K8S_CHURN, RULE_K8S_EPHEMERAL,
                                        RULE_K8S_EXEC, RULE_K8S_IMAGE, RULE_K8S_PRIVILEGED,
                                        K8sRules, K8sRuleSettings, image_registry,
                                        is_system_user)

REPO = Path(__file__).resolve().parents[1]
T = 1795805000.0
WEB = [Container("web", "localhost/webapp:1.4")]


def run(cl: Cluster, settings: K8sRuleSettings | None = None) -> list:
    rules = K8sRules(settings or K8sRuleSettings(baseline_s=100.0))
    out = []
    for e in sorted((e for e in cl.events if e["stage"] == "ResponseComplete"),
                    key=lambda e: e["requestReceivedTimestamp"]):
        out.extend(rules.observe(parse_event(e)))
    return out


def baseline(cl: Cluster) -> None:
    """Baseline period [T, T+100): sre execs, ci deploys webapp."""
    cl.workload(CI_DEPLOYER, T, "Deployment", "shop", "web", WEB)
    cl.session(SRE, T + 10, T + 11, "shop", "web-a", ["cat", "/www/health"])


def test_every_rule_has_an_attack_technique() -> None:
    assert {r: [m["technique"] for m in K8S_MITRE[r]] for r in K8S_MITRE} == {
        RULE_K8S_CHURN: ["T1610"], RULE_K8S_EXEC: ["T1609"], RULE_K8S_PRIVILEGED: ["T1611"],
        RULE_K8S_EPHEMERAL: ["T1609"], RULE_K8S_IMAGE: ["T1610"]}


def test_system_users_and_registries() -> None:
    assert is_system_user("system:kube-scheduler") and is_system_user("system:node:n1")
    assert is_system_user("system:serviceaccount:kube-system:replicaset-controller")
    assert not is_system_user("system:serviceaccount:ci:runner")
    assert not is_system_user("system:anonymous")
    assert not is_system_user("jane@corp") and is_system_user("jane@corp", ["jane@corp"])
    assert [image_registry(i) for i in ("nginx", "library/nginx:1", "ghcr.io/a/b:1",
                                        "localhost:5000/x", "localhost/webapp:1.4",
                                        "Quay.IO/x@sha256:ab")] == \
        ["docker.io", "docker.io", "ghcr.io", "localhost:5000", "localhost", "quay.io"]


def test_exec_by_a_requester_outside_the_baseline() -> None:
    cl = Cluster("r")
    baseline(cl)
    cl.session(SRE, T + 200, T + 201, "shop", "web-a", ["cat", "/www/health"])      # known
    cl.session(JANE, T + 300, T + 302, "shop", "web-a", ["wget", "-qO-", "http://ipinfo.io/"])
    cl.session(JANE, T + 400, T + 420, "shop", "probe", [], sub="attach", tty=True)
    cands = run(cl)
    assert [(c.rule, c.signature) for c in cands] == [
        (RULE_K8S_EXEC, "jane@corp|shop/web-a"), (RULE_K8S_EXEC, "jane@corp|shop/probe")]
    assert cands[0].title == ("kubectl exec into shop/web-a by jane@corp, who never did so in "
                              "the baseline period")
    ev = cands[0].evidence[0]
    assert ev["side"] == "orchestration" and ev["command"] == ["wget", "-qO-", "http://ipinfo.io/"]
    assert ev["source_ips"] == ["198.51.100.23"] and ev["resource"] == "pods/exec"
    assert cands[1].title.startswith("kubectl attach to shop/probe")


def test_exec_during_the_baseline_is_learnt_not_alerted() -> None:
    cl = Cluster("r")
    cl.session(JANE, T, T + 1, "shop", "web-a", ["id"])
    cl.session(JANE, T + 500, T + 501, "shop", "web-a", ["id"])
    assert run(cl) == []


def test_pod_churn_per_namespace_and_requester_not_controllers() -> None:
    cl = Cluster("r")
    baseline(cl)
    for i in range(12):                         # a controller scaling: no churn alert
        cl.create_pod(RS_CONTROLLER, T + 200 + i, "shop", f"web-{i}", WEB,
                      owner=("ReplicaSet", "web-1"))
    for i in range(6):                          # below the threshold in another namespace
        cl.create_pod(CI_RUNNER, T + 200 + i, "ci", f"build-{i}", WEB)
    for i in range(25):
        cl.create_pod(CI_RUNNER, T + 300 + 2 * i, "scratch", f"probe-{i}", WEB)
        cl.delete_pod(CI_RUNNER, T + 301 + 2 * i, "scratch", f"probe-{i}")
    churn = [c for c in run(cl) if c.rule == RULE_K8S_CHURN]
    # 25 creates 2 s apart all fit in 60 s: n=10 fires at the 11th and the 21st, each kind
    assert [(c.details["kubernetes"]["action"], c.details["kubernetes"]["count"]) for c in churn] \
        == [("create", 11), ("delete", 11), ("create", 21), ("delete", 21)]
    assert {c.signature for c in churn} == {"scratch|system:serviceaccount:ci:runner"}
    assert churn[0].title == ("Pod churn: 11 pod creates by system:serviceaccount:ci:runner in "
                              "namespace scratch within 60s")
    assert churn[0].evidence[0]["pods"][:2] == ["probe-0", "probe-1"]


def test_privileged_host_namespace_hostpath_and_capabilities_by_non_system_users() -> None:
    cl = Cluster("r")
    baseline(cl)
    cl.create_pod(JANE, T + 200, "shop", "root", [Container("c", "localhost/webapp:1.4",
                                                            privileged=True)])
    cl.workload(JANE, T + 210, "DaemonSet", "kube-system", "agent", WEB, host_network=True,
                host_pid=True, host_paths=["/"])
    cl.workload(CI_DEPLOYER, T + 220, "Job", "ci", "ptrace",
                [Container("c", "localhost/webapp:1.4", capabilities=("SYS_PTRACE", "NET_RAW"))])
    cl.create_pod(JANE, T + 230, "shop", "plain", WEB)                            # nothing risky
    cl.create_pod(RS_CONTROLLER, T + 240, "kube-system", "proxy",                  # a component
                  [Container("c", "localhost/webapp:1.4", privileged=True)], host_network=True)
    cands = [c for c in run(cl) if c.rule == RULE_K8S_PRIVILEGED]
    assert [c.details["kubernetes"]["flags"] for c in cands] == [
        ["privileged"], ["hostNetwork", "hostPID", "hostPath:/"], ["cap:SYS_PTRACE"]]
    assert cands[1].title == ("DaemonSet kube-system/agent created by jane@corp with "
                              "hostNetwork, hostPID, hostPath:/")
    assert cands[0].severity == "high" and cands[0].container.name == "(pod) shop/root"


def test_ephemeral_debug_container() -> None:
    cl = Cluster("r")
    baseline(cl)
    cl.debug(SRE, T + 200, "shop", "web-a", WEB, "localhost/webapp:1.4")
    cands = run(cl)
    assert [c.rule for c in cands] == [RULE_K8S_EPHEMERAL]
    assert cands[0].title == ("Ephemeral debug container (localhost/webapp:1.4) added to "
                              "shop/web-a by sre@corp")


def test_unexpected_images_never_seen_and_registry_allow_list() -> None:
    cl = Cluster("r")
    baseline(cl)
    cl.create_pod(JANE, T + 200, "shop", "a", WEB)                               # seen: quiet
    cl.create_pod(JANE, T + 210, "shop", "b", [Container("c", "ghcr.io/x/miner:1")])
    cl.create_pod(JANE, T + 220, "shop", "c", [Container("c", "ghcr.io/x/miner:1")])  # now seen
    cands = [c for c in run(cl) if c.rule == RULE_K8S_IMAGE]
    assert [(c.signature, c.details["kubernetes"]["reasons"]) for c in cands] == [
        ("image:ghcr.io/x/miner:1", ["never seen in this environment"])]
    strict = K8sRuleSettings(baseline_s=100.0, allowed_registries=["localhost"])
    cands = [c for c in run(cl, strict) if c.rule == RULE_K8S_IMAGE]
    assert [c.details["kubernetes"]["reasons"] for c in cands] == [
        ["never seen in this environment", "registry ghcr.io not on the allow-list"],
        ["registry ghcr.io not on the allow-list"]]
    assert cands[0].severity == "medium"


def test_refused_requests_raise_nothing() -> None:
    cl = Cluster("r")
    baseline(cl)
    cl.session(JANE, T + 300, T + 301, "shop", "web-a", ["id"])
    ev = [e for e in cl.events if e["stage"] == "ResponseComplete"][-1]
    ev["responseStatus"]["code"] = 403
    assert run(cl) == []


def test_state_round_trip_keeps_baseline_and_churn() -> None:
    cl = Cluster("r")
    baseline(cl)
    for i in range(6):
        cl.create_pod(CI_RUNNER, T + 300 + i, "scratch", f"p{i}", WEB)
    recs = [parse_event(e) for e in cl.events if e["stage"] == "ResponseComplete"]
    a = K8sRules(K8sRuleSettings(baseline_s=100.0))
    for r in recs:
        a.observe(r)
    b = K8sRules(K8sRuleSettings(baseline_s=100.0))
    b.load_state(json.loads(json.dumps(a.dump_state())))
    more = Cluster("r2")
    for i in range(5):
        more.create_pod(CI_RUNNER, T + 310 + i, "scratch", f"q{i}", WEB)
    more.session(SRE, T + 320, T + 321, "shop", "web-a", ["id"])
    out = [c for e in more.events if e["stage"] == "ResponseComplete"
           for c in b.observe(parse_event(e))]
    assert [c.rule for c in out] == [RULE_K8S_CHURN]         # 11th create; sre still known


def test_bundled_recordings_raise_what_their_ground_truth_says_and_nothing_else() -> None:
    for name, expect in (("k8s_geo", {RULE_K8S_EXEC: {"jane@corp"}}),
                         ("k8s_churn", {RULE_K8S_CHURN: {"system:serviceaccount:ci:runner"}})):
        rec_dir = REPO / "scheduler/demo_data" / name
        gt = json.loads((rec_dir / "ground_truth.json").read_text())["kubernetes"]
        rules = K8sRules(K8sRuleSettings(baseline_s=gt["baseline_s"]))
        got: dict[str, set[str]] = {}
        for r in recording_records(rec_dir):
            for c in rules.observe(r):
                got.setdefault(c.rule, set()).add(c.details["kubernetes"]["requester"])
        assert got == expect, name
