"""`stowaway match-command` / `match-domain` through the installed entry point."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STOWAWAY = REPO / ".venv" / "bin" / "stowaway"

pytestmark = pytest.mark.skipif(not STOWAWAY.exists(),
                                reason=f"{STOWAWAY} missing: run `make venv`")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(STOWAWAY), *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_match_command_positive() -> None:
    r = run("match-command", "docker run --rm alpine curl ipinfo.io")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["location_discovery"] is True
    assert (obj["indicator"], obj["tool"], obj["service"]) == ("ipinfo.io", "curl", "ipinfo")
    assert obj["command"] == "docker run --rm alpine curl ipinfo.io"


def test_match_command_negative() -> None:
    r = run("match-command", "echo ipinfo.io")
    assert r.returncode == 0
    obj = json.loads(r.stdout)
    assert obj["location_discovery"] is False and obj["indicator"] == "" and obj["tool"] == ""
    assert run("match-command", "-e", "echo ipinfo.io").returncode == 1
    assert run("match-command", "-e", "curl ipinfo.io").returncode == 0


def test_match_command_stdin_one_object_per_line() -> None:
    cmds = ["wget -qO- http://ipinfo.io/", "git clone https://github.com/ipinfo/python",
            "sh -c 'nslookup checkip.amazonaws.com; sleep 1'", "", "wget -qO- http://172.17.0.3:8080/health"]
    r = run("match-command", stdin="\n".join(cmds) + "\n")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o["location_discovery"] for o in objs] == [True, False, True, False]
    assert objs[2]["tool"] == "nslookup" and objs[2]["indicator"] == "checkip.amazonaws.com"
    r = run("match-command", "--only-positive", stdin="\n".join(cmds) + "\n")
    assert len(r.stdout.splitlines()) == 2


def test_match_command_argv_json() -> None:
    lines = [json.dumps(["wget", "-qO-", "http://ifconfig.me/ip"]), json.dumps(["sleep", "2"])]
    r = run("match-command", "--argv", stdin="\n".join(lines) + "\n")
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o["location_discovery"] for o in objs] == [True, False]
    bad = run("match-command", "--argv", stdin="not json\n")
    assert bad.returncode == 2 and "line 1" in bad.stderr


def test_match_domain() -> None:
    r = run("match-domain", "www.ipinfo.io")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"name": "www.ipinfo.io", "geo_service": True,
                                    "service": "ipinfo", "category": "ip_geolocation",
                                    "domain": "ipinfo.io"}
    r = run("match-domain", "notipinfo.io")
    obj = json.loads(r.stdout)
    assert obj["geo_service"] is False and obj["service"] is None


def test_match_domain_stdin() -> None:
    r = run("match-domain", stdin="api.ipify.org\nexample.com\nmyip.opendns.com\n")
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o["geo_service"] for o in objs] == [True, False, True]
    assert objs[2]["category"] == "dns_echo"


def test_help_texts() -> None:
    r = run("match-command", "--help")
    assert r.returncode == 0 and "stdin" in r.stdout and "location_discovery" in r.stdout
    r = run("match-domain", "--help")
    assert r.returncode == 0 and "label boundaries" in r.stdout
    top = run("--help")
    assert "match-command" in top.stdout and "match-domain" in top.stdout
