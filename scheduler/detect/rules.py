"""Detections: normalised records in, `Candidate` alerts out.

Each rule is a small function (or, for churn, a small stateful counter) so it can be tested on one
record. The pipeline decides which container a record belongs to; rules only look at the record and
the container description they are handed.

Rules:
* location_discovery (T1614), host side: a process row whose command the classifier flags
  (`location_discovery` from the extension, re-checked with `classify_command` when the classifier
  is importable, so recordings made without it still work).
* location_discovery (T1614), network side: a Zeek record for an IP-geolocation / IP-echo service:
  the package's container_geo log, a stock dns/http/ssl record whose name matches the shared
  indicator list (`match_domain`), or a record the Zeek side already tagged with `geo_service`.
* container_churn: more than N creates (or destroys) of one image on one host within T seconds.
* risky_container_config: privileged, host network/pid, runtime socket or host root mounted.
* behaviour_anomaly: a feature window scored above its image baseline's threshold.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from model.records import LifecycleRecord, NetRecord, ProcessRecord

from scheduler.detect.candidate import (RULE_ANOMALY, RULE_CHURN, RULE_LOCATION, RULE_RISKY,
                                        UNKNOWN_CONTAINER_NAME, Candidate, ContainerRef)
from scheduler.detect.verdicts import per_distinct

log = logging.getLogger(__name__)

try:  # the classifier dev's module; optional so the rules still load while it is being built
    from osquery_ext import classifier as _classifier  # type: ignore
except Exception:  # pragma: no cover - depends on what has landed
    _classifier = None


@per_distinct()
def classify_command(cmd: str) -> tuple[bool, str, str]:
    """(location_discovery, indicator, service) for a command line; (False, "", "") when the
    classifier is not available.

    Decided once per distinct command line (bounded memo, detect/verdicts.py): exec events repeat
    a few commands, and the pipeline asks twice per process (window feature, then the rule).
    The memo holds the verdict of the indicator tables loaded at the time: whoever calls
    `osquery_ext.classifier.reload_indicators()` in a running engine calls
    `classify_command.cache_clear()` too (the scheduler itself never reloads them)."""
    if _classifier is None or not cmd:
        return False, "", ""
    try:
        m = _classifier.classify_command(cmd)
    except Exception as exc:  # a classifier bug must not stop the pipeline
        log.warning("classify_command failed on %r: %s", cmd[:80], exc)
        return False, "", ""
    return bool(m.location_discovery), getattr(m, "indicator", "") or "", \
        getattr(m, "service", "") or ""


def match_domain(name: str) -> str:
    """The geo service name a domain belongs to, or "" (label-boundary match, shared list)."""
    if _classifier is None or not name:
        return ""
    try:
        m = _classifier.match_domain(name)
    except Exception as exc:
        log.warning("match_domain failed on %r: %s", name, exc)
        return ""
    return (getattr(m, "service", "") or name) if m else ""


def _who(c: ContainerRef) -> str:
    if not c.id:
        return f"({UNKNOWN_CONTAINER_NAME} at {c.address or '?'})"
    return c.name or c.id[:12]


# --- T1614 -------------------------------------------------------------------------------------

def host_location_discovery(rec: ProcessRecord, container: ContainerRef) -> Candidate | None:
    """T1614 from a process inside a container (container_process_events / container_processes)."""
    flagged, indicator = rec.location_discovery, rec.indicator
    service = ""
    if rec.cmdline:
        hit, ind2, service = classify_command(rec.cmdline)
        if hit:
            flagged, indicator = True, indicator or ind2
    if not flagged:
        return None
    ev = {"side": "host", "kind": "process", "time": round(rec.ts, 6), "pid": rec.pid,
          "ppid": rec.ppid, "name": rec.name, "path": rec.path, "cmdline": rec.cmdline,
          "indicator": indicator, "service": service,
          "summary": (rec.cmdline or rec.name)[:120]}
    return Candidate(
        rule=RULE_LOCATION, ts=rec.ts, host=rec.host, container=container, severity="high",
        title=f"Location discovery (T1614) in container {_who(container)}: "
              f"{(rec.name or rec.cmdline.split(' ')[0])} ran {indicator or 'a geolocation lookup'}",
        evidence=[ev])


def net_geo_service(rec: NetRecord) -> str:
    """Which geo service a network record touches, or ""."""
    if rec.geo_service:
        return rec.geo_service
    if rec.kind in ("dns", "http", "ssl", "geo") and rec.domain:
        return match_domain(rec.domain)
    return ""


def net_summary(rec: NetRecord) -> str:
    text = _net_summary(rec)
    if rec.container_addr:   # a NAT join: the uplink saw the host; say which container flow it was
        text += f" (via {rec.attribution or 'NAT'} {rec.container_addr})"
    return text


def _net_summary(rec: NetRecord) -> str:
    if rec.kind == "dns":
        return f"dns {rec.domain} {rec.rcode}".strip()
    if rec.kind == "http":
        return f"http {rec.domain}{rec.uri}"[:120]
    if rec.kind == "ssl":
        return f"tls sni={rec.domain} {rec.resp_h}:{rec.resp_p}"
    if rec.kind == "geo":
        return f"geo {rec.domain or rec.resp_h} ({rec.geo_service})"
    return f"{rec.proto or rec.kind} {rec.resp_h}:{rec.resp_p} {rec.conn_state}".strip()


def net_evidence(rec: NetRecord, service: str = "") -> dict[str, Any]:
    ev = {"side": "network", "kind": rec.kind, "time": round(rec.ts, 6), "uid": rec.uid,
          "source.ip": rec.orig_h, "source.port": rec.orig_p, "destination.ip": rec.resp_h,
          "destination.port": rec.resp_p, "network.transport": rec.proto,
          "summary": net_summary(rec)}
    if rec.domain:
        ev["domain"] = rec.domain
    if rec.uri:
        ev["url.path"] = rec.uri
    if rec.rcode:
        ev["dns.rcode"] = rec.rcode
    if service:
        ev["service"] = service
    if rec.attribution:
        ev["join"] = rec.attribution   # how the record was tied to its container
    if rec.container_addr:
        ev["container.address"] = rec.container_addr
    return ev


def network_location_discovery(rec: NetRecord, container: ContainerRef) -> Candidate | None:
    """T1614 from the network: a lookup of a geolocation / what-is-my-IP service."""
    service = net_geo_service(rec)
    if not service:
        return None
    return Candidate(
        rule=RULE_LOCATION, ts=rec.ts, host=rec.host, container=container, severity="high",
        title=f"Location discovery (T1614) from container {_who(container)}: "
              f"{rec.kind} lookup of {service}",
        evidence=[net_evidence(rec, service)])


# --- churn -------------------------------------------------------------------------------------

CREATE_ACTIONS = frozenset({"create"})
DESTROY_ACTIONS = frozenset({"destroy", "remove", "rm"})


@dataclass
class _ChurnSeries:
    creates: deque
    destroys: deque


class ChurnDetector:
    """Count creates and destroys per (host, image) in a sliding window of `t_s` seconds.

    Fires when either count exceeds `n`; the suppression window in the aggregator keeps a
    sustained burst to one alert, whose evidence lists the containers seen so far."""

    def __init__(self, n: int = 10, t_s: float = 60.0) -> None:
        self.n, self.t_s = n, t_s
        self._series: dict[tuple[str, str], dict[str, deque]] = {}

    def observe(self, rec: LifecycleRecord, container: ContainerRef) -> Candidate | None:
        kind = "create" if rec.action in CREATE_ACTIONS else \
            "destroy" if rec.action in DESTROY_ACTIONS else ""
        if not kind or not rec.image:
            return None
        series = self._series.setdefault((rec.host, rec.image), {"create": deque(), "destroy": deque()})
        q = series[kind]
        q.append((rec.ts, rec.container_id, rec.name))
        while q and rec.ts - q[0][0] > self.t_s:
            q.popleft()
        # Fire when the count first exceeds n and again each further n (11, 21, 31 for n=10): a
        # burst gives a few candidates, merged and suppressed into one alert downstream.
        if len(q) <= self.n or (len(q) - self.n - 1) % self.n:
            return None
        names = [n or cid[:12] for _, cid, n in q]
        ev = {"side": "host", "kind": "lifecycle", "time": round(rec.ts, 6),
              "action": kind, "count": len(q), "window_s": self.t_s, "threshold": self.n,
              "containers": names[-20:],
              "summary": f"{len(q)} {kind}s of {rec.image} in {self.t_s:g}s (>{self.n})"}
        image_ref = ContainerRef(id="", name=f"(image) {rec.image}", image=rec.image,
                                 runtime=container.runtime, address="")
        return Candidate(
            rule=RULE_CHURN, ts=rec.ts, host=rec.host, container=image_ref, severity="medium",
            title=f"Container churn: {len(q)} {kind}s of {rec.image} on {rec.host or 'host'} "
                  f"within {self.t_s:g}s",
            evidence=[ev], signature=f"image:{rec.image}",
            details={"churn": {"count": len(q), "action": kind, "n": self.n, "t_s": self.t_s}})

    def prune(self, now: float) -> None:
        for key in list(self._series):
            s = self._series[key]
            for q in s.values():
                while q and now - q[0][0] > self.t_s:
                    q.popleft()
            if not s["create"] and not s["destroy"]:
                del self._series[key]

    def dump_state(self) -> list:
        return [[list(k), {a: list(map(list, q)) for a, q in s.items()}]
                for k, s in self._series.items()]

    def load_state(self, st: list) -> None:
        self._series = {tuple(k): {a: deque(tuple(x) for x in q) for a, q in s.items()}
                        for k, s in st}


# --- risky configuration -----------------------------------------------------------------------

def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "t")


def risky_flags(row: dict[str, Any]) -> list[str]:
    """The risky settings of a container_inventory row, in a fixed order."""
    flags = []
    if _truthy(row.get("privileged", "")):
        flags.append("privileged")
    if str(row.get("network_mode", "")).lower() == "host":
        flags.append("host_network")
    if str(row.get("pid_mode", "")).lower() == "host":
        flags.append("host_pid")
    if _truthy(row.get("runtime_socket_mounted", "")):
        flags.append("runtime_socket_mounted")
    if _truthy(row.get("host_root_mounted", "")):
        flags.append("host_root_mounted")
    return flags


def risky_config(row: dict[str, Any], ts: float, host: str,
                 container: ContainerRef) -> Candidate | None:
    """Lower-severity alert for a container started with settings that make escape easy."""
    flags = risky_flags(row)
    if not flags:
        return None
    ev = {"side": "host", "kind": "inventory", "time": round(ts, 6), "flags": flags,
          "network_mode": row.get("network_mode", ""), "pid_mode": row.get("pid_mode", ""),
          "summary": "config: " + ", ".join(flags)}
    return Candidate(
        rule=RULE_RISKY, ts=ts, host=host, container=container, severity="low",
        title=f"Risky container configuration in {_who(container)}: {', '.join(flags)}",
        evidence=[ev], signature=",".join(flags))


# --- anomaly -----------------------------------------------------------------------------------

def anomaly(ts: float, host: str, container: ContainerRef, score: float, threshold: float,
            explanation: Any, fallback: str = "", window: tuple[float, float] | None = None,
            top_feature: str = "", explanation_text: str = "") -> Candidate | None:
    """A window above its image baseline's threshold; the explanation and any cold-start fallback
    are written on the alert so an analyst can see why, and how much to trust it."""
    if score is None or threshold is None or score <= threshold:
        return None
    expl_text = explanation_text or _explanation_text(explanation)
    ev = {"side": "model", "kind": "window", "time": round(ts, 6),
          "window_start": window[0] if window else ts, "window_end": window[1] if window else ts,
          "score": round(float(score), 6), "threshold": round(float(threshold), 6),
          "explanation": explanation, "explanation_text": expl_text}
    short = _explanation_text(explanation) or expl_text
    scope = " (environment-wide baseline, cold start)" if fallback else ""
    ev["summary"] = f"score {score:.2f} > {threshold:.2f}{scope}: {short}"[:300]
    if fallback:
        ev["baseline_fallback"] = fallback
    details = {"explanation": explanation}
    if fallback:
        details["baseline_fallback"] = fallback
    return Candidate(
        rule=RULE_ANOMALY, ts=ts, host=host, container=container, severity="medium",
        title=f"Behaviour anomaly in {_who(container)} ({container.image}): "
              f"{_explanation_text(explanation) or expl_text}"[:200],
        evidence=[ev], signature=top_feature, score=float(score), threshold=float(threshold),
        details=details)


SAMPLES_PER_SIDE = 5
_NET_TOOLS = frozenset({"curl", "wget", "nc", "ncat", "netcat", "nslookup", "dig", "host", "drill",
                        "telnet", "socat", "nmap", "masscan", "ssh", "openssl", "ping"})
_FAILED_STATES = frozenset({"REJ", "S0", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"})
_SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "busybox"})
_DNS_FEATURES = frozenset({"dns_queries", "distinct_domains", "nxdomain_share",
                           "dns_label_entropy_mean"})
_CONN_FEATURES = frozenset({"failed_conns", "outbound_conns", "distinct_remote_addrs",
                            "distinct_remote_ports", "public_conn_share", "bytes_out", "bytes_in"})


def window_samples(processes: list[ProcessRecord], nets: Any,
                   deviations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few of the window's own records that show what the deviations say, so an anomaly alert
    also has host and network evidence side by side, picked in time order, at most
    SAMPLES_PER_SIDE per side.

    Each sample is chosen by the feature that made the window anomalous and the way that feature
    counts: unseen executables by the same name the features use (argv[0]'s basename: in busybox
    images every applet's path is /bin/busybox, so a path match selects every process); failed
    connections for failed_conns; one connection per new port or address for
    distinct_remote_ports / distinct_remote_addrs (a sweep shows its spread, not its first five
    packets to one port); NXDOMAIN answers for a DNS burst.

    `nets` is a list of the window's network records or, from the live windows, its
    model.window_agg.NetWindowAgg: a window no longer keeps its records, only the few rows each
    selection below can pick (the first SAMPLES_PER_SIDE of each, in time order), and the same
    selections over those rows pick the same evidence (tests/test_window_agg.py)."""
    from model.features import executable_name   # the features' own naming (import: scoring only)

    if hasattr(nets, "sample_rows"):
        nets = nets.sample_rows()

    top = [d for d in deviations if isinstance(d, dict)][:3]     # what the alert's title says
    feats = {str(d.get("feature", "")) for d in top}
    unseen = {str(n).lower() for d in top if d.get("feature") == "unseen_executables"
              for n in d.get("names", [])}
    out: list[dict[str, Any]] = []
    host: list[ProcessRecord] = []
    if unseen:
        host = [p for p in processes if executable_name(p) in unseen]
    if not host and "location_discovery_processes" in feats:
        host = [p for p in processes if p.location_discovery]
    if not host and "network_tool_processes" in feats:
        host = [p for p in processes if executable_name(p) in _NET_TOOLS]
    if not host and "shell_processes" in feats:
        host = [p for p in processes if executable_name(p) in _SHELLS]
    if not host and feats & {"processes_started", "distinct_executables", "shell_processes"}:
        host = _first_of_each(processes, executable_name)
    for p in sorted(host, key=lambda r: r.ts)[:SAMPLES_PER_SIDE]:
        out.append({"side": "host", "kind": "process", "time": round(p.ts, 6), "pid": p.pid,
                    "ppid": p.ppid, "name": p.name, "path": p.path, "cmdline": p.cmdline,
                    "summary": (p.cmdline or p.name)[:120]})
    conns = [n for n in nets if n.kind == "conn"]
    net: list[NetRecord] = []
    if "failed_conns" in feats:
        net = [n for n in conns if n.conn_state in _FAILED_STATES]
    if not net and "distinct_remote_ports" in feats:
        net = _first_of_each(conns, lambda n: (n.resp_p, n.proto))
    if not net and "distinct_remote_addrs" in feats:
        net = _first_of_each(conns, lambda n: n.resp_h)
    if not net and "geo_service_contacts" in feats:
        net = [n for n in nets if n.geo_service]
    if not net and feats & _DNS_FEATURES:
        dns = [n for n in nets if n.kind == "dns"]
        net = [n for n in dns if n.rcode == "NXDOMAIN"] or _first_of_each(dns, lambda n: n.domain)
    if not net and feats & _CONN_FEATURES:
        net = conns
    for n in sorted(net, key=lambda r: r.ts)[:SAMPLES_PER_SIDE]:
        out.append(net_evidence(n, n.geo_service))
    return out


def _first_of_each(records: list, key: Any) -> list:
    """The first record (in time) of each distinct key: what a distinct-count feature counted."""
    seen: set = set()
    out = []
    for r in sorted(records, key=lambda r: r.ts):
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def first_evidence_time(evidence: list[dict[str, Any]], default: float) -> float:
    """When the deviating behaviour began: the earliest host or network sample, else `default`
    (the window start). An anomaly alert stamped with its window start would sort up to a window
    length before anything happened."""
    times = [float(e["time"]) for e in evidence
             if e.get("side") in ("host", "network") and e.get("time") is not None]
    return min(times) if times else default


def _explanation_text(expl: Any, limit: int = 3) -> str:
    """Readable text from the model's explanation, whatever shape it takes."""
    if expl is None:
        return ""
    if isinstance(expl, str):
        return expl
    if isinstance(expl, dict):
        items = list(expl.items())[:limit]
        return ", ".join(f"{k}={_fmt(v)}" for k, v in items)
    if isinstance(expl, (list, tuple)):
        parts = []
        for item in list(expl)[:limit]:
            if isinstance(item, dict) and item.get("names"):
                parts.append("new executables: " + ", ".join(map(str, item["names"][:5])))
            elif isinstance(item, dict):
                f = item.get("feature") or item.get("name") or "?"
                v = item.get("value")
                b = item.get("baseline", item.get("typical", item.get("median")))
                parts.append(f"{f}={_fmt(v)}" + (f" (baseline {_fmt(b)})" if b is not None else ""))
            elif isinstance(item, (list, tuple)) and item:
                parts.append("=".join(_fmt(x) for x in item[:2]))
            else:
                parts.append(str(item))
        return ", ".join(parts)
    return str(expl)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v.is_integer() or abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}"
    return str(v)


RuleFn = Callable[..., Candidate | None]
