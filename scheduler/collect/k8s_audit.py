"""Kubernetes API server audit events (audit.k8s.io/v1) -> normalised orchestration records.

Why a record of our own rather than the raw Event: the rules and the join ask the same few
questions of every event (who asked, for which pod, which images, which risky settings), and the
answers sit in different places per resource (a Pod's spec, a Deployment's template, a CronJob's
job template, an exec's request URI). `parse_event` answers them once, here; everything
downstream reads an `OrchestrationRecord`.

Fields of the published schema read here (staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go;
docs/kubernetes.md lists them with the policy level each needs):

* Event: `kind`, `apiVersion`, `level`, `auditID`, `stage`, `requestURI`, `verb`, `user`
  (`username`, `uid`, `groups`), `impersonatedUser.username`, `sourceIPs`, `userAgent`, `objectRef`
  (`resource`, `namespace`, `name`, `uid`, `subresource`), `responseStatus.code`,
  `requestObject` / `responseObject`, `requestReceivedTimestamp`, `stageTimestamp`;
* EventList: `kind`, `apiVersion`, `items` (what the webhook backend POSTs).
* Pod objects (`v1` Pod, in responseObject, else requestObject): `kind`, `metadata.uid`,
  `metadata.name`, `metadata.ownerReferences[]` (`kind`, `name`, `controller`),
  `spec.containers[]` / `initContainers[]` / `ephemeralContainers[]` (`name`, `image`,
  `securityContext.privileged`, `securityContext.capabilities.add`), `spec.hostNetwork`,
  `spec.hostPID`, `spec.hostIPC`, `spec.volumes[].hostPath.path`; workloads the same pod spec at
  `spec.template.spec` (CronJob: `spec.jobTemplate.spec.template.spec`).

Only `ResponseComplete` events count: a request has up to three stages (RequestReceived,
ResponseStarted for long-running ones such as exec, ResponseComplete) and only the last says the
request was answered. Each request is one record, keyed by its `auditID`.
"""
from __future__ import annotations

import datetime as _dt
import gzip
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

from scheduler.collect.tailer import FileTailer, TailBatch

log = logging.getLogger(__name__)

STAGE_COMPLETE = "ResponseComplete"
API_VERSION = "audit.k8s.io/v1"

# record.action values
POD_CREATE, POD_DELETE = "pod_create", "pod_delete"
EXEC, ATTACH, PORTFORWARD = "exec", "attach", "portforward"
EPHEMERAL = "ephemeral_container"
WORKLOAD_CREATE, WORKLOAD_UPDATE = "workload_create", "workload_update"
ACTIONS = (POD_CREATE, POD_DELETE, EXEC, ATTACH, PORTFORWARD, EPHEMERAL, WORKLOAD_CREATE,
           WORKLOAD_UPDATE)

_SUBRESOURCE_ACTION = {"exec": EXEC, "attach": ATTACH, "portforward": PORTFORWARD,
                       "ephemeralcontainers": EPHEMERAL}
# objectRef.resource -> Kind, for the workloads whose pod template we read.
WORKLOAD_RESOURCES = {"deployments": "Deployment", "daemonsets": "DaemonSet", "jobs": "Job",
                      "cronjobs": "CronJob", "statefulsets": "StatefulSet",
                      "replicasets": "ReplicaSet"}
_CREATE_VERBS = frozenset({"create"})
_UPDATE_VERBS = frozenset({"update", "patch"})

MAX_WARNINGS = 20


class AuditEventError(ValueError):
    """An audit event that does not follow the schema (the message names the field)."""


@dataclass(slots=True)
class OrchestrationRecord:
    """One answered Kubernetes API request that made, changed or entered a pod.

    `ts` is when the request reached the API server (requestReceivedTimestamp) and `end_ts` when it
    was answered (stageTimestamp of ResponseComplete): for an exec or attach that is the end of the
    session, so [ts, end_ts] is the time the requester was inside the pod.
    """

    ts: float
    action: str                    # one of ACTIONS
    audit_id: str
    verb: str
    user: str                      # user.username: the requester
    end_ts: float = 0.0
    groups: list[str] = field(default_factory=list)
    user_uid: str = ""
    impersonated_user: str = ""
    service_account: str = ""      # "namespace/name" when the requester is a service account
    user_agent: str = ""
    source_ips: list[str] = field(default_factory=list)
    namespace: str = ""
    name: str = ""                 # objectRef.name: the pod or workload
    resource: str = ""             # objectRef.resource
    subresource: str = ""
    kind: str = "Pod"              # Pod or the workload's Kind
    pod_uid: str = ""              # from the response object (or objectRef.uid)
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    host_paths: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)   # securityContext.capabilities.add
    command: list[str] = field(default_factory=list)        # exec: the command= parameters
    container: str = ""            # exec/attach: the container= parameter
    owner: str = ""                # metadata.ownerReferences' controller: "ReplicaSet/web-7f9c"
    code: int = 0                  # responseStatus.code
    request_uri: str = ""
    cluster: str = ""              # set by the source (config kubernetes.cluster)

    @property
    def requester(self) -> str:
        """Who to name: the user, and who they acted as when impersonating."""
        return f"{self.user} (as {self.impersonated_user})" if self.impersonated_user else self.user

    @property
    def target(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def ok(self) -> bool:
        """The API server did what was asked (2xx, or 101 for an upgraded exec stream)."""
        return self.code == 0 or 100 <= self.code < 400

    def risky_settings(self) -> list[str]:
        """The pod spec settings that hand a container the host, in a fixed order."""
        out = []
        if self.privileged:
            out.append("privileged")
        if self.host_network:
            out.append("hostNetwork")
        if self.host_pid:
            out.append("hostPID")
        if self.host_ipc:
            out.append("hostIPC")
        out.extend(f"hostPath:{p}" for p in self.host_paths)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OrchestrationRecord":
        return cls(**d)


@dataclass
class AuditStats:
    """What the audit source read; everything that was not turned into a record is counted."""

    lines: int = 0
    events: int = 0
    records: int = 0
    other_stages: int = 0       # RequestReceived / ResponseStarted / Panic: not counted
    not_relevant: int = 0       # answered requests the rules do not read (secrets, lists, ...)
    malformed: int = 0          # bad JSON or an event that breaks the schema
    duplicates: int = 0         # an auditID seen before
    unauthorized: int = 0       # webhook: wrong or missing bearer token
    batches: int = 0            # webhook: EventList POSTs accepted

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def parse_time(value: Any, where: str) -> float:
    """Epoch seconds from a metav1.MicroTime (RFC 3339, microseconds, 'Z')."""
    if not isinstance(value, str) or not value:
        raise AuditEventError(f"{where}: missing or not a timestamp string")
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AuditEventError(f"{where}: {value!r} is not RFC 3339 ({exc})") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def format_time(ts: float) -> str:
    """metav1.MicroTime text for epoch seconds (the generator's inverse of parse_time)."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_relevant(ev: dict[str, Any]) -> bool:
    """Cheap pre-filter on objectRef: pods and their subresources, and the workloads."""
    ref = ev.get("objectRef")
    if not isinstance(ref, dict):
        return False
    res, sub = ref.get("resource", ""), ref.get("subresource", "")
    verb = ev.get("verb", "")
    if res == "pods":
        if sub:
            return sub in _SUBRESOURCE_ACTION
        return verb in _CREATE_VERBS or verb == "delete"
    if res in WORKLOAD_RESOURCES and not sub:
        return verb in _CREATE_VERBS or verb in _UPDATE_VERBS
    return False


def _obj(ev: dict[str, Any], key: str) -> dict[str, Any]:
    v = ev.get(key)
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    """A JSON array, or [] for anything else (a hostile or broken event must not raise)."""
    return v if isinstance(v, list) else []


def _pod_spec(obj: dict[str, Any], resource: str) -> dict[str, Any]:
    """The pod spec inside a Pod or a workload object ({} when absent)."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if resource == "pods":
        return spec
    if resource == "cronjobs":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    tmpl = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    inner = tmpl.get("spec")
    return inner if isinstance(inner, dict) else {}


def _containers(spec: dict[str, Any], keys: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for k in keys:
        for c in _list(spec.get(k)):
            if isinstance(c, dict):
                out.append(c)
    return out


def _fill_from_spec(rec: OrchestrationRecord, spec: dict[str, Any], ephemeral_only: bool) -> None:
    keys = ("ephemeralContainers",) if ephemeral_only else \
        ("initContainers", "containers", "ephemeralContainers")
    conts = _containers(spec, keys)
    if ephemeral_only and conts:
        conts = conts[-1:]      # kubectl debug appends one; the last is the new one
    for c in conts:
        img = c.get("image")
        if isinstance(img, str) and img and img not in rec.images:
            rec.images.append(img)
        if isinstance(c.get("name"), str):
            rec.containers.append(c["name"])
        sc = c.get("securityContext") if isinstance(c.get("securityContext"), dict) else {}
        if sc.get("privileged") is True:
            rec.privileged = True
        caps = sc.get("capabilities") if isinstance(sc.get("capabilities"), dict) else {}
        for cap in _list(caps.get("add")):
            if isinstance(cap, str) and cap.upper() not in rec.capabilities:
                rec.capabilities.append(cap.upper())
    if ephemeral_only:
        return
    rec.host_network = spec.get("hostNetwork") is True
    rec.host_pid = spec.get("hostPID") is True
    rec.host_ipc = spec.get("hostIPC") is True
    for v in _list(spec.get("volumes")):
        hp = v.get("hostPath") if isinstance(v, dict) else None
        if isinstance(hp, dict) and isinstance(hp.get("path"), str):
            rec.host_paths.append(hp["path"])


def _action(verb: str, resource: str, sub: str) -> str:
    if resource == "pods":
        if sub:
            return _SUBRESOURCE_ACTION.get(sub, "")
        return POD_CREATE if verb in _CREATE_VERBS else POD_DELETE if verb == "delete" else ""
    if resource in WORKLOAD_RESOURCES and not sub:
        return WORKLOAD_CREATE if verb in _CREATE_VERBS else \
            WORKLOAD_UPDATE if verb in _UPDATE_VERBS else ""
    return ""


def _controller_owner(meta: dict[str, Any]) -> str:
    """"Kind/name" of the object's controlling owner (a pod's ReplicaSet or Job), or ""."""
    for ref in _list(meta.get("ownerReferences")):
        if isinstance(ref, dict) and ref.get("controller") is True:
            return f"{ref.get('kind', '')}/{ref.get('name', '')}"
    return ""


def _service_account(username: str) -> str:
    parts = username.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return f"{parts[2]}/{parts[3]}"
    return ""


def parse_event(ev: Any, cluster: str = "") -> OrchestrationRecord | None:
    """One audit Event -> a record; None for other stages and requests the rules do not read.

    Raises AuditEventError naming the field when the event breaks the schema."""
    if not isinstance(ev, dict):
        raise AuditEventError("event: not a JSON object")
    if ev.get("kind", "Event") != "Event":
        raise AuditEventError(f"kind: {ev.get('kind')!r}, expected Event")
    audit_id = ev.get("auditID")
    if not isinstance(audit_id, str) or not audit_id:
        raise AuditEventError("auditID: missing")
    stage = ev.get("stage")
    if not isinstance(stage, str):
        raise AuditEventError(f"stage: missing (auditID {audit_id})")
    if stage != STAGE_COMPLETE or not is_relevant(ev):
        return None
    user = ev.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("username", ""), str):
        raise AuditEventError(f"user: missing (auditID {audit_id})")
    ref = _obj(ev, "objectRef")
    verb = str(ev.get("verb", ""))
    resource, sub = str(ref.get("resource", "")), str(ref.get("subresource", ""))
    ts = parse_time(ev.get("requestReceivedTimestamp"),
                    f"requestReceivedTimestamp (auditID {audit_id})")
    end = ev.get("stageTimestamp")
    end_ts = parse_time(end, f"stageTimestamp (auditID {audit_id})") if end else ts
    status = _obj(ev, "responseStatus")
    code = status.get("code", 0)
    imp = _obj(ev, "impersonatedUser")
    username = user.get("username") or ""
    rec = OrchestrationRecord(
        ts=ts, end_ts=end_ts, action=_action(verb, resource, sub), audit_id=audit_id, verb=verb,
        user=username, groups=[g for g in _list(user.get("groups")) if isinstance(g, str)],
        user_uid=str(user.get("uid", "") or ""),
        impersonated_user=str(imp.get("username", "") or ""),
        service_account=_service_account(str(imp.get("username") or username)),
        user_agent=str(ev.get("userAgent", "") or ""),
        source_ips=[s for s in _list(ev.get("sourceIPs")) if isinstance(s, str)],
        namespace=str(ref.get("namespace", "") or ""), name=str(ref.get("name", "") or ""),
        resource=resource, subresource=sub, kind=WORKLOAD_RESOURCES.get(resource, "Pod"),
        pod_uid=str(ref.get("uid", "") or "") if resource == "pods" else "",
        code=code if isinstance(code, int) else 0, request_uri=str(ev.get("requestURI", "") or ""),
        cluster=cluster)
    resp, req = _obj(ev, "responseObject"), _obj(ev, "requestObject")
    # The response is the object as stored (defaults applied, uid assigned); the request is
    # what the client sent. Prefer the response; a Status response (a delete) has no spec.
    obj = resp if resp.get("kind") not in (None, "Status") else req
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    if resource == "pods" and isinstance(meta.get("uid"), str) and meta.get("uid"):
        rec.pod_uid = meta["uid"]
    if not rec.name and isinstance(meta.get("name"), str):
        rec.name = meta["name"]           # generateName: the name is only in the response
    rec.owner = _controller_owner(meta)
    if rec.action in (EXEC, ATTACH, PORTFORWARD):
        q = parse_qs(urlsplit(rec.request_uri).query)
        rec.command = q.get("command", [])
        rec.container = (q.get("container") or [""])[0]
    elif rec.action != POD_DELETE:
        _fill_from_spec(rec, _pod_spec(obj, resource), ephemeral_only=rec.action == EPHEMERAL)
    return rec


def events_in(doc: Any) -> list[Any]:
    """The Events of a decoded document: an EventList's items, or a single Event."""
    if isinstance(doc, dict) and doc.get("kind") == "EventList":
        items = doc.get("items")
        if not isinstance(items, list):
            raise AuditEventError("items: missing or not a list in EventList")
        return items
    if isinstance(doc, dict):
        return [doc]
    raise AuditEventError("not an Event or EventList object")


class AuditLineParser:
    """JSON lines of the log backend -> raw Events, counting and skipping what is malformed.

    Raw events (dicts) rather than records come out, so the spool can keep exactly what the API
    server wrote; `parse_event` runs when the spool is consumed."""

    def __init__(self, path: str, stats: AuditStats | None = None) -> None:
        self.path = path
        self.stats = stats if stats is not None else AuditStats()

    def _warn(self, lineno: int, msg: str) -> None:
        self.stats.malformed += 1
        if self.stats.malformed <= MAX_WARNINGS:
            log.warning("%s:%d: %s (line skipped)", self.path, lineno, msg)

    def parse_line(self, text: str, lineno: int) -> list[dict[str, Any]]:
        text = text.strip()
        if not text:
            return []
        self.stats.lines += 1
        try:
            doc = json.loads(text)
            events = events_in(doc)
        except (ValueError, RecursionError) as exc:   # JSONDecodeError, AuditEventError, nesting
            self._warn(lineno, f"not an audit event: {type(exc).__name__}: {exc}"[:300])
            return []
        out = []
        for ev in events:
            if not isinstance(ev, dict) or not isinstance(ev.get("auditID"), str) \
                    or not isinstance(ev.get("stage"), str):
                self._warn(lineno, "event without auditID or stage")
                continue
            self.stats.events += 1
            if ev["stage"] != STAGE_COMPLETE:
                self.stats.other_stages += 1
                continue
            if not is_relevant(ev):
                self.stats.not_relevant += 1
                continue
            out.append(ev)
        return out


class AuditTailer(FileTailer):
    """The log backend's file (`--audit-log-path`), followed with the checkpointed tailer
    (rotation by the API server's own `--audit-log-maxsize` renames is followed like Zeek's).

    batch.items are raw answered, relevant Events."""

    def __init__(self, path: str, store: Any, source: str = "k8s:audit",
                 stats: AuditStats | None = None, **kwargs: Any) -> None:
        self.stats = stats if stats is not None else AuditStats()
        self._parsers: dict[str, AuditLineParser] = {}
        super().__init__(path, store, source=source, **kwargs)

    def _parse(self, batch: TailBatch) -> None:
        for line in batch.lines:
            parser = self._parsers.get(line.path)
            if parser is None:
                parser = self._parsers[line.path] = AuditLineParser(line.path, self.stats)
            batch.items.extend(self._parse_one(line, parser.parse_line) or ())


def records_from_events(events: Iterable[Any], stats: AuditStats | None = None,
                        cluster: str = "", where: str = "audit") -> Iterator[OrchestrationRecord]:
    """parse_event over events, counting (and naming) the ones that break the schema."""
    stats = stats if stats is not None else AuditStats()
    for ev in events:
        try:
            rec = parse_event(ev, cluster)
        except Exception as exc:  # noqa: BLE001 - a broken event costs that event, not the batch
            stats.malformed += 1
            if stats.malformed <= MAX_WARNINGS:
                log.warning("%s: %s (event skipped)", where, exc)
            continue
        if rec is None or not rec.action:
            stats.not_relevant += 1
            continue
        stats.records += 1
        yield rec


AUDIT_SUBDIR = "k8s"
AUDIT_FILE = "audit.log"


def recording_audit_log(rec_dir: str | Path) -> Path | None:
    """A recording's audit log (`k8s/audit.log`, plain or .gz), or None (docs/recordings.md)."""
    d = Path(rec_dir) / AUDIT_SUBDIR
    for p in (d / AUDIT_FILE, d / (AUDIT_FILE + ".gz")):
        if p.exists():
            return p
    return None


def recording_records(rec_dir: str | Path, stats: AuditStats | None = None,
                      cluster: str = "") -> list[OrchestrationRecord]:
    """All records of a recording's audit log in request time order, each auditID once."""
    path = recording_audit_log(rec_dir)
    if path is None:
        return []
    stats = stats if stats is not None else AuditStats()
    parser = AuditLineParser(str(path), stats)
    opener = gzip.open if path.name.endswith(".gz") else open
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            for ev in parser.parse_line(line, lineno):
                if ev["auditID"] in seen:
                    stats.duplicates += 1
                    continue
                seen.add(ev["auditID"])
                events.append(ev)
    recs = list(records_from_events(events, stats, cluster, where=str(path)))
    recs.sort(key=lambda r: (r.ts, r.audit_id))
    return recs
