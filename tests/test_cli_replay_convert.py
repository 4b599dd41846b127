"""`stowaway convert` and the replay's argument checks and mode line (issue 10 items 3 and 7).

A user who points replay at the wrong thing gets one line and exit status 2, and nothing is
written; a replay always says what it detects with, so a rules-only run is never mistaken for a
scoring one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scheduler.cli import main
from datafiles import scenario_dir

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scheduler" / "demo_data"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_replay_of_fixture_layout_says_convert_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "alerts.jsonl"
    rc, _, err = _run(capsys, "replay", str(scenario_dir("geo_lookup")), "--out", str(out),
                      "--no-progress")
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "fixture-layout" in lines[0] and "stowaway convert" in lines[0]
    assert "Traceback" not in err
    assert not out.exists() and not Path(f"{out}.state.db").exists()


@pytest.mark.parametrize("make", ["missing", "file", "empty_dir", "bad_meta"])
def test_replay_user_errors_exit_2_with_one_line(tmp_path, capsys, make):
    target = tmp_path / "rec"
    if make == "file":
        target.write_text("x")
    elif make == "empty_dir":
        target.mkdir()
    elif make == "bad_meta":
        target.mkdir()
        (target / "meta.json").write_text("{not json")
    out = tmp_path / "alerts.jsonl"
    rc, _, err = _run(capsys, "replay", str(target), "--out", str(out), "--no-progress")
    assert rc == 2
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert str(target) in err and "Traceback" not in err
    assert not out.exists()


def test_replay_checks_train_arguments_too(tmp_path, capsys):
    out = tmp_path / "alerts.jsonl"
    rc, _, err = _run(capsys, "replay", str(DEMO / "geo_lookup"), "--train",
                      str(tmp_path / "nope"), "--out", str(out), "--no-progress")
    assert rc == 2 and "nope" in err and not out.exists()


def test_convert_then_replay_finds_the_labelled_lookups(tmp_path, capsys):
    rec = tmp_path / "geo"
    rc, out, err = _run(capsys, "convert", str(scenario_dir("geo_lookup")), str(rec))
    assert rc == 0, err
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["containers"] == 6 and counts["container_process_events"] > 0
    assert (rec / "meta.json").is_file() and (rec / "zeek").is_dir()
    # Converting onto an existing recording needs --force; converting a recording is refused.
    assert _run(capsys, "convert", str(scenario_dir("geo_lookup")), str(rec))[0] == 2
    assert _run(capsys, "convert", str(rec), str(tmp_path / "x"))[0] == 2
    alerts = tmp_path / "alerts.jsonl"
    rc, _, err = _run(capsys, "replay", str(rec), "--out", str(alerts), "--no-progress")
    assert rc == 0, err
    rules = {(a["rule"], a["container"]["name"]) for a in map(json.loads, alerts.open())}
    assert ("location_discovery", "web-2") in rules and ("location_discovery", "tools-1") in rules


def test_convert_refuses_a_directory_that_is_no_scenario(tmp_path, capsys):
    rc, _, err = _run(capsys, "convert", str(tmp_path), str(tmp_path / "out"))
    assert rc == 2 and "not a fixture-layout scenario" in err
    assert not (tmp_path / "out").exists()


def test_replay_says_rules_only_without_baselines(tmp_path, capsys):
    rc, _, err = _run(capsys, "replay", str(DEMO / "benign"), "--out",
                      str(tmp_path / "a.jsonl"), "--no-progress")
    assert rc == 0
    assert "mode: rules only" in err


def test_replay_says_scoring_mode_and_model_count(tmp_path, capsys):
    rc, _, err = _run(capsys, "replay", str(DEMO / "benign"), "--train", str(DEMO / "benign"),
                      "--out", str(tmp_path / "a.jsonl"), "--no-progress")
    assert rc == 0
    mode = [ln for ln in err.splitlines() if "mode:" in ln]
    assert mode and "anomaly scoring with" in mode[0] and "fallback" in mode[0]


def test_training_on_zeek_only_input_warns_and_scores_nothing(tmp_path, capsys):
    train = tmp_path / "zeek_only"
    shutil.copytree(DEMO / "benign" / "zeek", train / "zeek")
    (train / "meta.json").write_text(json.dumps(
        {"name": "zeek_only", "host": "lab-host-1", "environment": "lab", "source": "test",
         "time_range": [0, 0]}))
    rc, _, err = _run(capsys, "replay", str(DEMO / "benign"), "--train", str(train),
                      "--out", str(tmp_path / "a.jsonl"), "--no-progress")
    assert rc == 0
    assert "found no feature windows" in err
    assert "mode: rules only" in err
