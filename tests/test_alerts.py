"""Alert schema, merging of host + network evidence, stable ids, suppression, state round trip."""
from __future__ import annotations

import json

from scheduler.alerting.alerts import (RULE_LOCATION, Alert, AlertAggregator, Candidate, ContainerRef,
                              alert_from_dict, alert_id, summarize_evidence)

C1 = ContainerRef(id="c1" * 32, name="web-2", image="localhost/webapp:1.4", runtime="podman")
C2 = ContainerRef(id="c2" * 32, name="tools-1", image="localhost/alpine-tools:3.19", runtime="podman")


def cand(ts: float, side: str, c: ContainerRef = C1, summary: str = "", rule: str = RULE_LOCATION,
         sig: str = "") -> Candidate:
    return Candidate(rule=rule, ts=ts, host="h1", container=ContainerRef(**vars(c)),
                     severity="high", title=f"{side} title",
                     evidence=[{"side": side, "kind": "process" if side == "host" else "dns",
                                "time": ts, "summary": summary or f"{side}@{ts}"}],
                     signature=sig)


def run(cands: list[Candidate], agg: AlertAggregator | None = None) -> list[Alert]:
    agg = agg or AlertAggregator(merge_s=10, suppression_s=300)
    out = []
    for c in cands:
        agg.add(c)
        out.extend(agg.flush())
    out.extend(agg.flush(force=True))
    return out


def test_host_and_network_evidence_merge_into_one_alert() -> None:
    # The recorded A1: wget seen by osquery, DNS + HTTP seen by Zeek within 0.2 s.
    alerts = run([cand(100.00, "network", summary="dns ipinfo.io"),
                  cand(100.01, "host", summary="wget -qO- http://ipinfo.io/"),
                  cand(100.15, "network", summary="http ipinfo.io/")])
    assert len(alerts) == 1
    a = alerts[0]
    assert {e["side"] for e in a.evidence} == {"host", "network"}
    assert [e["time"] for e in a.evidence] == sorted(e["time"] for e in a.evidence)
    assert "host and network" in a.title
    d = a.to_dict()
    assert d["event"]["evidence_sides"] == ["host", "network"]
    text = summarize_evidence(a.evidence)
    assert text.startswith("host: wget") and "net: dns ipinfo.io" in text


def test_different_containers_do_not_merge() -> None:
    alerts = run([cand(100, "host"), cand(100.5, "host", C2)])
    assert {a.container.name for a in alerts} == {"web-2", "tools-1"}


def test_ids_are_stable_and_distinct() -> None:
    seq = [cand(100, "host"), cand(101, "network"), cand(100, "host", C2)]
    a1 = run(seq)
    a2 = run([cand(100, "host"), cand(101, "network"), cand(100, "host", C2)])
    assert [a.id for a in a1] == [a.id for a in a2]
    assert len({a.id for a in a1}) == 2
    web2 = next(a for a in a1 if a.container.name == "web-2")
    assert web2.id == alert_id(RULE_LOCATION, "h1", C1.id, "", 100.0)


def test_suppression_window_per_container_and_rule() -> None:
    agg = AlertAggregator(merge_s=10, suppression_s=300)
    alerts = run([cand(100, "host"), cand(120, "host"), cand(250, "network"),   # suppressed x2
                  cand(130, "host", C2),                                         # other container
                  cand(500, "host")], agg)                                       # after the window
    web2 = [a for a in alerts if a.container.name == "web-2"]
    assert [a.time for a in web2] == [100, 500]
    assert web2[1].suppressed_before == 2
    assert agg.stats["suppressed"] == 2
    reps = agg.take_repeats()
    assert [r["alert_id"] for r in reps] == [web2[0].id, web2[0].id]


def test_signature_refines_suppression() -> None:
    alerts = run([cand(100, "host", sig="a"), cand(200, "host", sig="b"), cand(210, "host", sig="a")])
    assert [a.time for a in alerts] == [100, 200]


def test_emission_waits_for_merge_window_in_data_time() -> None:
    agg = AlertAggregator(merge_s=10, suppression_s=300)
    agg.add(cand(100, "network"))
    assert agg.flush(watermark=105) == []
    agg.add(cand(104, "host"))
    out = agg.flush(watermark=111)
    assert len(out) == 1 and len(out[0].evidence) == 2


def test_wall_clock_flush_for_the_daemon() -> None:
    agg = AlertAggregator(merge_s=10, suppression_s=300)
    agg.add(cand(100, "network"), wall=1000.0)
    assert agg.flush(wall=1005.0) == []
    assert len(agg.flush(wall=1010.5)) == 1


def test_state_round_trip_gives_the_same_alerts() -> None:
    seq = [cand(100, "network"), cand(101, "host"), cand(150, "host"), cand(130, "host", C2),
           cand(420, "network"), cand(421, "host", C2)]
    whole = run(seq)
    agg = AlertAggregator(merge_s=10, suppression_s=300)
    first = []
    for c in seq[:3]:
        agg.add(c)
        first.extend(agg.flush())
    state = json.loads(json.dumps(agg.dump_state()))
    agg2 = AlertAggregator(merge_s=10, suppression_s=300)
    agg2.load_state(state)
    rest = run(seq[3:], agg2)
    assert [a.to_dict() for a in first + rest] == [a.to_dict() for a in whole]


def test_schema_fields() -> None:
    a = run([cand(1795805066.45, "host"), cand(1795805066.5, "network")])[0]
    d = json.loads(a.to_json())
    for key in ("@timestamp", "id", "time", "rule", "severity", "title", "host", "container",
                "evidence", "mitre", "event"):
        assert key in d
    assert d["@timestamp"] == "2026-11-27T18:44:26.450Z"
    assert d["host"] == {"name": "h1"}
    assert set(d["container"]) >= {"id", "name", "image", "runtime"}
    assert d["event"]["kind"] == "alert"
    assert d["mitre"] == [{"technique": "T1614", "name": "System Location Discovery",
                           "tactic": "Discovery", "tactic_id": "TA0007"}]
    assert "score" not in d
    back = alert_from_dict(d)
    assert back.id == a.id and back.container.name == "web-2" and back.evidence == a.evidence


def test_anomaly_alert_carries_score_and_threshold() -> None:
    c = cand(10, "model", rule="behaviour_anomaly")
    c.score, c.threshold = 4.99, 0.78
    d = run([c])[0].to_dict()
    assert d["score"] == 4.99 and d["threshold"] == 0.78 and d["mitre"] == []


def test_evidence_is_capped_and_counted() -> None:
    seq = [cand(100 + i * 0.01, "network", summary=f"dns n{i}") for i in range(100)]
    a = run(seq)[0]
    assert len(a.evidence) == 60 and a.evidence_dropped == 40


def test_daemon_lag_lets_late_evidence_join_its_alert() -> None:
    """The daemon reads its logs one after another while they grow: evidence can come after
    data time has moved merge_s past the alert's first evidence. With lag_s it still joins the
    alert (as in the replay); without, the alert is out and the late evidence is a repeat."""
    from scheduler.alerting.alerts import AlertAggregator
    from scheduler.detect.candidate import Candidate, ContainerRef

    def cand(ts: float, kind: str) -> Candidate:
        return Candidate(rule="location_discovery", ts=ts, host="h", container=ContainerRef(id="c1"),
                         severity="high", title="t", evidence=[{"side": "network", "kind": kind,
                                                                "time": ts}])

    for lag_s, kinds in ((10.0, ["dns", "geo"]), (0.0, ["geo"])):
        agg = AlertAggregator(merge_s=10.0, lag_s=lag_s)
        agg.add(cand(100.0, "geo"))
        early = agg.flush(watermark=115.0)           # data time 15 s on: another log was ahead
        agg.add(cand(100.0, "dns"))                   # read one poll later
        alerts = early + agg.flush(force=True)
        assert len(alerts) == 1
        assert sorted(e["kind"] for e in alerts[0].evidence) == kinds
    agg = AlertAggregator(merge_s=10.0, lag_s=10.0)
    agg.add(cand(100.0, "geo"))
    assert agg.flush(watermark=121.0)                # merge_s + lag_s passed: out it goes
