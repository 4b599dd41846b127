"""The join of Kubernetes requesters to host and network evidence, by pod.

The host side knows containers and, on a Kubernetes node, their pods: the kubelet labels every
CRI container (`io.kubernetes.pod.uid`, `.pod.name`, `.pod.namespace`, `.container.name`), which
`container_inventory.labels` carries, and `container_processes.pod_uid` comes from the kubepods
cgroup. The audit side knows who created a pod (its UID is in the create's response object) and
who exec'd or attached into it (by namespace and name, for the session from
requestReceivedTimestamp to the ResponseComplete stageTimestamp).

`finish_alert` runs on every alert the engine emits: an alert on a container in a known pod gets
the requester who put the evidence there, as one more piece of evidence (side "orchestration")
and a sentence: "user jane@corp exec'd into default/web-7f9 at 12:00:03.046; wget -qO-
http://ipinfo.io/ ran 0.4 s later in that pod". It runs when the alert is written, not when a
candidate arrives, so an audit event that reaches the daemon after the process event (the
webhook backend batches) still joins while the alert waits out its merge window.

Which request explains the evidence, in order: an exec/attach/debug session into the pod that was
open at the evidence time (the latest one; the container must match when both sides name it);
one that ended at most `after_s` earlier (a command left running in the background); the pod's
creator; for a pod a controller created, the last requester of its workload (pod -> ReplicaSet
-> Deployment through the ownerReferences the create responses carry).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from scheduler.collect.k8s_audit import (ATTACH, EPHEMERAL, EXEC, POD_CREATE, PORTFORWARD,
                                         WORKLOAD_CREATE, WORKLOAD_UPDATE, OrchestrationRecord)
from scheduler.detect.k8s_rules import audit_evidence, is_system_user

log = logging.getLogger(__name__)

LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"

SESSION_ACTIONS = (EXEC, ATTACH, EPHEMERAL, PORTFORWARD)
MAX_SESSIONS_PER_POD = 50
_VERB_TEXT = {EXEC: "exec'd into", ATTACH: "attached to", EPHEMERAL: "started a debug container in",
              PORTFORWARD: "port-forwarded to"}


@dataclass(slots=True)
class PodRef:
    """The pod a container belongs to, as the host side reports it."""

    uid: str = ""
    namespace: str = ""
    name: str = ""
    container: str = ""       # the container's name in the pod spec


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            d = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}
    return {}


def pod_from_inventory(columns: dict[str, Any]) -> PodRef | None:
    """The pod of a container_inventory row (labels, else the pod_name/pod_namespace columns)."""
    lab = _labels(columns.get("labels"))
    def col(key: str) -> str:
        return str(columns.get(key, "") or "")
    ref = PodRef(uid=lab.get(LABEL_POD_UID, "") or col("pod_uid"),
                 namespace=lab.get(LABEL_POD_NAMESPACE, "") or col("pod_namespace"),
                 name=lab.get(LABEL_POD_NAME, "") or col("pod_name"),
                 container=lab.get(LABEL_CONTAINER_NAME, ""))
    return ref if ref.uid or ref.name else None


def clock(ts: float) -> str:
    """12:00:03.046 (UTC), how the sentence names a moment."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def who(rec: OrchestrationRecord) -> str:
    if rec.service_account and not rec.impersonated_user:
        return f"service account {rec.service_account}"
    return f"user {rec.requester}"


class K8sJoin:
    """Pods of containers, and the requests that made or entered each pod."""

    def __init__(self, after_s: float = 300.0, slack_s: float = 2.0,
                 trusted_users: Any = ()) -> None:
        self.after_s = after_s
        self.slack_s = slack_s
        self.trusted_users = trusted_users
        self.pods: dict[str, PodRef] = {}                          # container id -> pod
        self.uid_by_name: dict[tuple[str, str], str] = {}
        self.created: dict[str, OrchestrationRecord] = {}          # pod uid -> its create
        self.sessions: dict[tuple[str, str], list[OrchestrationRecord]] = {}
        self.workloads: dict[tuple[str, str, str], OrchestrationRecord] = {}
        self.joined = 0

    # -- input ------------------------------------------------------------------------------
    def observe_inventory(self, container_id: str, columns: dict[str, Any]) -> None:
        ref = pod_from_inventory(columns)
        if ref is None or not container_id:
            return
        old = self.pods.get(container_id)
        if old is not None:     # keep what an earlier row knew (a process row's cgroup uid)
            ref.uid = ref.uid or old.uid
            ref.container = ref.container or old.container
        self.pods[container_id] = ref
        if ref.uid and ref.name:
            self.uid_by_name[(ref.namespace, ref.name)] = ref.uid

    def observe_process(self, container_id: str, pod_uid: str) -> None:
        """container_processes.pod_uid (from the kubepods cgroup)."""
        if not container_id or not pod_uid:
            return
        ref = self.pods.setdefault(container_id, PodRef())
        ref.uid = ref.uid or pod_uid

    def observe(self, rec: OrchestrationRecord) -> None:
        if not rec.ok:
            return
        if rec.action == POD_CREATE and rec.pod_uid:
            self.created[rec.pod_uid] = rec
            self.uid_by_name[(rec.namespace, rec.name)] = rec.pod_uid
        elif rec.action in SESSION_ACTIONS:
            lst = self.sessions.setdefault((rec.namespace, rec.name), [])
            lst.append(rec)
            del lst[:-MAX_SESSIONS_PER_POD]
        elif rec.action in (WORKLOAD_CREATE, WORKLOAD_UPDATE):
            self.workloads[(rec.kind, rec.namespace, rec.name)] = rec

    # -- lookup -----------------------------------------------------------------------------
    def pod_of(self, container_id: str) -> PodRef | None:
        ref = self.pods.get(container_id)
        if ref is None:
            return None
        if not ref.name and ref.uid in self.created:
            c = self.created[ref.uid]
            ref.namespace, ref.name = c.namespace, c.name
        return ref

    def _session(self, pod: PodRef, ts: float) -> tuple[OrchestrationRecord | None, str]:
        best: tuple[OrchestrationRecord | None, str] = (None, "")
        for s in self.sessions.get((pod.namespace, pod.name), []):
            if s.container and pod.container and s.container != pod.container \
                    and s.action != EPHEMERAL:
                continue
            end = max(s.end_ts, s.ts)
            if s.ts - self.slack_s <= ts <= end + self.slack_s:
                how = "during"
            elif end < ts <= end + self.after_s:
                how = "after"
            else:
                continue
            # an open session beats one that ended; among equals the latest start wins
            rank = (how == "during", s.ts)
            if best[0] is None or rank > ((best[1] == "during"), best[0].ts):
                best = (s, how)
        return best

    def _workload_of(self, rec: OrchestrationRecord) -> OrchestrationRecord | None:
        """Follow controlling owners (pod -> ReplicaSet -> Deployment) to the first change a
        non-system requester made."""
        owner, ns = rec.owner, rec.namespace
        for _ in range(3):
            kind, _, name = owner.partition("/")
            w = self.workloads.get((kind, ns, name))
            if w is None:
                return None
            if not is_system_user(w.user, self.trusted_users):
                return w
            owner = w.owner
        return None

    def context(self, container_id: str, ts: float) -> dict[str, Any] | None:
        """Which request put the evidence at `ts` in this container's pod (see module doc)."""
        pod = self.pod_of(container_id)
        if pod is None or not (pod.name or pod.uid):
            return None
        rec, how = self._session(pod, ts)
        if rec is not None:
            return {"record": rec, "how": rec.action, "when": how, "pod": pod}
        uid = pod.uid or self.uid_by_name.get((pod.namespace, pod.name), "")
        created = self.created.get(uid)
        if created is None:
            return None
        if is_system_user(created.user, self.trusted_users):
            w = self._workload_of(created)
            if w is not None:
                return {"record": w, "how": "workload", "when": "", "pod": pod,
                        "created": created}
        return {"record": created, "how": "created", "when": "", "pod": pod}

    # -- output -----------------------------------------------------------------------------
    def finish_alert(self, alert: Any) -> bool:
        """Add the requester to an alert (an alerting.alerts.Alert: detect does not import the
        alerting stage) on a container in a known pod; True when it did."""
        cid = alert.container.id
        if not cid or not self.pods or cid not in self.pods:
            return False
        procs = [e for e in alert.evidence
                 if e.get("side") == "host" and e.get("kind") == "process"]
        nets = [e for e in alert.evidence if e.get("side") == "network"]
        first = procs[0] if procs else (nets[0] if nets else None)
        t = float(first.get("time", alert.time)) if first else alert.time
        ctx = self.context(cid, t)
        if ctx is None:
            return False
        sentence = self.sentence(ctx, first, t)
        rec: OrchestrationRecord = ctx["record"]
        pod: PodRef = ctx["pod"]
        ev = audit_evidence(rec, sentence)
        ev["pod"] = f"{pod.namespace}/{pod.name}"
        if pod.uid:
            ev["pod_uid"] = pod.uid
        ev["join"] = ctx["how"] + (f" ({ctx['when']} the session)" if ctx["when"] else "")
        alert.evidence = sorted(alert.evidence + [ev], key=lambda e: (
            e.get("time", 0.0), e.get("side", ""), e.get("kind", "")))
        alert.details = {**alert.details, "kubernetes": {
            "requester": rec.requester, "user": rec.user, "groups": rec.groups,
            "service_account": rec.service_account, "how": ctx["how"],
            "namespace": pod.namespace, "pod": pod.name, "pod_uid": pod.uid,
            "audit_id": rec.audit_id, "request_time": round(rec.ts, 6),
            "lag_s": round(t - rec.ts, 3), "summary": sentence}}
        verb = {EXEC: "kubectl exec", ATTACH: "kubectl attach", EPHEMERAL: "kubectl debug",
                PORTFORWARD: "kubectl port-forward", "created": "pod created",
                "workload": f"{rec.kind} changed"}.get(ctx["how"], ctx["how"])
        alert.title = f"{alert.title} [{verb} by {rec.requester}]"[:300]
        self.joined += 1
        return True

    @staticmethod
    def sentence(ctx: dict[str, Any], first: dict[str, Any] | None, t: float) -> str:
        rec: OrchestrationRecord = ctx["record"]
        pod: PodRef = ctx["pod"]
        where = f"{pod.namespace}/{pod.name}"
        if ctx["how"] in _VERB_TEXT:
            head = f"{who(rec)} {_VERB_TEXT[ctx['how']]} {where} at {clock(rec.ts)}"
        elif ctx["how"] == "workload":
            did = "created" if rec.action == WORKLOAD_CREATE else "changed"
            head = (f"{who(rec)} {did} {rec.kind} {rec.target} at {clock(rec.ts)}, "
                    f"whose controller made pod {where}")
        else:
            head = f"{who(rec)} created pod {where} at {clock(rec.ts)}"
        if first is None:
            return head
        what = first.get("cmdline") or first.get("summary") or first.get("kind", "")
        lag = t - rec.ts
        verb = "ran" if first.get("side") == "host" else "was seen"
        return f"{head}; {what} {verb} {lag:.1f} s later in that pod"

    # -- state ------------------------------------------------------------------------------
    def prune(self, now: float, keep_s: float, containers: Any = None) -> None:
        """Forget containers no longer in the inventory (`containers`: the ids to keep), and
        sessions and pod creations older than keep_s (a creation is kept while a container of
        its pod is known)."""
        if containers is not None:
            self.pods = {c: p for c, p in self.pods.items() if c in containers}
        live_uids = {p.uid for p in self.pods.values()}
        self.created = {u: r for u, r in self.created.items()
                        if u in live_uids or now - r.ts < keep_s}
        for k in list(self.sessions):
            self.sessions[k] = [s for s in self.sessions[k] if now - s.end_ts < keep_s]
            if not self.sessions[k]:
                del self.sessions[k]

    def dump_state(self) -> dict[str, Any]:
        return {"pods": {c: asdict(p) for c, p in self.pods.items()},
                "created": [r.to_dict() for r in self.created.values()],
                "sessions": [r.to_dict() for lst in self.sessions.values() for r in lst],
                "workloads": [r.to_dict() for r in self.workloads.values()]}

    def load_state(self, st: dict[str, Any]) -> None:
        self.pods = {c: PodRef(**p) for c, p in st.get("pods", {}).items()}
        self.created, self.sessions, self.workloads, self.uid_by_name = {}, {}, {}, {}
        for key in ("created", "sessions", "workloads"):
            for d in st.get(key, []):
                self.observe(OrchestrationRecord.from_dict(d))
        for p in self.pods.values():
            if p.uid and p.name:
                self.uid_by_name[(p.namespace, p.name)] = p.uid
