"""Alert schema, merging and suppression.

An alert is one JSON line (schema in docs/alerts.md). Rules hand in `Candidate`s (one piece of
evidence each, or a few); the `AlertAggregator` turns them into alerts:

* merge: candidates for the same (host, container, rule, signature) whose time lies within
  `merge_s` of the open alert's first evidence join that alert. This is how the host side (the
  `wget` that osquery saw) and the network side (the DNS + HTTP that Zeek saw) of one action end up
  side by side in one alert.
* emit: an open alert is written once data time (the newest record seen) has moved `merge_s` past
  its first evidence, or when the caller forces a flush (end of a replay, daemon wall clock).
* suppress: after an alert, the same key stays quiet for `suppression_s`; suppressed candidates are
  counted and the next alert for the key says how many there were (nothing vanishes silently).

Ids are a hash of (rule, host, container, signature, first-evidence time) so the same input replayed
gives the same ids; sinks use them to drop duplicates after a crash and restart.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

# The rule names and the candidate record are detect's output (re-exported: alerts carry them).
from scheduler.detect.attack import techniques
from scheduler.detect.k8s_rules import K8S_MITRE
from scheduler.detect.candidate import (RULE_ANOMALY, RULE_CHURN, RULE_LOCATION, RULE_RISKY, RULES,
                                        UNKNOWN_CONTAINER_NAME, Candidate, ContainerRef)
from scheduler.detect.misuse import MISUSE_MITRE

SCHEMA_VERSION = 1

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}

# MITRE ATT&CK mappings. Only T1614 is a direct hit. Churn maps to Deploy Container because many
# short-lived containers of one image is what running tooling in throw-away containers looks like;
# risky configuration is the precondition of Escape to Host. An anomaly says "different from the
# baseline", not which technique, so it carries no mapping rather than a guessed one.
MITRE: dict[str, list[dict[str, str]]] = {
    RULE_LOCATION: techniques("T1614"),
    RULE_CHURN: techniques("T1610"),
    RULE_RISKY: techniques("T1611"),
    RULE_ANOMALY: [],
}
MITRE.update(K8S_MITRE)     # k8s_pod_churn, k8s_exec_new_requester, ... (detect/k8s_rules.py)
# The named misuse rules (reverse shell, tunnels, beaconing, ...) carry their own mapping.
MITRE.update(MISUSE_MITRE)


def iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def alert_id(rule: str, host: str, container_key: str, signature: str, first_ts: float) -> str:
    """Stable id: same input, same id (first-evidence time kept to the millisecond)."""
    raw = f"{rule}|{host}|{container_key}|{signature}|{first_ts:.3f}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


MAX_EVIDENCE = 60


@dataclass
class Alert:
    id: str
    time: float
    rule: str
    severity: str
    title: str
    host: str
    container: ContainerRef
    evidence: list[dict[str, Any]]
    environment: str = "default"
    score: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    suppressed_before: int = 0
    evidence_dropped: int = 0
    last_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-line form (ECS-style names where natural, see docs/alerts.md)."""
        sides = sorted({e.get("side", "") for e in self.evidence} - {""})
        out: dict[str, Any] = {
            "@timestamp": iso(self.time),
            "id": self.id,
            "time": round(self.time, 6),
            "rule": self.rule,
            "severity": self.severity,
            "title": self.title,
            "host": {"name": self.host},
            "container": {"id": self.container.id, "name": self.container.name,
                          "image": self.container.image, "runtime": self.container.runtime},
            "evidence": self.evidence,
            "mitre": MITRE.get(self.rule, []),
            "event": {"kind": "alert", "module": "stowaway", "dataset": f"stowaway.{self.rule}",
                      "severity": SEVERITY_RANK.get(self.severity, 0),
                      "start": iso(self.time), "end": iso(self.last_time or self.time),
                      "evidence_sides": sides},
            "labels": {"environment": self.environment},
            "stowaway": {"schema": SCHEMA_VERSION, "suppressed_before": self.suppressed_before,
                         "evidence_dropped": self.evidence_dropped},
        }
        if self.container.address:
            out["container"]["address"] = self.container.address
        if self.score is not None:
            out["score"] = round(self.score, 6)
            out["threshold"] = None if self.threshold is None else round(self.threshold, 6)
        if self.details:
            details = dict(self.details)
            window = details.pop("window", None)
            if window:       # an anomaly's feature window: its own field, next to the alert time
                out["window"] = {"start": iso(window["start"]), "end": iso(window["end"]),
                                 "start_ts": window["start"], "end_ts": window["end"]}
            if details:
                out["details"] = details
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False, separators=(",", ":"), default=str)


def alert_from_dict(d: dict[str, Any]) -> Alert:
    """Inverse of `to_dict` (enough for `stowaway alerts` and the report)."""
    c = d.get("container") or {}
    ev = d.get("event") or {}
    end = ev.get("end")
    st = d.get("stowaway") or {}
    return Alert(
        id=d["id"], time=float(d["time"]), rule=d["rule"], severity=d.get("severity", ""),
        title=d.get("title", ""), host=(d.get("host") or {}).get("name", ""),
        container=ContainerRef(id=c.get("id", ""), name=c.get("name", ""),
                               image=c.get("image", ""), runtime=c.get("runtime", ""),
                               address=c.get("address", "")),
        evidence=d.get("evidence", []), environment=(d.get("labels") or {}).get("environment", ""),
        score=d.get("score"), threshold=d.get("threshold"), details=d.get("details", {}),
        suppressed_before=int(st.get("suppressed_before", 0)),
        evidence_dropped=int(st.get("evidence_dropped", 0)),
        last_time=_parse_iso(end) if end else None,
    )


def _parse_iso(s: str) -> float:
    return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@dataclass
class _Open:
    cand: Candidate
    first_ts: float
    last_ts: float
    evidence: list[dict[str, Any]]
    dropped: int = 0
    opened_wall: float = 0.0


def _evidence_key(e: dict[str, Any]) -> str:
    return json.dumps(e, sort_keys=True, default=str)


class AlertAggregator:
    """Merge candidates into alerts and suppress repeats; its state survives restarts via
    `dump_state`/`load_state` (plain JSON), so a resumed replay yields the same alerts."""

    def __init__(self, merge_s: float = 10.0, suppression_s: float = 300.0,
                 environment: str = "default", lag_s: float = 0.0) -> None:
        self.merge_s = merge_s
        # How late (data time) a candidate may come and still join its alert: 0 for a replay,
        # which hands candidates over in time order; the daemon's `daemon.lag_s`, because it
        # reads its sources one after another while they grow, so one poll can take a log
        # further in time than another's poll of the same cycle (the same tolerance its windows
        # have). An alert is emitted once data time is merge_s + lag_s past its first evidence.
        self.lag_s = lag_s
        self.suppression_s = suppression_s
        self.environment = environment
        self._open: dict[tuple, _Open] = {}
        self._last: dict[tuple, float] = {}        # key -> first_ts of the last emitted alert
        self._suppressed: dict[tuple, int] = {}
        self._ready: list[Alert] = []              # closed early by a later candidate
        self._last_id: dict[tuple, str] = {}
        # Suppressed candidates, attributed to the alert that suppressed them (drained by the
        # caller with `take_repeats`, so a report can show "web-2: 1 alert, 1 repeat").
        self._repeats: list[dict[str, Any]] = []
        self.watermark = 0.0
        self.stats = {"candidates": 0, "merged": 0, "suppressed": 0, "emitted": 0}

    # -- intake -------------------------------------------------------------------------------
    def add(self, cand: Candidate, wall: float = 0.0) -> None:
        self.stats["candidates"] += 1
        key = cand.key
        self.watermark = max(self.watermark, cand.ts)
        op = self._open.get(key)
        if op is not None and cand.ts - op.first_ts <= self.merge_s:
            self._merge_into(op, cand)
            self.stats["merged"] += 1
            return
        if op is not None:
            # Outside the merge window of the open alert: close that one first.
            self._ready.append(self._build(key, self._open.pop(key)))
        last = self._last.get(key)
        if last is not None and 0 <= cand.ts - last < self.suppression_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self.stats["suppressed"] += 1
            self._repeats.append({"alert_id": self._last_id.get(key, ""), "time": cand.ts,
                                  "rule": cand.rule, "summary": "; ".join(
                                      str(e.get("summary", "")) for e in cand.evidence)[:200]})
            return
        self._open[key] = _Open(cand=cand, first_ts=cand.ts, last_ts=cand.ts,
                                evidence=[], opened_wall=wall)
        self._merge_into(self._open[key], cand)

    def _merge_into(self, op: _Open, cand: Candidate) -> None:
        seen = {_evidence_key(e) for e in op.evidence}
        for e in cand.evidence:
            if _evidence_key(e) in seen:
                continue
            if len(op.evidence) >= MAX_EVIDENCE:
                op.dropped += 1
                continue
            op.evidence.append(e)
        op.first_ts = min(op.first_ts, cand.ts)
        op.last_ts = max(op.last_ts, cand.ts)
        base = op.cand
        if SEVERITY_RANK.get(cand.severity, 0) > SEVERITY_RANK.get(base.severity, 0):
            base.severity = cand.severity
        if cand.score is not None and (base.score is None or cand.score > base.score):
            base.score, base.threshold = cand.score, cand.threshold
            base.details = {**base.details, **cand.details}
        # Prefer the richer container description (a name/image learnt from the other side).
        for attr in ("name", "image", "runtime", "address"):
            if not getattr(base.container, attr) and getattr(cand.container, attr):
                setattr(base.container, attr, getattr(cand.container, attr))
        if cand.title != base.title and "host and network" not in base.title:
            sides = {e.get("side") for e in op.evidence}
            if {"host", "network"} <= sides:
                base.title = _combined_title(base)

    # -- output -------------------------------------------------------------------------------
    def flush(self, watermark: float | None = None, force: bool = False,
              wall: float | None = None, wall_grace_s: float | None = None) -> list[Alert]:
        """Emit open alerts whose merge window has passed (in data time, or in wall time when the
        daemon passes `wall`), or all of them with `force`."""
        if watermark is not None:
            self.watermark = max(self.watermark, watermark)
        wait = self.merge_s + self.lag_s
        grace = wait if wall_grace_s is None else wall_grace_s
        due = [k for k, op in self._open.items()
               if force or self.watermark - op.first_ts > wait
               or (wall is not None and op.opened_wall and wall - op.opened_wall >= grace)]
        due.sort(key=lambda k: (self._open[k].first_ts, k))
        out, self._ready = self._ready, []
        out.extend(self._build(k, self._open.pop(k)) for k in due)
        out.sort(key=lambda a: (a.time, a.id))
        return out

    def _build(self, key: tuple, op: _Open) -> Alert:
        c = op.cand
        self._last[key] = op.first_ts
        suppressed = self._suppressed.pop(key, 0)
        self.stats["emitted"] += 1
        ev = sorted(op.evidence, key=lambda e: (e.get("time", 0.0), e.get("side", ""),
                                                 e.get("kind", "")))
        aid = alert_id(c.rule, c.host, key[1], c.signature, op.first_ts)
        self._last_id[key] = aid
        return Alert(
            id=aid, time=op.first_ts,
            rule=c.rule, severity=c.severity, title=c.title, host=c.host, container=c.container,
            evidence=ev, environment=self.environment, score=c.score, threshold=c.threshold,
            details=c.details, suppressed_before=suppressed, evidence_dropped=op.dropped,
            last_time=op.last_ts)

    def take_repeats(self) -> list[dict[str, Any]]:
        out, self._repeats = self._repeats, []
        return out

    def open_count(self) -> int:
        return len(self._open)

    def prune(self, now: float) -> None:
        """Forget suppression memory older than the suppression window (keeps state small)."""
        for k in [k for k, t in self._last.items() if now - t > self.suppression_s]:
            del self._last[k]
            self._last_id.pop(k, None)

    # -- persistence --------------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "last": [[list(k), t] for k, t in self._last.items()],
            "last_id": [[list(k), i] for k, i in self._last_id.items()],
            "repeats": self._repeats,
            "suppressed": [[list(k), n] for k, n in self._suppressed.items()],
            "open": [[list(k), {"cand": _cand_to_dict(op.cand), "first_ts": op.first_ts,
                                "last_ts": op.last_ts, "evidence": op.evidence,
                                "dropped": op.dropped}] for k, op in self._open.items()],
            "ready": [a.to_dict() for a in self._ready],
            "stats": self.stats,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.watermark = float(st.get("watermark", 0.0))
        self._last = {tuple(k): float(t) for k, t in st.get("last", [])}
        self._last_id = {tuple(k): str(i) for k, i in st.get("last_id", [])}
        self._repeats = list(st.get("repeats", []))
        self._suppressed = {tuple(k): int(n) for k, n in st.get("suppressed", [])}
        self._open = {}
        for k, d in st.get("open", []):
            self._open[tuple(k)] = _Open(cand=_cand_from_dict(d["cand"]), first_ts=d["first_ts"],
                                         last_ts=d["last_ts"], evidence=d["evidence"],
                                         dropped=d.get("dropped", 0))
        self._ready = [alert_from_dict(d) for d in st.get("ready", [])]
        self.stats.update(st.get("stats", {}))


def _combined_title(c: Candidate) -> str:
    who = c.container.name or c.container.id[:12] or UNKNOWN_CONTAINER_NAME
    if c.rule == RULE_LOCATION:
        return f"Location discovery (T1614) in container {who}: host and network evidence"
    return c.title


def _cand_to_dict(c: Candidate) -> dict[str, Any]:
    d = asdict(c)
    return d


def _cand_from_dict(d: dict[str, Any]) -> Candidate:
    d = dict(d)
    d["container"] = ContainerRef(**d["container"])
    return Candidate(**d)


def read_alerts(path: str, errors: list[str] | None = None) -> list[dict[str, Any]]:
    """Read an alerts.jsonl file; unreadable lines are reported in `errors`, not raised."""
    out = []
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return out
    with fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if errors is not None:
                    errors.append(f"{path}:{n}: {exc}")
    return out


def summarize_evidence(evidence: Iterable[dict[str, Any]], limit: int = 3) -> str:
    """Short one-line text of evidence, host side first then network side (for tables)."""
    host, net, other = [], [], []
    for e in evidence:
        s = e.get("summary") or e.get("kind", "")
        side = e.get("side")
        bucket = host if side == "host" else net if side == "network" else other
        if s not in bucket:
            bucket.append(s)
    parts = []
    order = (("", other), ("host", host), ("net", net)) if other else \
        (("host", host), ("net", net), ("", other))     # anomalies: the model's verdict first
    for label, items in order:
        if not items:
            continue
        shown = "; ".join(items[:limit]) + (f" (+{len(items) - limit})" if len(items) > limit else "")
        parts.append(f"{label}: {shown}" if label else shown)
    return " | ".join(parts)
