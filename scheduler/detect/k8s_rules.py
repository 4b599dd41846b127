"""Detections on Kubernetes orchestration records (scheduler.collect.k8s_audit), each with an
ATT&CK technique, in the spirit of Falco's k8saudit rules (the behaviour users know), joined to
nothing: the join to host and network evidence is scheduler.detect.k8s_join.

Rules (names are stable; they are in every alert):

* k8s_pod_churn (T1610 Deploy Container): more than N pod creates (or deletes) by one requester in
  one namespace within T seconds. Controllers (system users) are left out: their churn follows a
  workload spec that has its own requester, and the host side counts churn per image anyway.
* k8s_exec_new_requester (T1609 Container Administration Command): `pods/exec` or `pods/attach`
  by a requester who never did either in the environment's baseline period (the first
  `baseline_s` seconds of audit data this environment saw).
* k8s_privileged_workload (T1611 Escape to Host): a pod or workload created or changed by a
  non-system user with privileged containers, hostNetwork / hostPID / hostIPC, hostPath volumes or
  dangerous added capabilities.
* k8s_ephemeral_container (T1609): `kubectl debug` added an ephemeral container to a running pod.
* k8s_unexpected_image (T1610): an image never seen in the baseline period, or from a registry
  that is not on `allowed_registries` (when that list is set; the daemon passes the host-side
  rule's list, `[detection.misuse] allowed_registries`, so both sides judge images alike).

A "system user" is a Kubernetes component (`system:*` user names, e.g. `system:kube-scheduler`,
`system:node:<n>`, but not `system:anonymous`) or a service account of `kube-system`; service accounts of other namespaces
(CI runners, operators) are requesters like any person. `trusted_users` adds exceptions.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scheduler.collect.k8s_audit import (ATTACH, EPHEMERAL, EXEC, POD_CREATE, POD_DELETE,
                                         WORKLOAD_CREATE, WORKLOAD_UPDATE, OrchestrationRecord)
from scheduler.detect.attack import techniques
from scheduler.detect.candidate import Candidate, ContainerRef
from scheduler.detect.misuse_patterns import registry_of

log = logging.getLogger(__name__)

RULE_K8S_CHURN = "k8s_pod_churn"
RULE_K8S_EXEC = "k8s_exec_new_requester"
RULE_K8S_PRIVILEGED = "k8s_privileged_workload"
RULE_K8S_EPHEMERAL = "k8s_ephemeral_container"
RULE_K8S_IMAGE = "k8s_unexpected_image"
K8S_RULES = (RULE_K8S_CHURN, RULE_K8S_EXEC, RULE_K8S_PRIVILEGED, RULE_K8S_EPHEMERAL,
             RULE_K8S_IMAGE)

# ATT&CK mappings (scheduler.alerting.alerts.MITRE carries them into every alert).
K8S_MITRE: dict[str, list[dict[str, str]]] = {
    RULE_K8S_CHURN: techniques("T1610"),
    RULE_K8S_EXEC: techniques("T1609"),
    RULE_K8S_PRIVILEGED: techniques("T1611"),
    RULE_K8S_EPHEMERAL: techniques("T1609"),
    RULE_K8S_IMAGE: techniques("T1610"),
}

# Added capabilities that break the container boundary (NET_RAW etc. are in the runtimes'
# default set already; adding them changes nothing).
DANGEROUS_CAPABILITIES = frozenset({"ALL", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO",
                                    "DAC_READ_SEARCH", "NET_ADMIN", "BPF", "PERFMON",
                                    "SYS_BOOT", "MAC_ADMIN", "SYSLOG"})


@dataclass
class K8sRuleSettings:
    """Thresholds; the `[kubernetes]` table of stowaway.toml has the same names."""

    churn_n: int = 10
    churn_t_s: float = 60.0
    baseline_s: float = 7 * 86400.0
    allowed_registries: list[str] = field(default_factory=list)
    trusted_users: list[str] = field(default_factory=list)


def is_system_user(user: str, trusted: Any = ()) -> bool:
    """Kubernetes components and kube-system service accounts (see module docstring)."""
    if user in trusted:
        return True
    if user == "system:anonymous":     # an unauthenticated request is anything but a component
        return False
    if user.startswith("system:serviceaccount:"):
        return user.startswith("system:serviceaccount:kube-system:")
    return user.startswith("system:")


def image_registry(image: str) -> str:
    """The registry an image pulls from, by the same rule as the host-side unexpected-image rule
    (misuse_patterns.registry_of), so one allow-list means the same on both sides."""
    return registry_of(image)


def registry_allowed(image: str, allowed: list[str]) -> bool:
    """True when no allow-list is set or the image's registry is on it."""
    return not allowed or image_registry(image) in allowed


def _pod_ref(rec: OrchestrationRecord) -> ContainerRef:
    """K8s alerts are about a pod or a workload, not a host container: the alert's container
    block names it (id "" like the image-level churn alert)."""
    what = "pod" if rec.kind == "Pod" else rec.kind.lower()
    return ContainerRef(id="", name=f"({what}) {rec.target}", image=(rec.images or [""])[0],
                        runtime="kubernetes")


def audit_evidence(rec: OrchestrationRecord, summary: str) -> dict[str, Any]:
    """The audit event as alert evidence (side "orchestration")."""
    ev: dict[str, Any] = {
        "side": "orchestration", "kind": f"k8s_{rec.action}", "time": round(rec.ts, 6),
        "end": round(rec.end_ts, 6), "audit_id": rec.audit_id, "verb": rec.verb,
        "user": rec.user, "groups": rec.groups, "user_agent": rec.user_agent,
        "source_ips": rec.source_ips, "namespace": rec.namespace, "name": rec.name,
        "resource": rec.resource + (f"/{rec.subresource}" if rec.subresource else ""),
        "code": rec.code, "summary": summary[:200]}
    for key, val in (("impersonated_user", rec.impersonated_user),
                     ("service_account", rec.service_account), ("pod_uid", rec.pod_uid),
                     ("images", rec.images), ("command", rec.command),
                     ("container", rec.container)):
        if val:
            ev[key] = val
    return ev


class K8sRules:
    """All Kubernetes rules over a stream of records (stateful: churn windows and baselines)."""

    def __init__(self, settings: Any = None, default_host: str = "kubernetes") -> None:
        self.s = settings if settings is not None else K8sRuleSettings()
        self.default_host = default_host
        self.baseline_start: float | None = None
        self.execers: set[str] = set()         # requesters who exec'd / attached in the baseline
        self.known_images: set[str] = set()
        self._churn: dict[tuple[str, str, str, str], deque] = {}

    # -- baseline ---------------------------------------------------------------------------
    def in_baseline(self, ts: float) -> bool:
        if self.baseline_start is None:
            self.baseline_start = ts
        return ts < self.baseline_start + self.s.baseline_s

    # -- the rules --------------------------------------------------------------------------
    def observe(self, rec: OrchestrationRecord) -> list[Candidate]:
        """Candidates for one record (requests the API server refused raise nothing)."""
        if not rec.ok:
            return []
        learning = self.in_baseline(rec.ts)
        out: list[Candidate] = []
        for cand in (self._churn_rule(rec), self._exec_rule(rec, learning),
                     self._privileged_rule(rec), self._ephemeral_rule(rec),
                     *self._image_rule(rec, learning)):
            if cand is not None:
                out.append(cand)
        return out

    def _host(self, rec: OrchestrationRecord) -> str:
        return rec.cluster or self.default_host

    def _churn_rule(self, rec: OrchestrationRecord) -> Candidate | None:
        if rec.action not in (POD_CREATE, POD_DELETE) or \
                is_system_user(rec.user, self.s.trusted_users):
            return None
        kind = "create" if rec.action == POD_CREATE else "delete"
        key = (self._host(rec), rec.namespace, rec.requester, kind)
        q = self._churn.setdefault(key, deque())
        q.append((rec.ts, rec.name))
        while q and rec.ts - q[0][0] > self.s.churn_t_s:
            q.popleft()
        n = self.s.churn_n
        # Like the host churn rule: fire at n+1, 2n+1, ... (merged and suppressed downstream).
        if len(q) <= n or (len(q) - n - 1) % n:
            return None
        pods = [name for _, name in q]
        summary = (f"{len(q)} pod {kind}s by {rec.requester} in namespace {rec.namespace} "
                   f"in {self.s.churn_t_s:g}s (>{n})")
        ev = audit_evidence(rec, summary)
        ev.update({"count": len(q), "window_s": self.s.churn_t_s, "threshold": n,
                   "pods": pods[-20:]})
        ref = ContainerRef(id="", name=f"(namespace) {rec.namespace}",
                           image=(rec.images or [""])[0], runtime="kubernetes")
        return Candidate(
            rule=RULE_K8S_CHURN, ts=rec.ts, host=self._host(rec), container=ref,
            severity="medium",
            title=f"Pod churn: {len(q)} pod {kind}s by {rec.requester} in namespace "
                  f"{rec.namespace} within {self.s.churn_t_s:g}s",
            evidence=[ev], signature=f"{rec.namespace}|{rec.requester}",
            details={"kubernetes": {"requester": rec.requester, "namespace": rec.namespace,
                                    "count": len(q), "action": kind, "n": n,
                                    "t_s": self.s.churn_t_s}})

    def _exec_rule(self, rec: OrchestrationRecord, learning: bool) -> Candidate | None:
        if rec.action not in (EXEC, ATTACH):
            return None
        if learning:
            self.execers.add(rec.user)
            return None
        if rec.user in self.execers:
            return None
        verb = "exec" if rec.action == EXEC else "attach"
        into = "into" if rec.action == EXEC else "to"
        cmd = " ".join(rec.command)
        summary = (f"{rec.requester} ran kubectl {verb} {into} {rec.target}"
                   + (f": {cmd}" if cmd else "") + " (never in the baseline period)")
        return Candidate(
            rule=RULE_K8S_EXEC, ts=rec.ts, host=self._host(rec), container=_pod_ref(rec),
            severity="medium",
            title=f"kubectl {verb} {into} {rec.target} by {rec.requester}, who never did so in "
                  f"the baseline period",
            evidence=[audit_evidence(rec, summary)],
            signature=f"{rec.user}|{rec.target}",
            details={"kubernetes": {"requester": rec.requester, "namespace": rec.namespace,
                                    "pod": rec.name, "command": rec.command}})

    def _privileged_rule(self, rec: OrchestrationRecord) -> Candidate | None:
        if rec.action not in (POD_CREATE, WORKLOAD_CREATE, WORKLOAD_UPDATE, EPHEMERAL) or \
                is_system_user(rec.user, self.s.trusted_users):
            return None
        flags = rec.risky_settings()
        caps = [c for c in rec.capabilities if c.removeprefix("CAP_") in DANGEROUS_CAPABILITIES]
        flags += [f"cap:{c}" for c in caps]
        if not flags:
            return None
        did = "created" if rec.action in (POD_CREATE, WORKLOAD_CREATE) else "changed"
        summary = f"{rec.kind} {rec.target} {did} by {rec.requester}: {', '.join(flags)}"
        return Candidate(
            rule=RULE_K8S_PRIVILEGED, ts=rec.ts, host=self._host(rec), container=_pod_ref(rec),
            severity="high",
            title=f"{rec.kind} {rec.target} {did} by {rec.requester} with "
                  f"{', '.join(flags)}"[:200],
            evidence=[audit_evidence(rec, summary)],
            signature=f"{rec.kind}:{rec.target}|{','.join(flags)}",
            details={"kubernetes": {"requester": rec.requester, "kind": rec.kind,
                                    "namespace": rec.namespace, "name": rec.name,
                                    "flags": flags, "images": rec.images}})

    def _ephemeral_rule(self, rec: OrchestrationRecord) -> Candidate | None:
        if rec.action != EPHEMERAL:
            return None
        image = ", ".join(rec.images) or "an image"
        summary = f"{rec.requester} added an ephemeral container ({image}) to {rec.target}"
        return Candidate(
            rule=RULE_K8S_EPHEMERAL, ts=rec.ts, host=self._host(rec), container=_pod_ref(rec),
            severity="medium",
            title=f"Ephemeral debug container ({image}) added to {rec.target} by "
                  f"{rec.requester}",
            evidence=[audit_evidence(rec, summary)], signature=f"{rec.target}|{image}",
            details={"kubernetes": {"requester": rec.requester, "namespace": rec.namespace,
                                    "pod": rec.name, "images": rec.images}})

    def _image_rule(self, rec: OrchestrationRecord, learning: bool) -> list[Candidate]:
        if rec.action not in (POD_CREATE, WORKLOAD_CREATE, WORKLOAD_UPDATE, EPHEMERAL):
            return []
        out = []
        for image in rec.images:
            reasons = []
            if not learning and image not in self.known_images:
                reasons.append("never seen in this environment")
            if not registry_allowed(image, self.s.allowed_registries):
                reasons.append(f"registry {image_registry(image)} not on the allow-list")
            self.known_images.add(image)
            if not reasons:
                continue
            summary = f"{image} in {rec.kind} {rec.target} by {rec.requester}: " + \
                "; ".join(reasons)
            ev = audit_evidence(rec, summary)
            ev["image"] = image
            out.append(Candidate(
                rule=RULE_K8S_IMAGE, ts=rec.ts, host=self._host(rec), container=_pod_ref(rec),
                severity="medium" if len(reasons) > 1 or "registry" in reasons[0] else "low",
                title=f"Unexpected image {image} ({'; '.join(reasons)}) in {rec.kind} "
                      f"{rec.target} by {rec.requester}"[:200],
                evidence=[ev], signature=f"image:{image}",
                details={"kubernetes": {"requester": rec.requester, "image": image,
                                        "registry": image_registry(image),
                                        "reasons": reasons}}))
        return out

    # -- housekeeping -----------------------------------------------------------------------
    def prune(self, now: float) -> None:
        for key in list(self._churn):
            q = self._churn[key]
            while q and now - q[0][0] > self.s.churn_t_s:
                q.popleft()
            if not q:
                del self._churn[key]

    def dump_state(self) -> dict[str, Any]:
        return {"baseline_start": self.baseline_start, "execers": sorted(self.execers),
                "known_images": sorted(self.known_images),
                "churn": [[list(k), [list(x) for x in q]] for k, q in self._churn.items()]}

    def load_state(self, st: dict[str, Any]) -> None:
        self.baseline_start = st.get("baseline_start")
        self.execers = set(st.get("execers", []))
        self.known_images = set(st.get("known_images", []))
        self._churn = {tuple(k): deque(tuple(x) for x in q) for k, q in st.get("churn", [])}
