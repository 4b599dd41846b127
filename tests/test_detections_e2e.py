"""End to end for the named misuse rules on bundled recordings.

tests/data/misuse/<scenario>/ are recordings written by `stowaway emulate --scenario misuse
--record DIR` (real podman containers, the extension in-process, Zeek 7 on the scenario pcap;
pcaps dropped to keep them small, logs gzip'd). Each holds its ground truth with the alerts the
emulation expects (`expected_alerts`). Checked here:

* each scenario's recording gives its named rule on the right container (the emulation's own
  scheduler check, `runner.check_scheduler`, passes), with host and network evidence side by side
  where both sides can see the technique;
* with that rule disabled, the same check fails (the scenario proves the rule, not something else);
* the emulated benign control, and the demo's benign and benign_long (baselines trained on
  benign_long), give no named-rule alert;
* the benign worker's 3 s poll is a beacon without the operator's allow-list (what the allow-list
  is for), silent with it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.collect.recording import Recording, demo_data_dir
from scheduler.config import Config
from scheduler.detect.misuse_config import MISUSE_RULES
from scheduler.emulate import runner as R
from scheduler.emulate.misuse_scenarios import emulation_config
from scheduler.replay import replay, train_from_recordings

pytestmark = pytest.mark.slow

MISUSE = Path(__file__).resolve().parent / "data" / "misuse"
SCENARIOS = ("reverse_shell", "tunnel", "beacon", "miner", "escape", "new_image", "spoof")
#: rules whose technique both sides see in these recordings (host process + Zeek record)
BOTH_SIDES = {"reverse_shell", "tunnel", "dns_tunnel", "beaconing", "cryptomining"}


def _alerts(rec: Path, cfg: Config | None = None, baselines=None) -> list[dict]:
    return [a.to_dict() for a in replay(rec, cfg or emulation_config(), baselines).alerts]


def _scheduler_checks(name: str, alerts: list[dict]) -> list[R.Check]:
    gt = Recording(MISUSE / name).ground_truth()
    sr = R.ScenarioRun(name=name)
    for e in gt["expected_alerts"]:
        sr.expects.append(R.Expect(e["rule"], e["container_id"], e["image"], e["present"],
                                   e["what"], set(e.get("forbid_ids", []))))
    sr.alerts = alerts
    return R.check_scheduler(sr)


def _expected_rules(name: str) -> list[str]:
    gt = Recording(MISUSE / name).ground_truth()
    return sorted({e["rule"] for e in gt["expected_alerts"] if e["present"]})


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_gives_its_named_rule_on_the_right_container(name: str) -> None:
    alerts = _alerts(MISUSE / name)
    checks = _scheduler_checks(name, alerts)
    assert checks and all(c.result == R.PASS for c in checks), [(c.what, c.detail) for c in checks]
    named = [a for a in alerts if a["rule"] in MISUSE_RULES]
    assert sorted({a["rule"] for a in named}) == _expected_rules(name)   # nothing else fires
    for a in named:
        assert a["mitre"] and a["mitre"][0]["technique"].startswith("T1")
        assert all(e.get("summary") for e in a["evidence"])
        if a["rule"] in BOTH_SIDES:
            assert set(a["event"]["evidence_sides"]) == {"host", "network"}, a["title"]


def test_evidence_says_what_was_seen() -> None:
    shell = next(a for a in _alerts(MISUSE / "reverse_shell") if a["rule"] == "reverse_shell")
    host = next(e for e in shell["evidence"] if e["side"] == "host")
    net = next(e for e in shell["evidence"] if e["side"] == "network")
    remote = host["stdio_remote"]                       # "tcp 10.213.x.y:4444"
    assert remote.endswith(":4444") and host["name"] == "sh"
    assert f"{net['destination.ip']}:{net['destination.port']}" == remote.split()[1]
    beacon = next(a for a in _alerts(MISUSE / "beacon") if a["rule"] == "beaconing")
    assert "connections every 2.0 s ± 0.0" in beacon["title"] and "missed beat" in beacon["title"]
    assert any("wget" in e.get("cmdline", "") for e in beacon["evidence"])
    miner = next(a for a in _alerts(MISUSE / "miner") if a["rule"] == "cryptomining")
    assert any(e["kind"] == "stratum" and e.get("method") == "mining.subscribe"
               for e in miner["evidence"])


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_fails_when_its_rule_is_disabled(name: str) -> None:
    for rule in _expected_rules(name):
        cfg = emulation_config()
        cfg.detection.misuse.disabled = [rule]
        checks = _scheduler_checks(name, _alerts(MISUSE / name, cfg))
        failed = [c for c in checks if c.result == R.FAIL]
        assert failed and all(rule in c.what for c in failed), (rule, [c.what for c in checks])


def test_emulated_benign_control_is_silent_and_needs_its_allow_list() -> None:
    assert [a for a in _alerts(MISUSE / "benign") if a["rule"] in MISUSE_RULES] == []
    checks = _scheduler_checks("benign", _alerts(MISUSE / "benign"))
    assert checks and all(c.result == R.PASS for c in checks)
    # The worker polls api.example.com and the web's :8080 every 3 s: beacon-shaped. Without the
    # operator's allow-list (and no training for this image) the rule says so.
    cold = Config()
    cold.detection.misuse.beacon_cold_start = True
    bare = [a for a in _alerts(MISUSE / "benign", cold) if a["rule"] == "beaconing"]
    assert bare and all("every 3." in a["title"] for a in bare)


@pytest.fixture(scope="module")
def demo_baselines():
    eb, _ = train_from_recordings([demo_data_dir() / "benign_long"], Config())
    assert eb.misuse_baseline            # the destinations each image had in training
    return eb


@pytest.mark.parametrize("name", ["benign_long", "benign"])
def test_demo_benign_recordings_give_no_named_alert(name: str, demo_baselines) -> None:
    alerts = _alerts(demo_data_dir() / name, Config(), demo_baselines)
    assert [(a["rule"], a["container"]["name"]) for a in alerts
            if a["rule"] in MISUSE_RULES] == []
