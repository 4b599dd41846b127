"""`stowaway emulate` runs named-rule scenarios for real (rootful podman, busybox containers on an
internal network, the extension in-process, Zeek on the pcap when installed) and every layer's
row passes; the JSON report names the scenario's rule on its container. The full set
(`--scenario misuse`, ~2.5 min) produced the bundled recordings in tests/data/misuse, checked by
tests/test_detections_e2e.py; here two scenarios run live to keep the suite fast."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/stowaway-busybox:latest"

pytestmark = pytest.mark.slow


def _reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman not installed"
    if os.geteuid() != 0:
        return "needs root (network namespace, kernel process events, rootful podman)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        return f"{IMAGE} missing (run .ci/setup-podman.sh)"
    return None


@pytest.mark.skipif(_reason() is not None, reason=_reason() or "")
@pytest.mark.parametrize("scenario,rule,layers", [
    ("reverse-shell", "reverse_shell", {"extension", "zeek", "scheduler"}),
    ("miner", "cryptomining", {"extension", "zeek", "scheduler"}),
])
def test_emulated_scenario_passes_every_layer(scenario: str, rule: str, layers: set[str],
                                              tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "emulate", "--scenario",
                           scenario, "--report", str(report)], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    checks = data["checks"]
    want = layers if shutil.which("zeek") else layers - {"zeek"}
    assert want <= {c["layer"] for c in checks if c["result"] == "pass"}
    assert not [c for c in checks if c["result"] == "FAIL"]
    sched = [c for c in checks if c["layer"] == "scheduler"]
    assert sched and all(c["result"] == "pass" and rule in c["detail"] for c in sched)
