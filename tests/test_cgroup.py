"""cgroup path attribution for every runtime (cgroup v1 and v2 lines)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datafiles import open_text, scenario_dir
from osquery_ext import cgroup
from osquery_ext.cgroup import CgroupInfo, parse_cgroup, parse_cgroup_line


ID = "495f943fe08b913dd8f3ce6a1d830d014f825584f00787c624c671552c28a798"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
UID = "1b2c3d4e-1111-2222-3333-444455556666"
UID_ = UID.replace("-", "_")

CASES = [
    # (path, container_id, runtime, pod_uid)
    (f"/docker/{ID}", ID, "docker", ""),
    (f"/system.slice/docker-{ID}.scope", ID, "docker", ""),
    (f"/system.slice/docker-{ID}.scope/init.scope", ID, "docker", ""),
    (f"/system.slice/docker-{ID}.scope/docker/{ID2}", ID2, "docker", ""),  # docker in docker
    (f"/kubepods/burstable/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/kubepods/besteffort/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/kubepods/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope", ID, "containerd", UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope", ID, "containerd", UID),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope", ID, "containerd", UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"crio-{ID}.scope", ID, "cri-o", UID),
    (f"/kubepods/burstable/pod{UID}/crio-{ID}", ID, "cri-o", UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"docker-{ID}.scope", ID, "docker", UID),
    (f"/machine.slice/crio-{ID}.scope", ID, "cri-o", ""),
    (f"/libpod_parent/libpod-{ID}", ID, "podman", ""),
    (f"/machine.slice/libpod-{ID}.scope", ID, "podman", ""),
    (f"/machine.slice/libpod-{ID}.scope/container", ID, "podman", ""),
    (f"/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope", ID, "podman", ""),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", ID,
     "podman", ""),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
     ID, "podman", ""),
    (f"/system.slice/nerdctl-{ID}.scope", ID, "containerd", ""),
    (f"/default/{ID}", ID, "containerd", ""),
    (f"/ecs/8c3a7f0e1b2d4c5e9f00112233445566/{ID}", ID, "docker", ""),
    ("/lxc/web1", "web1", "lxc", ""),
    ("/lxc/web1/system.slice/cron.service", "web1", "lxc", ""),
    ("/lxc.payload.web1", "web1", "lxc", ""),
    ("/lxc.payload.web1/init.scope", "web1", "lxc", ""),
    ("/lxc.payload/web1", "web1", "lxc", ""),
]


@pytest.mark.parametrize("path,cid,runtime,pod", CASES, ids=[c[0][:70] for c in CASES])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_runtime_paths(path: str, cid: str, runtime: str, pod: str, version: str) -> None:
    if version == "v2":
        text = f"0::{path}\n"
    else:
        text = "".join(f"{n}:{c}:{path}\n" for n, c in
                       ((12, "pids"), (4, "memory"), (1, "name=systemd"))) + "0::/\n"
    info = parse_cgroup(text)
    assert info == CgroupInfo(cid, runtime, pod, path)


NOT_CONTAINERS = [
    "/",
    "/init.scope",
    "/system.slice/sshd.service",
    "/system.slice/docker.service",
    "/system.slice/containerd.service",
    "/user.slice/user-1000.slice/session-3.scope",
    f"/machine.slice/libpod-conmon-{ID}.scope",
    f"/libpod_parent/conmon",
    f"/system.slice/crio-conmon-{ID}.scope",
    "/lxc.monitor.web1",
    "/kubepods.slice",
    f"/kubepods/burstable/pod{UID}",
    "/docker/notanid",
    f"/docker/{ID[:12]}",
    "/process_api/2a1b25535ae85807a8902c6c6d538cc6",
]


@pytest.mark.parametrize("path", NOT_CONTAINERS)
def test_host_and_monitor_cgroups_are_not_containers(path: str) -> None:
    assert parse_cgroup(f"0::{path}\n4:memory:{path}\n") is None


def test_real_line_from_this_machine_and_fixture() -> None:
    # The example from the brief (podman 4.3.1, cgroupfs, v1 hybrid): v2 and v1 lines agree.
    text = (f"9:name=systemd:/libpod_parent/libpod-{ID}\n8:pids:/libpod_parent/libpod-{ID}\n"
            f"4:memory:/libpod_parent/libpod-{ID}\n1:cpu:/libpod_parent/libpod-{ID}\n"
            f"0::/libpod_parent/libpod-{ID}\n")
    info = parse_cgroup(text)
    assert info is not None and info.container_id == ID and info.runtime == "podman"


def test_v1_line_used_when_v2_line_is_root() -> None:
    text = f"4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
    info = parse_cgroup(text)
    assert info is not None and info.container_id == ID and info.cgroup_path == f"/docker/{ID}"


def test_this_process_is_not_in_a_container_or_parses() -> None:
    text = Path("/proc/self/cgroup").read_text()
    info = parse_cgroup(text)
    assert info is None or len(info.container_id) >= 1


def test_parse_cgroup_line() -> None:
    assert parse_cgroup_line(f"0::/docker/{ID}").container_id == ID
    assert parse_cgroup_line(f"/system.slice/docker-{ID}.scope").runtime == "docker"
    assert parse_cgroup_line("3:cpu:/") is None


def test_garbage_is_none() -> None:
    assert parse_cgroup("") is None
    assert parse_cgroup("not a cgroup file\n:::\n") is None
    assert parse_cgroup("docker docker docker") is None


def test_read_cgroup_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(f"0::/system.slice/docker-{ID}.scope\n")
    assert cgroup.read_cgroup(42, str(tmp_path)).startswith("0::")
    assert cgroup.container_of(42, str(tmp_path)).container_id == ID
    assert cgroup.read_cgroup(43, str(tmp_path)) is None  # vanished
    assert cgroup.container_of(43, str(tmp_path)) is None


def test_read_cgroup_real_self() -> None:
    text = cgroup.read_cgroup(os.getpid())
    assert text is not None and "::" in text


def test_fixture_processes_attribute_to_their_container() -> None:
    """Every recorded process's cgroup lines give the container id the recorder parsed."""
    n = 0
    for scenario in ("geo_lookup", "churn", "drift"):
        with open_text(scenario_dir(scenario) / "processes.jsonl") as fh:
            for line in fh:
                rec = json.loads(line)
                text = "\n".join(rec["cgroup_all"]) + "\n"
                info = parse_cgroup(text)
                assert info is not None, rec["cgroup_all"]
                assert info.container_id == rec["container_id"]
                assert info.runtime == "podman"
                n += 1
    assert n > 1000
