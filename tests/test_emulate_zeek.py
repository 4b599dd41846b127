"""`stowaway emulate --zeek`: the Zeek package live (`zeek -i` on the run's bridge).

The real run needs root, rootful podman with the busybox image and `zeek` on PATH (skipped
otherwise). The emulation's network is --internal with local stand-ins: nothing leaves the machine.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scheduler.detect import inventory
from scheduler.emulate import zeeklive
from scheduler.emulate.runner import FAIL, NOT_CHECKED, PASS, Action, Check
from test_emulate import _emulate, _leftovers, _podman_reason, _run_id


def test_render_map_is_the_scheduler_format(tmp_path: Path):
    text = zeeklive.render_map({"10.213.9.3": ("c" * 64, "web", "localhost/x:1"),
                                "10.213.9.2": ("d" * 64, "", "")})
    lines = text.splitlines()
    assert zeeklive.ADDRESS_MAP_FIELDS == inventory.ADDRESS_MAP_FIELDS
    assert lines[0] == "#fields\tip\tcontainer_id\tcontainer_name\timage"
    assert lines[1] == "10.213.9.2\t" + "d" * 64 + "\t-\t-"
    assert lines[2] == "10.213.9.3\t" + "c" * 64 + "\tweb\tlocalhost/x:1"


@pytest.mark.skipif(shutil.which("zeek") is None, reason="zeek not on PATH")
def test_site_script_reads_map_and_reports_it(tmp_path: Path):
    """The site script parses with the package and lists the map's addresses after a read."""
    amap, seen = tmp_path / "map.tsv", tmp_path / "seen.txt"
    amap.write_text(zeeklive.render_map({"10.213.7.4": ("e" * 64, "web", "img:1")}))
    site = tmp_path / "site.zeek"
    site.write_text(zeeklive.site_script("10.213.7.0/24", amap, seen))
    proc = subprocess.run(["zeek", "-b", str(zeeklive.PACKAGE), str(site)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text().split() == ["10.213.7.4"]


def _action(ip: str) -> Action:
    return Action("G1", "x", "exec", ["wget"], dest_name="ipinfo.io", protocol="http",
                  container_ip=ip, start=100.0, end=101.0)


def test_check_map_rows_pass_fail_and_not_checked(tmp_path: Path):
    z = zeeklive.LiveZeek("br", "10.213.7.0/24", tmp_path)
    z.rows = {"10.213.7.2": ("a" * 64, "web", "img:1"), "10.213.7.3": ("b" * 64, "one", "img:1")}
    z.confirmed = {"10.213.7.2"}
    row = {"ts": 100.5, "id.orig_h": "10.213.7.2", "host": "ipinfo.io", "method": "http",
           "container_name": "web", "image": "img:1"}
    res = zeeklive.check_map_rows("s", [_action("10.213.7.2"), _action("10.213.7.3")], [row], z,
                                  Check, PASS, FAIL, NOT_CHECKED)
    assert [c.result for c in res] == [PASS, NOT_CHECKED]
    unnamed = dict(row, container_name="-", image="-")
    res = zeeklive.check_map_rows("s", [_action("10.213.7.2")], [unnamed], z, Check, PASS, FAIL,
                                  NOT_CHECKED)
    assert [c.result for c in res] == [FAIL]


_REASON = _podman_reason() or (None if shutil.which("zeek") else "zeek not on PATH")


@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_emulate_zeek_live_passes_with_names_from_the_map(tmp_path: Path):
    """zeek -i on the bridge for the whole run: every lookup is in the live logs, and the web
    container (started after Zeek) is named on its container_geo rows through the map re-read."""
    report = tmp_path / "report.json"
    proc = _emulate("--scenario", "geo-lookup", "--zeek", "--report", str(report), timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    run_id = _run_id(proc.stdout)
    assert f"zeek -i stwe{run_id}" in proc.stdout
    checks = [c for c in json.loads(report.read_text())["checks"] if c["layer"] == "zeek"]
    logs = [c for c in checks if " in " in c["what"] and ".log" in c["what"]]
    assert len(logs) == 4 and all(c["result"] == PASS for c in logs), checks
    named = [c for c in checks if "container_geo row names" in c["what"]]
    web = [c for c in named if f"stwemu-{run_id}-web" in c["what"]]
    assert len(web) == 3 and all(c["result"] == PASS for c in web), named
    assert all("from the live map re-read" in c["detail"] for c in web)
    assert not any(c["result"] == FAIL for c in checks)
    assert _leftovers(run_id) == {}
