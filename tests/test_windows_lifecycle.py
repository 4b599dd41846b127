"""A container's feature windows end when it dies or stops, and start again when it restarts
(issue 10 item 5).

A stopped container waiting for its removal is not behaving with zero traffic: in a blind replay
its empty windows after `die` scored as anomalies on three web containers ("bytes_in=0 (baseline
7926), outbound_conns=0"). Only windows in which the container lived are built and scored.
"""
from __future__ import annotations

from model.records import LifecycleRecord, ProcessRecord

from scheduler.config import Config
from scheduler.pipeline import Pipeline

W = 60.0


def life(ts: float, cid: str, action: str) -> LifecycleRecord:
    return LifecycleRecord(ts=ts, container_id=cid, image="img:1", action=action, name=cid,
                           host="h")


def proc(ts: float, cid: str, pid: int) -> ProcessRecord:
    return ProcessRecord(ts=ts, container_id=cid, image="img:1", pid=pid, name="sleep",
                         cmdline=f"sleep {pid}", host="h")


def windows_of(items: list) -> dict[str, list[float]]:
    cfg = Config()
    cfg.detection.window_s = W
    p = Pipeline(cfg, host="h")
    p.collect_windows = True
    p.process(items, finish=True)
    out: dict[str, list[float]] = {}
    for fw in p.collected:
        for cid, ws in zip(fw.container_id, fw.window_start):
            out.setdefault(cid, []).append(float(ws))
    return {k: sorted(v) for k, v in out.items()}


def test_no_window_after_die_while_the_container_waits_for_removal():
    items = [life(0.0, "c1", "create"), life(0.1, "c1", "start")]
    items += [proc(1.0 + 5 * i, "c1", i) for i in range(24)]        # windows 0 and 1
    items += [life(125.0, "c1", "die")]                               # window 2: it lived there
    items += [life(400.0, "c1", "destroy")]                           # removed 275 s later
    assert windows_of(items)["c1"] == [0.0, 60.0, 120.0]


def test_stop_ends_windows_and_a_restart_reopens_them():
    items = [life(0.0, "c2", "create"), life(0.1, "c2", "start"), proc(10.0, "c2", 1),
             life(30.0, "c2", "die"), life(31.0, "c2", "stop"),
             life(200.0, "c2", "start"), proc(210.0, "c2", 2), proc(250.0, "c2", 3),
             life(300.0, "c2", "die"), life(900.0, "c2", "destroy")]
    # window 0 (lived, died in it), nothing for 1-2 (stopped), window 3 (restarted at 200),
    # windows 4-5 hold the process at 250 and the second die at 300; nothing after it, the
    # destroy at 900 included.
    assert windows_of(items)["c2"] == [0.0, 180.0, 240.0, 300.0]


def test_a_running_container_keeps_its_windows():
    items = [life(0.0, "c3", "create"), life(0.1, "c3", "start")]
    items += [proc(5.0 + 30 * i, "c3", i) for i in range(8)]         # 5 .. 215
    assert windows_of(items)["c3"] == [0.0, 60.0, 120.0, 180.0]


def test_stopped_state_survives_a_restart_of_the_engine():
    cfg = Config()
    cfg.detection.window_s = W
    p = Pipeline(cfg, host="h")
    p.collect_windows = True
    p.process([life(0.0, "c4", "create"), life(0.1, "c4", "start"), proc(5.0, "c4", 1),
               life(20.0, "c4", "die")], finish=False)
    state = p.dump_state()
    q = Pipeline(cfg, host="h")
    q.collect_windows = True
    q.load_state(state)
    q.process([life(500.0, "c4", "destroy")], finish=True)
    assert not any("c4" in fw.container_id for fw in q.collected)
