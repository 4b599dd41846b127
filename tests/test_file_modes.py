"""Files the daemon creates are 0600 and the directories it creates 0700, whatever the umask; the
address map's mode and group are configurable for a Zeek running as another user."""
from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.alerting.alerts import RULE_LOCATION, Alert, ContainerRef
from scheduler.alerting.sinks import JsonlSink, WebhookSink
from scheduler.collect.fsmode import private_dir
from scheduler.collect.osquery_results import differential_line
from scheduler.collect.state import StateStore
from scheduler.config import WebhookConfig

REPO = Path(__file__).resolve().parents[1]


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture()
def open_umask():
    old = os.umask(0)            # the most permissive umask a user could have
    yield
    os.umask(old)


def _alert() -> Alert:
    return Alert(id="a1", time=1.0, rule=RULE_LOCATION, severity="high", title="t", host="h",
                 container=ContainerRef(id="c", name="n", image="i", runtime="podman"),
                 evidence=[{"side": "host", "kind": "process", "summary": "curl ifconfig.me"}])


def test_store_jsonl_and_spool_are_private_whatever_the_umask(tmp_path: Path, open_umask) -> None:
    StateStore(tmp_path / "new" / "state.db").close()
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "state.db") == 0o600
    for side in ("-wal", "-shm"):
        if (tmp_path / "new" / f"state.db{side}").exists():
            assert mode(tmp_path / "new" / f"state.db{side}") == 0o600
    j = JsonlSink(tmp_path / "out" / "alerts.jsonl")
    j.emit([_alert()])
    j.close()
    assert mode(tmp_path / "out") == 0o700 and mode(tmp_path / "out" / "alerts.jsonl") == 0o600
    w = WebhookSink(WebhookConfig(url="http://127.0.0.1:9/", spool_dir=str(tmp_path / "sp" / "ool")),
                    poster=lambda *a: 500, sleep=lambda s: None)
    w.defer = True
    w.emit([_alert()])
    assert mode(tmp_path / "sp") == 0o700 and mode(tmp_path / "sp" / "ool") == 0o700
    assert [mode(p) for p in (tmp_path / "sp" / "ool").iterdir()] == [0o600]


def test_existing_directories_are_left_alone(tmp_path: Path, open_umask) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    StateStore(shared / "state.db").close()
    private_dir(shared / "a" / "b")
    assert mode(shared) == 0o755                    # not ours to change
    assert mode(shared / "a") == 0o700 and mode(shared / "a" / "b") == 0o700
    assert mode(shared / "state.db") == 0o600


def _config(tmp_path: Path, extra: str = "") -> Path:
    base = tmp_path / "var" / "lib" / "stowaway"      # none of it exists yet
    log = tmp_path / "osqueryd.results.log"
    inv = {"id": "e011c40324138c0a", "name": "web-2", "image": "localhost/webapp:1.4",
           "state": "running", "created": "1795805038", "ip_addresses": "172.17.0.3",
           "runtime": "podman", "pid": "4242"}
    log.write_text(differential_line("container_inventory", "h1", 1795805040, "added", inv) + "\n")
    cfg = tmp_path / "stowaway.toml"
    cfg.write_text(f'state_db = "{base}/state.db"\n'
                   f'[sources]\nosquery_results_log = "{log}"\nzeek_log_dir = "{tmp_path}/zeek"\n'
                   f'address_map = "{base}/zeek/address_map.tsv"\n{extra}'
                   f'[sinks]\njsonl = "{base}/alerts.jsonl"\n'
                   f'[sinks.webhook]\nurl = "http://127.0.0.1:9/hook"\nspool_dir = "{base}/spool"\n'
                   f'timeout_s = 0.2\nmax_attempts = 1\n'
                   f'[model]\ndir = "{base}/models"\n')
    return cfg


def _run_once(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", "run", "--once", "-c", str(cfg)],
                          cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=lambda: os.umask(0))


def test_daemon_files_are_0600_and_directories_0700_under_umask_0(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    r = _run_once(cfg)
    assert r.returncode == 0, r.stderr
    base = tmp_path / "var" / "lib" / "stowaway"
    for d in (tmp_path / "var", tmp_path / "var" / "lib", base, base / "models", base / "spool",
              base / "zeek"):
        assert mode(d) == 0o700, d
    files = [p for p in base.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"state.db", "alerts.jsonl", "windows.db", "address_map.tsv"} <= names, names
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert "172.17.0.3" in (base / "zeek" / "address_map.tsv").read_text()


def test_files_of_an_older_install_are_tightened(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert _run_once(cfg).returncode == 0
    base = tmp_path / "var" / "lib" / "stowaway"
    for name in ("state.db", "alerts.jsonl", "models/windows.db"):
        os.chmod(base / name, 0o644)
    r = _run_once(cfg)
    assert r.returncode == 0, r.stderr
    assert [mode(base / n) for n in ("state.db", "alerts.jsonl", "models/windows.db")] == [0o600] * 3


def test_address_map_mode_and_group_for_a_zeek_of_another_user(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    cfg = _config(tmp_path, extra=f'address_map_mode = "0640"\naddress_map_group = "{group}"\n')
    r = _run_once(cfg)
    assert r.returncode == 0, r.stderr
    amap = tmp_path / "var" / "lib" / "stowaway" / "zeek" / "address_map.tsv"
    assert mode(amap) == 0o640 and os.stat(amap).st_gid == os.getegid()
    assert mode(tmp_path / "var" / "lib" / "stowaway" / "state.db") == 0o600


def test_a_symlinked_state_db_is_followed(tmp_path: Path, open_umask) -> None:
    real = tmp_path / "real.db"
    (tmp_path / "link.db").symlink_to(real)
    StateStore(tmp_path / "link.db").close()
    assert real.is_file() and mode(real) == 0o600
