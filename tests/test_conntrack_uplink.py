"""T1614 from a tap on the uplink, as a user deploys it: containers masqueraded behind the host,
`zeek -i` on the uplink veth with the package, the extension's conntrack table, the scheduler's
replay of the osquery results log plus the uplink's Zeek logs (scheduler.emulate.uplink runs it;
the uplink lab keeps every packet on this machine).

The process-event connector is off in that run, so each alert here comes from the uplink's logs
alone, tied to its container by the NAT join. The expected containers are what podman says it
ran, not what the scheduler says.
"""
from __future__ import annotations

import subprocess

import pytest

from scheduler.emulate import uplink, uplink_lab

IMAGE = uplink.IMAGE


def _skip() -> str | None:
    why = uplink.skip_reason()
    if why:
        return why
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        return f"image {IMAGE} missing: run `make podman`"
    return None


_REASON = _skip()
pytestmark = [pytest.mark.podman, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return uplink.run(tmp_path_factory.mktemp("uplink"))


def test_each_lookup_alerts_on_its_container_from_the_uplink_alone(run):
    web, once = run.containers["web"], run.containers["oneshot"]
    assert len(web) == len(once) == 64 and web != once
    # the one-shot really is gone, and nothing of the run is left behind
    assert subprocess.run(["podman", "container", "exists", once]).returncode != 0
    by_cid: dict[str, list[dict]] = {}
    for a in run.alerts:
        if a["rule"] == "location_discovery":
            by_cid.setdefault(a["container"]["id"], []).append(a)
    assert set(by_cid) == {web, once}, [(a["rule"], a["container"]) for a in run.alerts]
    for cid, role, name in ((web, "web", "ipinfo.io"), (once, "oneshot", "ifconfig.me")):
        ev = [e for a in by_cid[cid] for e in a["evidence"] if e["side"] == "network"]
        assert ev, f"{role}: no network evidence"
        assert all(e["join"] == "nat_flow" for e in ev)
        assert all(e["source.ip"] == uplink_lab.HOST_ADDR for e in ev)   # what the tap saw
        assert any(e.get("domain") == name for e in ev)
        assert all(e["container.address"].startswith(run.addresses[role] + ":") for e in ev)
        # no host-side evidence: the exec capture was off, the uplink alone found it
        assert not [e for a in by_cid[cid] for e in a["evidence"] if e["side"] == "host"]
        # named as podman named it (the one-shot from its lifecycle events)
        assert {a["container"]["name"] for a in by_cid[cid]} == {run.names[role]}


def test_the_web_containers_dns_lookup_is_joined_too(run):
    web = run.containers["web"]
    dns = [e for a in run.alerts if a["container"]["id"] == web for e in a["evidence"]
           if e["side"] == "network" and e["kind"] == "dns"]
    assert dns and dns[0]["domain"] == "ipinfo.io" and dns[0]["join"] == "nat_flow"


def test_every_validation_row_passes(run):
    failed = [c for c in run.checks if c.result != uplink.PASS]
    assert not failed, failed
    layers = {c.layer for c in run.checks}
    assert layers == {"emulation", "extension", "zeek", "scheduler"}
    assert run.ok
