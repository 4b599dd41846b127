"""Attribute a host process to a container from its ``/proc/<pid>/cgroup`` text.

Why cgroups: every OCI runtime puts a container's processes into a cgroup whose path carries the
container id, so one small read per pid tells Docker, containerd/Kubernetes, CRI-O, Podman and
LXC containers apart without talking to any runtime API (which may be down, slow or absent).

Handled path shapes (cgroup v1 ``N:controllers:/path`` and v2 ``0::/path`` lines)::

    /docker/<id>                                  docker, cgroupfs driver
    /system.slice/docker-<id>.scope               docker, systemd driver
    /kubepods/burstable/pod<uid>/<id>             kubernetes, cgroupfs (CRI not in the path)
    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    .../crio-<id>.scope   (crio-conmon-<id>.scope is CRI-O's monitor: not the container)
    /libpod_parent/libpod-<id>, /machine.slice/libpod-<id>.scope, rootless
      /user.slice/user-1000.slice/user@1000.service/user.slice/libpod-<id>.scope
      (libpod-conmon-<id>.scope is Podman's monitor: not the container)
    /lxc/<name>, /lxc.payload.<name>  (lxc.monitor.<name> is the host-side monitor)
    /system.slice/nerdctl-<id>.scope, /ecs/<task>/<id>

The deepest container component wins, so Docker-in-Docker and systemd-in-container sub-cgroups
(``.../libpod-<id>.scope/container``) attribute to the innermost container.

Everything here is a pure function over text except :func:`read_cgroup`.
"""
from __future__ import annotations

import functools
import os
import re
from typing import NamedTuple

RUNTIME_DOCKER = "docker"
RUNTIME_CONTAINERD = "containerd"
RUNTIME_CRIO = "cri-o"
RUNTIME_PODMAN = "podman"
RUNTIME_LXC = "lxc"
# kubepods cgroupfs path with a bare id: the CRI (containerd, CRI-O with cgroupfs, dockershim)
# cannot be told from the path alone.
RUNTIME_KUBERNETES = "kubernetes"


class CgroupInfo(NamedTuple):
    """Container attribution of one process (``pod_uid`` is '' outside Kubernetes)."""

    container_id: str
    runtime: str
    pod_uid: str
    cgroup_path: str


# Cheap pre-check: a cgroup file naming none of these is not a container's (most host pids).
_KEYWORDS = ("docker", "libpod", "kubepods", "crio", "containerd", "lxc", "nerdctl", "ecs/",
             "/default/", "k8s.io/", "moby/")

_HEX64 = r"[0-9a-f]{64}"
# One regex per component shape; the group is the container id (or LXC name).
_COMPONENT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^docker-({_HEX64})\.scope$"), RUNTIME_DOCKER),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), RUNTIME_CONTAINERD),
    (re.compile(rf"^crio-(?!conmon-)({_HEX64})(?:\.scope)?$"), RUNTIME_CRIO),
    (re.compile(rf"^libpod-(?!conmon-)({_HEX64})(?:\.scope)?$"), RUNTIME_PODMAN),
    (re.compile(rf"^nerdctl-({_HEX64})\.scope$"), RUNTIME_CONTAINERD),
    (re.compile(r"^lxc\.payload[.:]?(.+)$"), RUNTIME_LXC),
)
# Bare 64-hex component: the runtime comes from an ancestor component.
_BARE_ID = re.compile(rf"^({_HEX64})$")
_BARE_PARENTS = {"docker": RUNTIME_DOCKER, "default": RUNTIME_CONTAINERD,
                 "k8s.io": RUNTIME_CONTAINERD, "moby": RUNTIME_DOCKER}
# Pod UID: cgroupfs "pod<uid>" or systemd "kubepods[-qos]-pod<uid_with_underscores>.slice".
_POD_RE = re.compile(r"^(?:kubepods(?:-[a-z]+)?-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                     r"[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")
_LXC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _parse_path(path: str) -> CgroupInfo | None:
    """Container attribution of one cgroup path, or None for a host cgroup."""
    parts = [p for p in path.split("/") if p]
    best: CgroupInfo | None = None
    pod_uid = ""
    in_kubepods = False
    for i, comp in enumerate(parts):
        if comp.startswith("kubepods"):
            in_kubepods = True
        pod = _POD_RE.match(comp) if in_kubepods else None
        if pod:
            pod_uid = pod.group(1).replace("_", "-")
            continue
        found: tuple[str, str] | None = None
        for regex, runtime in _COMPONENT_RULES:
            m = regex.match(comp)
            if m:
                found = (m.group(1), runtime)
                break
        if found is None:
            m = _BARE_ID.match(comp)
            if m and i > 0:
                parent = parts[i - 1]
                grand = parts[i - 2] if i > 1 else ""
                if parent in _BARE_PARENTS:
                    found = (m.group(1), _BARE_PARENTS[parent])
                elif grand == "ecs":  # /ecs/<task id>/<container id>
                    found = (m.group(1), RUNTIME_DOCKER)
                elif in_kubepods and pod_uid:
                    found = (m.group(1), RUNTIME_KUBERNETES)
            elif i > 0 and parts[i - 1] in ("lxc", "lxc.payload") and _LXC_NAME.match(comp):
                found = (comp, RUNTIME_LXC)
        if found is None:
            continue
        cid, runtime = found
        if runtime == RUNTIME_LXC and not _LXC_NAME.match(cid):
            continue
        # A kubepods path whose leaf names its CRI keeps that runtime, with the pod's UID.
        best = CgroupInfo(cid, runtime, pod_uid if in_kubepods else "", path)
    return best


@functools.lru_cache(maxsize=4096)
def parse_cgroup(text: str) -> CgroupInfo | None:
    """Attribute the contents of ``/proc/<pid>/cgroup`` to a container, or None.

    The v2 line (``0::``) is tried first, then the v1 lines in file order; the first line that
    names a container wins. Many pids share one text, hence the cache.
    """
    if not any(k in text for k in _KEYWORDS):
        return None
    lines = text.splitlines()
    lines.sort(key=lambda ln: not ln.startswith("0::"))
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        info = _parse_path(parts[2].strip())
        if info is not None:
            return info
    return None


def attribution_columns(text: str) -> dict[str, str] | None:
    """The container columns of a process row (container_id, runtime, pod_uid, cgroup_path) from
    its ``/proc/<pid>/cgroup`` text; None for a host process. A fresh dict per call (callers keep
    or extend it). Both the tables and the exec-capture process attribute through this."""
    info = parse_cgroup(text)
    if info is None or not info.container_id:
        return None
    return {"container_id": info.container_id, "runtime": info.runtime,
            "pod_uid": info.pod_uid, "cgroup_path": info.cgroup_path}


def parse_cgroup_line(line: str) -> CgroupInfo | None:
    """Attribute a single ``hierarchy:controllers:path`` line (or a bare path)."""
    parts = line.strip().split(":", 2)
    return _parse_path(parts[2] if len(parts) == 3 else parts[0])


def read_cgroup(pid: int | str, proc_root: str = "/proc") -> str | None:
    """Text of ``<proc_root>/<pid>/cgroup``; None when the process is gone or unreadable."""
    try:
        fd = os.open(f"{proc_root}/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (ProcessLookupError, FileNotFoundError, OSError):
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def container_of(pid: int | str, proc_root: str = "/proc") -> CgroupInfo | None:
    """read_cgroup + parse_cgroup: the container a live pid belongs to, or None."""
    text = read_cgroup(pid, proc_root)
    return parse_cgroup(text) if text else None
