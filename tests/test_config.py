"""Config errors: every user error is one line naming the file, the key and the expected value, with
exit status 2 and no traceback; numeric settings are range-checked; a configured source that does not
exist is warned about at start and then hourly, even without -v."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cli.main import main
from scheduler.collect import tailer as tailer_mod
from scheduler.collect.state import StateStore
from scheduler.collect.tailer import OsqueryTailer, follow_zeek_dir
from scheduler.config import (Config, ConfigError, check_paths, load_config, syslog_address,
                              validate)

REPO = Path(__file__).resolve().parents[1]

# (TOML text, what the one error line must name besides the file)
BAD = [
    ("[detection\nwindow_s = 1\n", ["TOML syntax error", "line 2"]),   # after state_db
    ('environment = "a"\nhost = \n', ["TOML syntax error", "line 3"]),
    ("[detection]\nwindw_s = 5\n", ["detection.windw_s", "did you mean detection.window_s"]),
    ("[detecton]\nwindow_s = 5\n", ["detecton", "did you mean detection"]),
    ("[detection]\nchurn_N = 5\n", ["churn_N", "did you mean detection.churn_n"]),
    ('[detection]\nchurn_n = "ten"\n', ["detection.churn_n", "expected an integer"]),
    ("[detection]\nchurn_n = 10.5\n", ["detection.churn_n", "expected an integer"]),
    ('[detection]\nwindow_s = "60"\n', ["detection.window_s", "expected a number"]),
    ("[detection]\nanomaly = 1\n", ["detection.anomaly", "expected true or false"]),
    ("detection = 5\n", ["detection", "expected a table"]),
    ("[sources]\nzeek_streams = \"conn\"\n", ["sources.zeek_streams", "expected an array"]),
    ("[detection.misuse]\ndisabled = [1]\n", ["detection.misuse.disabled", "array of strings"]),
    ('[sinks]\nsyslog = "host:notaport"\n', ["sinks.syslog", "port"]),
    ('[sinks]\nsyslog = "host:70000"\n', ["sinks.syslog", "port 1-65535"]),
    ('[sinks]\nsyslog_facility = "lcoal0"\n', ["sinks.syslog_facility", "expected"]),
    ("[sinks]\nsyslog_max_bytes = 100\n", ["sinks.syslog_max_bytes", "480-65507"]),
    ("[model]\nretrain_hour_utc = 25\n", ["model.retrain_hour_utc", "0-23"]),
    ("[model]\nretrain_hour_utc = -1\n", ["model.retrain_hour_utc", "0-23"]),
    ("[model]\nmin_windows = 0\n", ["model.min_windows", ">= 1"]),
    ("[retention]\ndays = -1\n", ["retention.days", "> 0"]),
    ("[daemon]\ncollect_interval_s = 0\n", ["daemon.collect_interval_s", "> 0"]),
    ("[daemon]\nprune_interval_s = -5\n", ["daemon.prune_interval_s", "> 0"]),
    ("[daemon]\nlag_s = nan\n", ["daemon.lag_s", "finite"]),
    ("[daemon]\ncollect_interval_s = inf\n", ["daemon.collect_interval_s", "finite"]),
    ("[detection]\nmerge_s = -1\n", ["detection.merge_s", ">= 0"]),
    ("[detection]\nwindow_s = 0\n", ["detection.window_s", "> 0"]),
    ("[detection.misuse]\nbeacon_max_missed_share = 2\n", ["beacon_max_missed_share", "0-1"]),
    ("[detection.misuse]\nbeacon_min_period_s = 10.0\nbeacon_max_period_s = 5.0\n",
     ["beacon_max_period_s", ">= beacon_min_period_s"]),
    ("[sinks.webhook]\ntimeout_s = 0\n", ["sinks.webhook.timeout_s", "> 0"]),
    ("[sinks.webhook]\nmax_attempts = 0\n", ["sinks.webhook.max_attempts", ">= 1"]),
    ('[sinks.webhook]\nurl = "siem:80"\n', ["sinks.webhook.url", "http://"]),
    ("[metrics]\nport = 70000\n", ["metrics.port", "0-65535"]),
    ("[kubernetes]\nwebhook_port = -1\n", ["kubernetes.webhook_port", "0-65535"]),
    ('[sources]\naddress_map_mode = "0666"\n', ["sources.address_map_mode", "octal mode"]),
    ('[sources]\nosquery_mode = "thrfit"\n', ["sources.osquery_mode", "results_log"]),
]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("text,names", BAD, ids=[b[1][0] for b in BAD])
def test_each_user_error_is_one_line_with_file_key_and_expected_value(
        tmp_path: Path, capsys: pytest.CaptureFixture, text: str, names: list[str]) -> None:
    cfg = tmp_path / "stowaway.toml"
    cfg.write_text(f'state_db = "{tmp_path}/state.db"\n' + text)
    for command in (["run", "--once", "-c", str(cfg)], ["alerts", "-c", str(cfg)]):
        rc, lines = _run_cli(command, capsys)
        assert rc == 2
        assert len(lines) == 1, lines
        assert str(cfg) in lines[0] and "Traceback" not in lines[0]
        for name in names:
            assert name in lines[0], (name, lines[0])
    assert not (tmp_path / "state.db").exists()       # refused before anything was opened


def test_config_path_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, lines = _run_cli(["run", "--once", "-c", str(tmp_path)], capsys)
    assert rc == 2 and len(lines) == 1 and "is a directory" in lines[0] and str(tmp_path) in lines[0]
    rc, lines = _run_cli(["replay", "-c", str(tmp_path), str(tmp_path)], capsys)
    assert rc == 2 and len(lines) == 1 and "is a directory" in lines[0]


def test_binary_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "stowaway.toml"
    cfg.write_bytes(b"environment = \"\xff\xfe\"\n")
    rc, lines = _run_cli(["run", "--once", "-c", str(cfg)], capsys)
    assert rc == 2 and len(lines) == 1 and "UTF-8" in lines[0]


@pytest.mark.parametrize("key,section", [("state_db", ""), ("jsonl", "[sinks]\n"),
                                         ("address_map", "[sources]\n"), ("dir", "[model]\n")])
def test_a_path_under_a_file_is_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     key: str, section: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = tmp_path / "stowaway.toml"
    cfg.write_text(f'state_db = "{tmp_path}/s/state.db"\n[sinks]\njsonl = "{tmp_path}/s/a.jsonl"\n'
                   f'[model]\ndir = "{tmp_path}/s/models"\n'
                   f'[sources]\naddress_map = "{tmp_path}/s/map.tsv"\n'
                   f'osquery_results_log = "{tmp_path}/o.log"\nzeek_log_dir = "{tmp_path}/z"\n')
    text = cfg.read_text()
    old = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
    cfg.write_text(text.replace(old, f'{key} = "{blocker}/deeper/x"'))
    rc, lines = _run_cli(["run", "--once", "-c", str(cfg)], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert key in lines[0] and "not a directory" in lines[0] and str(cfg) in lines[0]


def test_missing_directories_are_not_errors(tmp_path: Path) -> None:
    cfg = Config(state_db=str(tmp_path / "new" / "deeper" / "state.db"))
    cfg.sinks.jsonl = str(tmp_path / "new" / "alerts.jsonl")
    cfg.model.dir = str(tmp_path / "new" / "models")
    cfg.sources.address_map = str(tmp_path / "new" / "map.tsv")
    assert check_paths(cfg) == []


def test_defaults_and_example_are_valid() -> None:
    assert validate(Config()) == []
    load_config(REPO / "stowaway.example.toml")


def test_load_config_raises_config_error_listing_every_problem(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[retention]\ndays = -1\n[daemon]\ncollect_interval_s = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{p}: ") for line in lines)


@pytest.mark.parametrize("target,expected", [
    ("/dev/log", "/dev/log"), ("127.0.0.1:5514", ("127.0.0.1", 5514)),
    ("siem.example", ("siem.example", 514)), ("[::1]:514", ("::1", 514))])
def test_syslog_address(target: str, expected: object) -> None:
    assert syslog_address(target) == expected


def test_a_real_cli_run_prints_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "stowaway.toml"
    cfg.write_text("[model]\nretrain_hour_utc = 25\n")
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--once", "-c", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2
    assert r.stderr.strip() == (f"stowaway run: {cfg}: model.retrain_hour_utc = 25: expected an "
                                "hour 0-23")


# ---- a configured source that does not exist --------------------------------------------------

def test_missing_sources_are_warned_at_start_without_verbose(tmp_path: Path) -> None:
    """`stowaway run --once` (no -v) with a results log and a Zeek directory that do not exist."""
    cfg = tmp_path / "stowaway.toml"
    osq, zeek = tmp_path / "nope" / "osqueryd.results.log", tmp_path / "no-zeek"
    cfg.write_text(f'state_db = "{tmp_path}/st/state.db"\n'
                   f'[sources]\nosquery_results_log = "{osq}"\nzeek_log_dir = "{zeek}"\n'
                   f'address_map = "{tmp_path}/st/map.tsv"\n'
                   f'[sinks]\njsonl = "{tmp_path}/st/alerts.jsonl"\n'
                   f'[model]\ndir = "{tmp_path}/st/models"\n')
    r = subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--once", "-c", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "does not exist" in line]
    assert any(str(osq) in line and "WARNING" in line for line in warned), r.stderr
    assert sum(str(zeek) in line for line in warned) == 1, r.stderr   # one line, not per stream


def test_missing_source_warning_repeats_hourly(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(tailer_mod.MISSING_SOURCES, "clock", lambda: clock[0])
    store = StateStore(tmp_path / "state.db")
    try:
        log = tmp_path / "osquery" / "osqueryd.results.log"
        tailers = [OsqueryTailer(log, store)] + follow_zeek_dir(tmp_path / "zeek", store)
        (tmp_path / "zeek2").mkdir()
        quiet = follow_zeek_dir(tmp_path / "zeek2", store)   # exists, no streams yet: no warning

        def cycle() -> list[str]:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="scheduler.collect.tailer"):
                for t in tailers + quiet:
                    t.poll()
            return [m for m in caplog.messages if "does not exist" in m]

        first = cycle()
        assert len(first) == 2 and any(str(log) in m for m in first)
        assert any(str(tmp_path / "zeek") in m for m in first)
        clock[0] += 600
        assert cycle() == []                     # not every cycle
        clock[0] += 3000
        assert len(cycle()) == 2                 # an hour after the first
        log.parent.mkdir()
        log.write_text("")
        clock[0] += 3600
        assert [m for m in cycle() if str(log) in m] == []   # it exists now
    finally:
        store.close()
