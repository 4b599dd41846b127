"""Kubernetes scenarios for the recordings: audit events that follow audit.k8s.io/v1 field for
field, tied by pod UID to the containers of an existing recording.

Provenance. The host and network halves are the bundled recordings (real podman containers, real
Zeek logs; scheduler/demo_data/README.md). There was no API server in those captures, so this
module writes what the API server of a cluster running those containers would have logged, with
the same times, on a host renamed to the cluster node `k8s-node-1`: a `kubectl exec` whose
request reaches the API server 0.35 s before the recorded
`podman exec` started the command and whose session ends 0.05 s after it; a pod create 0.9 s
before its container's recorded create event; and so on. The containers' inventory rows get the
labels the kubelet puts on every CRI container (`io.kubernetes.pod.uid/name/namespace`,
`io.kubernetes.container.name`, and `pod_name`/`pod_namespace` columns), process snapshot rows the
`pod_uid` the kubepods cgroup would give; everything else in the recording is copied unchanged.

Every event is an `audit.k8s.io/v1` Event with the fields the API server writes for that request
at RequestResponse level (kind, apiVersion, level, auditID, stage, requestURI, verb, user{username,
uid, groups}, sourceIPs, userAgent, objectRef{resource, namespace, name, uid, apiVersion,
subresource}, responseStatus{metadata, code}, requestObject, responseObject,
requestReceivedTimestamp, stageTimestamp, annotations{authorization.k8s.io/decision, reason}),
written as the log backend writes them (one JSON object per line, in stage order), including the
RequestReceived stage (and ResponseStarted for exec/attach) a policy without omitStages produces;
the reader keeps only ResponseComplete. docs/kubernetes.md lists the fields the rules read.

    python -m scheduler.collect.k8s_recording build --data scheduler/demo_data

writes `k8s_geo/` (from geo_lookup) and `k8s_churn/` (from churn). Deterministic: UIDs and
auditIDs are uuid5 of the scenario and object, gzip mtime 0; rebuilding gives the same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from scheduler.collect.k8s_audit import API_VERSION, format_time

AUDIT_DIR = "k8s"
AUDIT_NAME = "audit.log"
NS_UUID = uuid.UUID("5a0c2f1e-7b1d-4c55-9e0e-6b1f3c0d2a77")
KUBECTL_UA = "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46"
KCM_UA = ("kube-controller-manager/v1.31.2 (linux/amd64) kubernetes/5864a46/"
          "system:serviceaccount:kube-system:{}")
CONTROL_PLANE_IP = "10.0.0.10"
# The host of the k8s recordings: a cluster node (a host name of its own also keeps their alert
# ids apart from those of the recordings they were made from, in one demo state database).
NODE = "k8s-node-1"


@dataclass(frozen=True)
class Identity:
    """Who sends a request (user.username, user.groups, where from, with which client)."""

    username: str
    groups: tuple[str, ...]
    source_ip: str
    user_agent: str = KUBECTL_UA


def service_account(ns: str, name: str, source_ip: str, user_agent: str = KUBECTL_UA) -> Identity:
    return Identity(f"system:serviceaccount:{ns}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{ns}",
                     "system:authenticated"), source_ip, user_agent)


def controller(name: str) -> Identity:
    return service_account("kube-system", name, CONTROL_PLANE_IP, KCM_UA.format(name))


@dataclass
class Container:
    name: str
    image: str
    privileged: bool = False
    capabilities: tuple[str, ...] = ()


def pod_spec(containers: Iterable[Container], host_network: bool = False, host_pid: bool = False,
             host_paths: Iterable[str] = ()) -> dict[str, Any]:
    """A v1 PodSpec with the fields the rules read (and the defaults the API server adds)."""
    conts = []
    for c in containers:
        d: dict[str, Any] = {"name": c.name, "image": c.image, "imagePullPolicy": "IfNotPresent",
                             "resources": {}, "terminationMessagePath": "/dev/termination-log",
                             "terminationMessagePolicy": "File"}
        sc: dict[str, Any] = {}
        if c.privileged:
            sc["privileged"] = True
        if c.capabilities:
            sc["capabilities"] = {"add": list(c.capabilities)}
        if sc:
            d["securityContext"] = sc
        conts.append(d)
    spec: dict[str, Any] = {"containers": conts, "restartPolicy": "Always",
                            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30}
    if host_network:
        spec["hostNetwork"] = True
    if host_pid:
        spec["hostPID"] = True
    vols = [{"name": f"host-{i}", "hostPath": {"path": p, "type": ""}}
            for i, p in enumerate(host_paths)]
    if vols:
        spec["volumes"] = vols
    return spec


def exec_uri(ns: str, pod: str, command: list[str], container: str = "", sub: str = "exec",
             stdin: bool = False, tty: bool = False) -> str:
    """The request URI kubectl sends for exec/attach (command= repeated, URL-encoded)."""
    q = [f"command={quote(c, safe='')}" for c in command] if sub == "exec" else []
    if container:
        q.append(f"container={quote(container, safe='')}")
    if stdin:
        q.append("stdin=true")
    q.append("stdout=true")
    q.append("stderr=true")
    if tty:
        q.append("tty=true")
    return f"/api/v1/namespaces/{ns}/pods/{pod}/{sub}?" + "&".join(q)


@dataclass
class Cluster:
    """Builds the audit events of a small cluster, deterministically."""

    scenario: str
    events: list[dict[str, Any]] = field(default_factory=list)
    _n: int = 0

    def uid(self, what: str) -> str:
        return str(uuid.uuid5(NS_UUID, f"{self.scenario}:{what}"))

    def _event(self, who: Identity, verb: str, uri: str, ref: dict[str, Any], t0: float,
               t1: float, code: int, request_obj: Any = None, response_obj: Any = None,
               long_running: bool = False) -> str:
        self._n += 1
        audit_id = self.uid(f"audit:{self._n}")
        base = {"kind": "Event", "apiVersion": API_VERSION, "level": "RequestResponse",
                "auditID": audit_id, "requestURI": uri, "verb": verb,
                "user": {"username": who.username, "uid": self.uid(f"user:{who.username}"),
                         "groups": list(who.groups)},
                "sourceIPs": [who.source_ip], "userAgent": who.user_agent, "objectRef": ref,
                "requestReceivedTimestamp": format_time(t0)}
        reason = (f'RBAC: allowed by ClusterRoleBinding "{who.username.split(":")[-1]}-binding"'
                  f' of ClusterRole "edit" to User "{who.username}"')
        ann = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}
        received = {**base, "stage": "RequestReceived", "stageTimestamp": format_time(t0)}
        if request_obj is not None:
            received["requestObject"] = request_obj
        self.events.append(received)
        if long_running:
            self.events.append({**base, "stage": "ResponseStarted",
                                "stageTimestamp": format_time(t0 + 0.02),
                                "responseStatus": {"metadata": {}, "code": code},
                                "annotations": ann})
        done = {**base, "stage": "ResponseComplete", "stageTimestamp": format_time(t1),
                "responseStatus": {"metadata": {}, "code": code}, "annotations": ann}
        if request_obj is not None:
            done["requestObject"] = request_obj
        if response_obj is not None:
            done["responseObject"] = response_obj
        self.events.append(done)
        return audit_id

    # -- objects ----------------------------------------------------------------------------
    def _meta(self, kind: str, ns: str, name: str, t: float,
              owner: tuple[str, str] | None = None, labels: dict[str, str] | None = None
              ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": ns,
                                "uid": self.uid(f"{kind}:{ns}/{name}"),
                                "resourceVersion": str(100000 + self._n),
                                "creationTimestamp": format_time(t)[:19] + "Z",
                                "labels": labels or {"app": name.split("-")[0]}}
        if owner is not None:
            okind, oname = owner
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": okind, "name": oname,
                                        "uid": self.uid(f"{okind}:{ns}/{oname}"),
                                        "controller": True, "blockOwnerDeletion": True}]
        return meta

    def pod_uid(self, ns: str, name: str) -> str:
        return self.uid(f"Pod:{ns}/{name}")

    def create_pod(self, who: Identity, t: float, ns: str, name: str,
                   containers: list[Container], owner: tuple[str, str] | None = None,
                   **spec_kw: Any) -> str:
        spec = pod_spec(containers, **spec_kw)
        req = {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": name, "namespace": ns, "labels": {"run": name}}, "spec": spec}
        resp = {"kind": "Pod", "apiVersion": "v1",
                "metadata": self._meta("Pod", ns, name, t, owner),
                "spec": spec, "status": {"phase": "Pending", "qosClass": "BestEffort"}}
        self._event(who, "create", f"/api/v1/namespaces/{ns}/pods",
                    {"resource": "pods", "namespace": ns, "name": name, "apiVersion": "v1"},
                    t, t + 0.012, 201, req, resp)
        return resp["metadata"]["uid"]

    def delete_pod(self, who: Identity, t: float, ns: str, name: str) -> None:
        meta = self._meta("Pod", ns, name, t)
        meta["deletionTimestamp"] = format_time(t + 30)[:19] + "Z"
        resp = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {},
                "status": {"phase": "Running"}}
        self._event(who, "delete", f"/api/v1/namespaces/{ns}/pods/{name}",
                    {"resource": "pods", "namespace": ns, "name": name, "apiVersion": "v1"},
                    t, t + 0.009, 200,
                    {"kind": "DeleteOptions", "apiVersion": "v1",
                     "propagationPolicy": "Background"},
                    resp)

    def session(self, who: Identity, t0: float, t1: float, ns: str, pod: str,
                command: list[str], container: str = "", sub: str = "exec",
                tty: bool = False) -> str:
        """kubectl exec / attach: a long-running request answered when the session ends."""
        return self._event(who, "create",
                           exec_uri(ns, pod, command, container, sub, stdin=tty, tty=tty),
                           {"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                            "subresource": sub}, t0, t1, 101, long_running=True)

    def debug(self, who: Identity, t: float, ns: str, pod: str, containers: list[Container],
              image: str, name: str = "debugger-x7k2p") -> None:
        spec = pod_spec(containers)
        spec["ephemeralContainers"] = [{"name": name, "image": image, "stdin": True, "tty": True,
                                        "targetContainerName": containers[0].name}]
        resp = {"kind": "Pod", "apiVersion": "v1", "metadata": self._meta("Pod", ns, pod, t),
                "spec": spec, "status": {"phase": "Running"}}
        self._event(who, "patch", f"/api/v1/namespaces/{ns}/pods/{pod}/ephemeralcontainers",
                    {"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                     "subresource": "ephemeralcontainers"}, t, t + 0.02, 200,
                    {"spec": {"ephemeralContainers": spec["ephemeralContainers"]}}, resp)

    def workload(self, who: Identity, t: float, kind: str, ns: str, name: str,
                 containers: list[Container], verb: str = "create",
                 owner: tuple[str, str] | None = None, **spec_kw: Any) -> None:
        resource = {"Deployment": "deployments", "ReplicaSet": "replicasets",
                    "DaemonSet": "daemonsets", "Job": "jobs", "CronJob": "cronjobs"}[kind]
        group = "batch" if kind in ("Job", "CronJob") else "apps"
        template = {"metadata": {"labels": {"app": name}}, "spec": pod_spec(containers, **spec_kw)}
        spec: dict[str, Any] = {"template": template}
        if kind == "CronJob":
            spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
        elif kind in ("Deployment", "ReplicaSet"):
            spec.update({"replicas": 3, "selector": {"matchLabels": {"app": name}}})
        obj = {"kind": kind, "apiVersion": f"{group}/v1",
               "metadata": self._meta(kind, ns, name, t, owner, {"app": name}), "spec": spec}
        path = f"/apis/{group}/v1/namespaces/{ns}/{resource}"
        uri = path if verb == "create" else f"{path}/{name}"
        self._event(who, verb, uri, {"resource": resource, "namespace": ns, "name": name,
                                     "apiGroup": group, "apiVersion": "v1"},
                    t, t + 0.015, 201 if verb == "create" else 200, obj, obj)

    def lines(self) -> list[str]:
        """The log backend's file: one event per line, in the order the stages happened."""
        evs = sorted(self.events, key=lambda e: (e["stageTimestamp"], e["auditID"], e["stage"]))
        return [json.dumps(e, separators=(",", ":")) for e in evs]


# ---- the recordings' containers ------------------------------------------------------------------

def _container_times(osquery_lines: list[str]) -> dict[str, dict[str, Any]]:
    """container id -> name, image, create/start/die/destroy times (from container_events)."""
    out: dict[str, dict[str, Any]] = {}
    for line in osquery_lines:
        d = json.loads(line)
        if not d.get("name", "").endswith("container_events"):
            continue
        for r in (d.get("diffResults") or {}).get("added", []):
            cid = r.get("container_id")
            if not cid:
                continue
            c = out.setdefault(cid, {"name": r.get("name", ""), "image": r.get("image", "")})
            c.setdefault(r["action"], int(r["time_nano"]) / 1e9)
    return out


def _label_rows(osquery_lines: list[str], pods: dict[str, dict[str, str]],
                node: str = NODE) -> list[str]:
    """Add the kubelet's labels (inventory) and the kubepods pod_uid (processes) to the rows of
    the containers that are in a pod, and name the host as the cluster node; every other field
    of the line is unchanged."""
    out = []
    for line in osquery_lines:
        d = json.loads(line)
        name = d.get("name", "")
        changed = d.get("hostIdentifier") != node
        d["hostIdentifier"] = node
        if name.endswith("container_inventory"):
            for row in d.get("snapshot") or []:
                p = pods.get(row.get("id", ""))
                if p:
                    row["labels"] = json.dumps({
                        "io.kubernetes.container.name": p["container"],
                        "io.kubernetes.pod.name": p["name"],
                        "io.kubernetes.pod.namespace": p["namespace"],
                        "io.kubernetes.pod.uid": p["uid"]}, sort_keys=True)
                    row["pod_name"], row["pod_namespace"] = p["name"], p["namespace"]
                    changed = True
        elif name.endswith("container_processes"):
            for row in d.get("snapshot") or []:
                p = pods.get(row.get("container_id", ""))
                if p:
                    row["pod_uid"] = p["uid"]
                    changed = True
        out.append(json.dumps(d, separators=(",", ":")) if changed else line)
    return out


def _gz_write(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                compresslevel=9, mtime=0) as out:
        for line in lines:
            out.write(line.encode() + b"\n")


def _read_gz_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [ln.rstrip("\n") for ln in fh if ln.strip()]


# identities of the stories
JANE = Identity("jane@corp", ("developers", "system:authenticated"), "198.51.100.23")
SRE = Identity("sre@corp", ("sre", "system:authenticated"), "10.20.0.15")
CI_DEPLOYER = service_account("ci", "deployer", "10.20.1.5",
                              "argocd-application-controller/v2.12.3")
CI_RUNNER = service_account("ci", "runner", "10.20.1.6")
STOLEN_RUNNER = service_account("ci", "runner", "203.0.113.77", "curl/8.5.0")
RS_CONTROLLER = controller("replicaset-controller")
DEPLOY_CONTROLLER = controller("deployment-controller")
HISTORY_S = 7200.0          # audit history written before the recording starts
DEMO_BASELINE_S = 3600.0    # the demo's kubernetes.baseline_s: the first hour of that history


def _history(cl: Cluster, t0: float, rs_old: str, rs_new: str) -> None:
    """Two hours of ordinary cluster life before the recording: CI deploys web and worker, SRE
    runs a tools pod and execs into pods now and then (learnt in the baseline hour, and seen
    again after it, which must stay quiet), then the rollout whose pods the recording shows."""
    h0 = t0 - HISTORY_S
    web = [Container("web", "localhost/webapp:1.4")]
    worker = [Container("worker", "localhost/worker:2.0")]
    tools = [Container("tools", "localhost/alpine-tools:3.19")]
    cl.workload(CI_DEPLOYER, h0 + 5, "Deployment", "shop", "web", web)
    cl.workload(DEPLOY_CONTROLLER, h0 + 5.2, "ReplicaSet", "shop", rs_old, web,
                owner=("Deployment", "web"))
    for i in range(3):
        cl.create_pod(RS_CONTROLLER, h0 + 5.4 + i * 0.1, "shop", f"{rs_old}-old{i}", web,
                      owner=("ReplicaSet", rs_old))
    cl.workload(CI_DEPLOYER, h0 + 8, "Deployment", "shop", "worker", worker)
    cl.workload(DEPLOY_CONTROLLER, h0 + 8.2, "ReplicaSet", "shop", "worker-5c8d7f9b4", worker,
                owner=("Deployment", "worker"))
    cl.create_pod(RS_CONTROLLER, h0 + 8.4, "shop", "worker-5c8d7f9b4-old0", worker,
                  owner=("ReplicaSet", "worker-5c8d7f9b4"))
    cl.create_pod(SRE, h0 + 60, "ops", "tools-0", tools)
    for k, t in enumerate(range(int(h0) + 600, int(t0) - 120, 900)):
        cl.session(SRE, t, t + 0.4, "shop", f"{rs_old}-old{k % 3}", ["cat", "/www/health"],
                   container="web")
        cl.session(SRE, t + 30, t + 31.2, "ops", "tools-0", ["nslookup", "web.shop.svc"])
    # the rollout whose pods the recording's containers are (web-1..3 and worker-1 below)
    cl.workload(CI_DEPLOYER, t0 - 20, "Deployment", "shop", "web", web, verb="patch")
    cl.workload(DEPLOY_CONTROLLER, t0 - 19.8, "ReplicaSet", "shop", rs_new, web,
                owner=("Deployment", "web"))


def _pod_for(cl: Cluster, pods: dict[str, dict[str, str]], cid: str, ns: str, name: str,
             container: str) -> None:
    pods[cid] = {"namespace": ns, "name": name, "uid": cl.pod_uid(ns, name), "container": container}


def plan_geo_lookup(osq: list[str], gt: dict[str, Any]) -> tuple[Cluster, dict[str, dict[str, str]],
                                                                  dict[str, Any]]:
    """geo_lookup as a Kubernetes story: jane@corp (never exec'd before) execs into two web pods
    and looks up where the cluster is (A1, A2, A6) and runs a throw-away pod that does it again
    (A7, `kubectl run --rm -it`); sre@corp, who execs routinely, does A3-A5 in the tools pod."""
    times = _container_times(osq)
    t0 = min(c.get("create", 1e20) for c in times.values())
    cl = Cluster("k8s_geo")
    rs_new = "web-6d9f8c7b5"
    _history(cl, t0, "web-7b4c9d8f6", rs_new)
    pods: dict[str, dict[str, str]] = {}
    by_name = {c["name"]: cid for cid, c in times.items()}
    web = [Container("web", "localhost/webapp:1.4")]
    for i, n in enumerate(("web-1", "web-2", "web-3")):
        cid = by_name[n]
        pod = f"{rs_new}-{['q7x2k', 'h4m8z', 'p2r6w'][i]}"
        _pod_for(cl, pods, cid, "shop", pod, "web")
        cl.create_pod(RS_CONTROLLER, times[cid]["create"] - 0.9, "shop", pod, web,
                      owner=("ReplicaSet", rs_new))
    cid = by_name["worker-1"]
    _pod_for(cl, pods, cid, "shop", "worker-5c8d7f9b4-b9t4n", "worker")
    cl.create_pod(RS_CONTROLLER, times[cid]["create"] - 0.9, "shop", "worker-5c8d7f9b4-b9t4n",
                  [Container("worker", "localhost/worker:2.0")],
                  owner=("ReplicaSet", "worker-5c8d7f9b4"))
    cid = by_name["tools-1"]
    _pod_for(cl, pods, cid, "ops", "tools-1", "tools")
    cl.create_pod(SRE, times[cid]["create"] - 0.9, "ops", "tools-1",
                  [Container("tools", "localhost/alpine-tools:3.19")])
    expected: list[dict[str, Any]] = []
    for act in gt.get("malicious_actions", []):
        cid = act["container_id"]
        p = pods.get(cid)
        if act.get("how_run", "").startswith("podman exec") and p:
            who = JANE if p["namespace"] == "shop" else SRE
            cl.session(who, act["start"] - 0.35, act["end"] + 0.05, p["namespace"], p["name"],
                       act["command"], container=p["container"])
            expected.append({"action_id": act["action_id"], "container_id": cid,
                             "requester": who.username, "how": "exec",
                             "pod": f"{p['namespace']}/{p['name']}"})
        elif act.get("how_run", "").startswith("podman run --rm"):
            c = times[cid]
            name = "probe"
            _pod_for(cl, pods, cid, "shop", name, name)
            cl.create_pod(JANE, c["create"] - 0.9, "shop", name,
                          [Container(name, act["image"])])
            cl.session(JANE, c["start"] - 0.3, c["die"] + 0.1, "shop", name, [],
                       container=name, sub="attach", tty=True)
            cl.delete_pod(JANE, c["die"] + 0.3, "shop", name)
            expected.append({"action_id": act["action_id"], "container_id": cid,
                             "requester": JANE.username, "how": "attach",
                             "pod": f"shop/{name}"})
    k8s_gt = {"attributions": expected, "expected_alerts": [
        {"rule": "k8s_exec_new_requester", "requester": JANE.username},
    ], "unexpected_requesters": [SRE.username, CI_DEPLOYER.username]}
    return cl, pods, k8s_gt


def plan_churn(osq: list[str], gt: dict[str, Any]) -> tuple[Cluster, dict[str, dict[str, str]],
                                                            dict[str, Any]]:
    """churn as a Kubernetes story: the CI runner's service-account token, used from outside
    (203.0.113.77, curl), creates and deletes 40 pods in namespace scratch in one minute, each
    looking up its public address (the recorded --rm containers)."""
    times = _container_times(osq)
    t0 = min(c.get("create", 1e20) for c in times.values())
    cl = Cluster("k8s_churn")
    rs_new = "web-58f6b7c9d"
    _history(cl, t0, "web-7b4c9d8f6", rs_new)
    # the runner's ordinary CI jobs: one build pod every 20 minutes, in the baseline and after
    for k, t in enumerate(range(int(t0 - HISTORY_S) + 300, int(t0) - 60, 1200)):
        name = f"build-{k:03d}"
        cl.create_pod(CI_RUNNER, t, "ci", name, [Container("build", "localhost/worker:2.0")])
        cl.delete_pod(CI_RUNNER, t + 95, "ci", name)
    pods: dict[str, dict[str, str]] = {}
    web = [Container("web", "localhost/webapp:1.4")]
    expected: list[dict[str, Any]] = []
    suffixes = iter(["k2v9d", "m7c4x", "t5n8q"])
    for cid, c in sorted(times.items(), key=lambda kv: kv[1].get("create", 0)):
        if c["image"] == "localhost/webapp:1.4":
            pod = f"{rs_new}-{next(suffixes)}"
            _pod_for(cl, pods, cid, "shop", pod, "web")
            cl.create_pod(RS_CONTROLLER, c["create"] - 0.9, "shop", pod, web,
                          owner=("ReplicaSet", rs_new))
        elif c["image"] == "localhost/worker:2.0":
            _pod_for(cl, pods, cid, "shop", "worker-5c8d7f9b4-f3j7s", "worker")
            cl.create_pod(RS_CONTROLLER, c["create"] - 0.9, "shop", "worker-5c8d7f9b4-f3j7s",
                          [Container("worker", "localhost/worker:2.0")],
                          owner=("ReplicaSet", "worker-5c8d7f9b4"))
        elif c["image"] == "localhost/alpine-tools:3.19" and "create" in c:
            name = f"probe-{cl.uid(cid)[:5]}"
            _pod_for(cl, pods, cid, "scratch", name, "probe")
            cl.create_pod(STOLEN_RUNNER, c["create"] - 0.8, "scratch", name,
                          [Container("probe", c["image"])])
            cl.delete_pod(STOLEN_RUNNER, c.get("die", c["create"] + 1) + 0.2, "scratch", name)
            expected.append({"container_id": cid, "requester": STOLEN_RUNNER.username,
                             "how": "created", "pod": f"scratch/{name}"})
    for act in gt.get("malicious_actions", []):
        for e in expected:
            if e["container_id"] == act["container_id"]:
                e["action_id"] = act["action_id"]
    k8s_gt = {"attributions": expected, "expected_alerts": [
        {"rule": "k8s_pod_churn", "requester": STOLEN_RUNNER.username, "namespace": "scratch"},
    ], "unexpected_requesters": [SRE.username, CI_DEPLOYER.username]}
    return cl, pods, k8s_gt


PLANS = {"k8s_geo": ("geo_lookup", plan_geo_lookup),
         "k8s_churn": ("churn", plan_churn)}


def build_scenario(data: Path, name: str, out: Path | None = None) -> dict[str, int]:
    """Write recording `name` (see PLANS) next to its source recording under `data`."""
    src_name, plan = PLANS[name]
    src = data / src_name
    dst = (out or data) / name
    if dst.exists():
        shutil.rmtree(dst)
    osq_path = src / "osquery" / "osqueryd.results.log.gz"
    osq = _read_gz_lines(osq_path)
    gt = json.loads((src / "ground_truth.json").read_text())
    cl, pods, k8s_gt = plan(osq, gt)
    _gz_write(dst / "osquery" / "osqueryd.results.log.gz", _label_rows(osq, pods))
    (dst / "zeek").mkdir(parents=True, exist_ok=True)
    for z in sorted((src / "zeek").iterdir()):
        shutil.copyfile(z, dst / "zeek" / z.name)
    lines = cl.lines()
    _gz_write(dst / AUDIT_DIR / (AUDIT_NAME + ".gz"), lines)
    meta = json.loads((src / "meta.json").read_text())
    meta["name"] = name
    meta["host"] = NODE
    meta["source"] = (f"{src_name} with Kubernetes pod labels and a generated API server audit "
                      f"log (scheduler/collect/k8s_recording.py)")
    (dst / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    gt["kubernetes"] = {"generator": "python -m scheduler.collect.k8s_recording build",
                        "baseline_s": DEMO_BASELINE_S, "history_s": HISTORY_S, **k8s_gt}
    (dst / "ground_truth.json").write_text(json.dumps(gt, indent=1) + "\n")
    return {"audit_lines": len(lines), "pods_on_host": len(pods), "osquery_lines": len(osq)}


def check_k8s_ground_truth(gt: dict[str, Any] | None, alerts: list[dict[str, Any]]
                           ) -> list[dict[str, Any]]:
    """Ground-truth rows (the shape of replay.check_ground_truth's) for the Kubernetes labels.

    An attribution is met by an alert on the action's container whose `details.kubernetes` names
    the requester; an expected alert by an alert of that rule naming the requester."""
    k = (gt or {}).get("kubernetes")
    if not k:
        return []
    rows = []
    for a in k.get("attributions", []):
        hit = next((x for x in alerts if x["container"].get("id") == a["container_id"]
                    and (x.get("details") or {}).get("kubernetes", {}).get("user")
                    == a["requester"]), None)
        rows.append({"action_id": f"{a.get('action_id', '')}/k8s",
                     "label": f"{a['how']} by {a['requester']}", "rule": "location_discovery",
                     "container": a["pod"], "image": "", "start": 0.0,
                     "alert_id": hit["id"] if hit else None, "how": "requester named"})
    for e in k.get("expected_alerts", []):
        hit = next((x for x in alerts if x["rule"] == e["rule"] and
                    (x.get("details") or {}).get("kubernetes", {}).get("requester")
                    == e["requester"]), None)
        rows.append({"action_id": e["rule"], "label": f"requester {e['requester']}",
                     "rule": e["rule"], "container": e.get("namespace", ""), "image": "",
                     "start": 0.0, "alert_id": hit["id"] if hit else None, "how": "k8s"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.collect.k8s_recording",
                                 description="Write the Kubernetes demo recordings.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="k8s_geo and k8s_churn from geo_lookup and churn")
    b.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "demo_data"))
    b.add_argument("--out", default="", help="default: --data")
    b.add_argument("--scenario", action="append", choices=sorted(PLANS))
    args = ap.parse_args(argv)
    data = Path(args.data)
    for name in args.scenario or sorted(PLANS):
        print(name, json.dumps(build_scenario(data, name, Path(args.out) if args.out else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
