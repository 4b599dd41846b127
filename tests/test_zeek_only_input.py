"""Zeek-only input (no osquery host view: `osquery_mode = "none"`, or a replay of loose Zeek logs).

Without a host view the scheduler cannot know which container held an address, so rules that
need the inventory must stay silent instead of calling every container "spoofed"; the T1614
network rules still alert on the lookups.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from scheduler.cli import main

DEMO = Path(__file__).resolve().parents[1] / "scheduler" / "demo_data"


def test_zeek_only_replay_alerts_lookups_and_calls_nothing_spoofed(tmp_path, capsys):
    zeek = tmp_path / "zeek"
    shutil.copytree(DEMO / "geo_lookup" / "zeek", zeek)
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", "--zeek-dir", str(zeek), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    alerts = [json.loads(line) for line in out.open()]
    rules = {a["rule"] for a in alerts}
    assert "location_discovery" in rules
    assert "spoofed_source" not in rules, [a["title"] for a in alerts if a["rule"] == "spoofed_source"]
