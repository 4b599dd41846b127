#!/usr/bin/env python3
"""Snapshot (or check) what the engine derives from every bundled recording.

Why: the Zeek path was rewritten from a per-line engine to a batch-at-a-time one (issue 13), and
the rewrite had to give the same alerts and the same feature windows. This script wrote
tests/data/engine_golden/*.json from the per-line engine (commit c78c7ef) before the rewrite;
tests/test_engine_equality.py recomputes the same things with today's engine and fails on any
difference. Rewrite the snapshot (``--write``) only when a change to detection is intended, and
say so in the commit.

Rewritten once since, and again from the per-line engine: when training became independent of
the order windows arrive in (`model.baseline.training_order`), the snapshot was written by
c78c7ef's tree with that one function added to its `EnvironmentBaselines.fit` (alerts of 12
recordings changed in their scores; every feature window stayed as it was), and today's engine
with the same training matched it exactly.

Reordered once (2026-12-04): the replay's alerts are now returned in (time, id) order, as its
state db already returned them, so that they do not depend on the replay's chunk
(`scheduler.replay.CHUNK`, raised from 2,000 to 8,000 items then). Four snapshots (geo_lookup,
k8s_churn, k8s_geo, scenario geo_lookup) changed in the order of their alerts only: the same
alerts as a multiset and the same windows as before, checked against the previous files.

What is compared, per recording:
* alerts of `replay` with baselines trained on the demo's benign_long (the demo's own set-up;
  the misuse recordings with the emulation's configuration), ids left out (they hash the time);
* the feature windows of a training replay (collect_windows): container, window start/end and
  every feature, rounded to 1e-9.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOLDEN = ROOT / "tests" / "data" / "engine_golden"


def recordings() -> list[tuple[str, Path, str]]:
    """(snapshot name, recording dir, config kind) of every bundled recording."""
    from scheduler.collect.recording import demo_data_dir

    out = []
    for d in sorted(demo_data_dir().iterdir()):
        if (d / "meta.json").exists():
            out.append((f"demo-{d.name}", d, "demo"))
    for d in sorted((ROOT / "tests" / "data" / "container-scenarios").iterdir()):
        if d.is_dir():      # fixture layout: converted to a recording first (snapshot())
            out.append((f"scenario-{d.name}", d, "fixture"))
    for d in sorted((ROOT / "tests" / "data" / "misuse").iterdir()):
        if (d / "meta.json").exists():
            out.append((f"misuse-{d.name}", d, "misuse"))
    return out


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items() if k not in ("id", "alert_id")}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def snapshot(rec_dir: Path, kind: str, baselines: Any) -> dict[str, Any]:
    from scheduler.config import Config
    from scheduler.emulate.misuse_scenarios import emulation_config
    from scheduler.replay import replay

    if kind == "fixture":
        import tempfile

        from scheduler.collect.recording import convert_scenario

        tmp = Path(tempfile.mkdtemp(prefix="golden-"))
        convert_scenario(rec_dir, tmp / rec_dir.name)
        rec_dir = tmp / rec_dir.name
    cfg = emulation_config() if kind == "misuse" else Config()
    res = replay(rec_dir, cfg, baselines)
    alerts = [_round(a.to_dict()) for a in res.alerts]
    for a in alerts:
        a.pop("@timestamp", None)
    win = replay(rec_dir, cfg, None, collect_windows=True)
    from model.features import FeatureWindows

    fw = FeatureWindows.concat(win.windows)
    windows = [{"container": fw.container_id[i], "start": round(float(fw.window_start[i]), 6),
                "end": round(float(fw.window_end[i]), 6),
                "features": {n: round(float(v), 9) for n, v in zip(fw.feature_names, fw.X[i])}}
               for i in range(len(fw))]
    windows.sort(key=lambda w: (w["start"], w["container"]))
    return {"alerts": alerts, "windows": windows}


def demo_baselines() -> Any:
    from scheduler.collect.recording import demo_data_dir
    from scheduler.config import Config
    from scheduler.replay import train_from_recordings

    eb, _ = train_from_recordings([demo_data_dir() / "benign_long"], Config())
    return eb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the snapshot files")
    args = ap.parse_args()
    eb = demo_baselines()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, d, kind in recordings():
        got = snapshot(d, kind, eb)
        path = GOLDEN / f"{name}.json"
        if args.write:
            path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"{name}: {len(got['alerts'])} alerts, {len(got['windows'])} windows written")
            continue
        want = json.loads(path.read_text())
        same = want == json.loads(json.dumps(got, sort_keys=True))
        bad += not same
        print(f"{name}: {'same' if same else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
