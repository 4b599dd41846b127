"""Container runtime API clients (Docker Engine API over a Unix socket, for Docker and Podman).

Why this module exists: /proc and cgroups tell *that* a process runs in a container, but only the
runtime knows the container's name, image, network settings and privileges. Both Docker and Podman
speak the Docker Engine API on a Unix socket, so one client (the `docker` SDK) serves both.

Robustness rules the osquery extension depends on:
- every runtime call is bounded by a timeout (default 2 s) and a whole inventory fetch runs in a
  worker thread with an overall deadline, so a hung socket never blocks an osquery generate call
  longer than the timeout;
- a runtime that is down (socket absent, refused, hung) makes rows degrade (no names / images), and
  the error is logged once when the runtime goes down and once when it comes back, never per call;
- "down" means the list call or the connection failed; an inspect the runtime answers with an
  error (404, or Podman's 500 while removing a `--rm` container) skips that one container only.

Podman's compat API differs from Docker's in details handled here: `remove`/`died` event verbs, an
`exitCode` attribute, `Gateway: "<nil>"` on internal networks, `NetworkMode` reported as `bridge`
for named networks, RFC3339 times with nanoseconds.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

#: Docker Engine API version to pin; Docker >= 20.10 and Podman >= 3 both serve it, and pinning
#: avoids the SDK's version probe (an extra call that could hang) when a client is created.
API_VERSION = "1.41"
DEFAULT_TIMEOUT = 2.0

#: Where the runtimes put their API sockets by default (rootful).
DEFAULT_SOCKETS: dict[str, str] = {
    "docker": "unix:///var/run/docker.sock",
    "podman": "unix:///run/podman/podman.sock",
}

#: Host paths whose bind-mount into a container hands it control of a runtime (container escape).
RUNTIME_SOCKET_PATHS = frozenset({
    "/var/run/docker.sock", "/run/docker.sock",
    "/run/podman/podman.sock", "/var/run/podman/podman.sock",
    "/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock", "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock", "/var/run/cri-dockerd.sock",
})
#: Directories that contain those sockets: mounting one of them is as good as mounting the socket.
RUNTIME_SOCKET_DIRS = frozenset({
    "/var/run", "/run", "/run/podman", "/var/run/podman", "/run/containerd",
    "/var/run/containerd", "/run/crio", "/var/run/crio", "/run/docker", "/var/run/docker",
})

K8S_POD_NAME = "io.kubernetes.pod.name"
K8S_POD_NAMESPACE = "io.kubernetes.pod.namespace"


@dataclass(slots=True)
class ContainerMeta:
    """Everything container_inventory reports about one container (strings ready for osquery)."""

    id: str
    runtime: str
    name: str = ""
    image: str = ""
    image_id: str = ""
    state: str = ""
    created: int = 0
    started: int = 0
    ip_addresses: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    privileged: bool = False
    network_mode: str = ""
    pid_mode: str = ""
    ipc_mode: str = ""
    runtime_socket_mounted: bool = False
    host_root_mounted: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    pod_name: str = ""
    pod_namespace: str = ""
    pid: int = 0
    source: str = "api"
    cap_add: list[str] = field(default_factory=list)   # capabilities added at create (NET_RAW)

    def to_row(self) -> dict[str, str]:
        """The container_inventory row (osquery wants every value as a string)."""
        return {
            "id": self.id, "name": self.name, "image": self.image, "image_id": self.image_id,
            "state": self.state, "created": str(self.created), "started": str(self.started),
            "ip_addresses": ",".join(self.ip_addresses), "networks": ",".join(self.networks),
            "privileged": _b(self.privileged), "network_mode": self.network_mode,
            "pid_mode": self.pid_mode, "ipc_mode": self.ipc_mode,
            "runtime_socket_mounted": _b(self.runtime_socket_mounted),
            "host_root_mounted": _b(self.host_root_mounted),
            "labels": json.dumps(self.labels, sort_keys=True), "pod_name": self.pod_name,
            "pod_namespace": self.pod_namespace, "pid": str(self.pid), "runtime": self.runtime,
            "source": self.source, "cap_add": ",".join(self.cap_add),
        }


def _b(v: bool) -> str:
    return "1" if v else "0"


def parse_time(value: Any) -> int:
    """Epoch seconds from the API's int or RFC3339 (nanosecond) time; 0 for Go's zero time."""
    if value is None or value == "":
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if text.startswith("0001-01-01"):
        return 0
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python's fromisoformat takes at most 6 fractional digits; Go writes up to 9.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        digits, tz = rest[:i], rest[i:]
        text = f"{head}.{digits[:6]}{tz}" if digits else head + tz
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def mounts_flags(mounts: list[dict[str, Any]] | None) -> tuple[bool, bool]:
    """(runtime socket mounted, host root mounted) from an inspect `Mounts` list."""
    sock = root = False
    for m in mounts or []:
        src = os.path.normpath(str(m.get("Source") or "/")) if m.get("Source") else ""
        if not src:
            continue
        if src == "/":
            root = True
        if src in RUNTIME_SOCKET_PATHS or src in RUNTIME_SOCKET_DIRS:
            sock = True
    return sock, root


def meta_from_api(runtime: str, listed: dict[str, Any], inspected: dict[str, Any] | None
                  ) -> ContainerMeta:
    """Build a ContainerMeta from a `/containers/json` entry and (optionally) its inspect."""
    ins = inspected or {}
    hc = ins.get("HostConfig") or listed.get("HostConfig") or {}
    cfg = ins.get("Config") or {}
    state = ins.get("State") or {}
    names = listed.get("Names") or []
    name = (ins.get("Name") or (names[0] if names else "") or "").lstrip("/")
    labels = dict(listed.get("Labels") or cfg.get("Labels") or {})
    nets = ((ins.get("NetworkSettings") or {}).get("Networks")
            or (listed.get("NetworkSettings") or {}).get("Networks") or {})
    ips: list[str] = []
    for net in nets.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            addr = (net or {}).get(key)
            if addr and addr not in ips:
                ips.append(addr)
    sock, root = mounts_flags(ins.get("Mounts") or listed.get("Mounts"))
    return ContainerMeta(
        id=listed.get("Id") or ins.get("Id") or "",
        runtime=runtime,
        name=name,
        image=cfg.get("Image") or listed.get("Image") or "",
        image_id=listed.get("ImageID") or ins.get("Image") or "",
        state=(state.get("Status") or listed.get("State") or ""),
        created=parse_time(listed.get("Created") or ins.get("Created")),
        started=parse_time(state.get("StartedAt")),
        ip_addresses=ips,
        networks=sorted(nets.keys()),
        privileged=bool(hc.get("Privileged")),
        network_mode=str(hc.get("NetworkMode") or ""),
        pid_mode=str(hc.get("PidMode") or ""),
        ipc_mode=str(hc.get("IpcMode") or ""),
        runtime_socket_mounted=sock,
        host_root_mounted=root,
        labels={str(k): str(v) for k, v in labels.items()},
        pod_name=labels.get(K8S_POD_NAME, ""),
        pod_namespace=labels.get(K8S_POD_NAMESPACE, ""),
        pid=int(state.get("Pid") or 0),
        source="api",
        cap_add=cap_names(hc.get("CapAdd")),
    )


def cap_names(caps: Any) -> list[str]:
    """HostConfig.CapAdd as sorted names without the CAP_ prefix (Docker writes NET_RAW, Podman
    CAP_NET_RAW); anything that is not a list of strings gives []."""
    if not isinstance(caps, list):
        return []
    return sorted({str(c).upper().removeprefix("CAP_") for c in caps if isinstance(c, str) and c})


class HealthLog:
    """Logs a runtime going down once, and coming back once, instead of on every call."""

    def __init__(self) -> None:
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()

    def down(self, name: str, why: str) -> None:
        with self._lock:
            first = name not in self._down
            self._down[name] = why
        if first:
            log.warning("runtime %s unavailable (%s); its rows degrade until it is back",
                        name, why)

    def up(self, name: str) -> None:
        with self._lock:
            was = self._down.pop(name, None)
        if was is not None:
            log.info("runtime %s answers again", name)

    def is_down(self, name: str) -> bool:
        with self._lock:
            return name in self._down


def socket_path(url: str) -> str | None:
    """File system path of a unix:// URL (None for tcp:// and other schemes)."""
    if url.startswith("unix://"):
        return url[len("unix://"):]
    if url.startswith("/"):
        return url
    return None


class RuntimeClient:
    """One runtime's Engine API, created lazily; every call bounded by `timeout` seconds."""

    def __init__(self, name: str, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.url = url if "://" in url else "unix://" + url
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    def available(self) -> tuple[bool, str]:
        """Cheap pre-check: a missing socket file means down, without touching the network."""
        path = socket_path(self.url)
        if path is not None and not os.path.exists(path):
            return False, f"socket {path} absent"
        return True, ""

    def api(self) -> Any:
        """The SDK's low-level client (no version probe, so creating it never blocks)."""
        with self._lock:
            if self._api is None:
                import docker  # imported here: tables that never touch a runtime stay fast
                self._api = docker.APIClient(base_url=self.url, version=API_VERSION,
                                             timeout=self.timeout)
            return self._api

    def list_raw(self) -> list[dict[str, Any]]:
        return self.api().containers(all=True)

    def inspect(self, cid: str) -> dict[str, Any]:
        return self.api().inspect_container(cid)

    def inventory(self) -> list[ContainerMeta]:
        """All containers with their inspect details (one list call + one inspect each).

        An inspect the runtime *answers* with an HTTP error is about that one container: it was
        removed between list and inspect (Docker: 404; Podman: 500 while it is still removing a
        `--rm` container its list call named). That container is skipped; the runtime is up, as
        its answer proves. A failing list call, or a connection that breaks or times out during
        an inspect, still raises, and the caller marks the runtime down.
        """
        from docker.errors import APIError  # imported here, like the SDK itself (see api())

        out = []
        for item in self.list_raw():
            try:
                ins = self.inspect(item["Id"])
            except APIError as exc:
                log.debug("runtime %s: inspect of %.12s failed (%s); container skipped as gone",
                          self.name, item.get("Id", ""), _short(exc))
                continue
            out.append(meta_from_api(self.name, item, ins))
        return out

    def events(self, since: int | None = None) -> Any:
        """The runtime's event stream (decoded dicts; blocks until events; `.close()` stops it)."""
        return self.api().events(since=since, decode=True)

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                try:
                    self._api.close()
                except Exception:  # closing is best effort
                    pass
                self._api = None


def parse_socket_spec(spec: str) -> dict[str, str]:
    """`docker=unix:///var/run/docker.sock,podman=/run/podman/podman.sock` -> {name: url}.

    A name without `=URL` keeps its default socket; `none` disables all runtimes.
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part or part == "none":
            continue
        name, _, url = part.partition("=")
        name = name.strip()
        url = url.strip() or DEFAULT_SOCKETS.get(name, "")
        if url:
            out[name] = url
    return out


class Runtimes:
    """All configured runtimes, with deadline-bounded, cached, degrade-gracefully queries."""

    def __init__(self, sockets: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 cache_ttl: float = 2.0) -> None:
        sockets = DEFAULT_SOCKETS if sockets is None else sockets
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.clients = [RuntimeClient(n, u, timeout) for n, u in sockets.items()]
        self.health = HealthLog()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, 2 * len(self.clients)),
                                                           thread_name_prefix="runtime")
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._cache: dict[str, tuple[float, list[ContainerMeta]]] = {}
        self._known: dict[str, ContainerMeta] = {}  # every container ever seen (names for events)
        self._lock = threading.Lock()

    # -- queries -------------------------------------------------------------------------------
    def inventory(self, max_age: float | None = None) -> list[ContainerMeta]:
        """Containers from every runtime that answers within the timeout (others: skipped)."""
        max_age = self.cache_ttl if max_age is None else max_age
        now = time.monotonic()
        futures: dict[str, concurrent.futures.Future] = {}
        result: list[ContainerMeta] = []
        for client in self.clients:
            with self._lock:
                cached = self._cache.get(client.name)
            if cached and now - cached[0] <= max_age:
                result.extend(cached[1])
                continue
            ok, why = client.available()
            if not ok:
                self.health.down(client.name, why)
                continue
            futures[client.name] = self._submit(client)
        deadline = time.monotonic() + self.timeout
        for name, fut in futures.items():
            try:
                metas = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                self.health.down(name, f"no answer within {self.timeout:g}s")
                continue
            except Exception as exc:
                self.health.down(name, _short(exc))
                continue
            self.health.up(name)
            result.extend(metas)
        return result

    def _submit(self, client: RuntimeClient) -> concurrent.futures.Future:
        """Start (or join) one inventory fetch; a still-running fetch is reused, so a hung
        runtime costs one blocked worker, not one per osquery query."""
        with self._lock:
            fut = self._inflight.get(client.name)
            if fut is not None and not fut.done():
                return fut
            fut = self._pool.submit(self._fetch, client)
            self._inflight[client.name] = fut
            return fut

    def _fetch(self, client: RuntimeClient) -> list[ContainerMeta]:
        metas = client.inventory()
        with self._lock:
            self._cache[client.name] = (time.monotonic(), metas)
            for m in metas:
                self._known[m.id] = m
        return metas

    def refresh_names(self) -> None:
        """Learn names/images of new containers with one list call per runtime (no inspects),
        at most once per cache TTL and never longer than the timeout."""
        now = time.monotonic()
        with self._lock:
            if now - getattr(self, "_names_at", -1e9) < self.cache_ttl:
                return
            self._names_at = now
        futures = {}
        for client in self.clients:
            ok, why = client.available()
            if not ok:
                self.health.down(client.name, why)
                continue
            futures[client.name] = self._pool.submit(self._fetch_names, client)
        deadline = time.monotonic() + self.timeout
        for name, fut in futures.items():
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
                self.health.up(name)
            except concurrent.futures.TimeoutError:
                self.health.down(name, f"no answer within {self.timeout:g}s")
            except Exception as exc:
                self.health.down(name, _short(exc))

    def _fetch_names(self, client: RuntimeClient) -> None:
        for item in client.list_raw():
            names = item.get("Names") or [""]
            self.remember(client.name, item.get("Id", ""), names[0].lstrip("/"),
                          item.get("Image", ""))

    def lookup(self, cid: str) -> ContainerMeta | None:
        """Name/image of a container id from what has been seen (inventory or events); no I/O."""
        with self._lock:
            return self._known.get(cid)

    def remember(self, runtime: str, cid: str, name: str, image: str) -> None:
        """Record name/image learnt from an event, so short-lived containers keep their names."""
        if not cid:
            return
        with self._lock:
            meta = self._known.get(cid)
            if meta is None:
                if len(self._known) > 50000:  # bounded: forget the oldest half
                    for k in list(self._known)[:25000]:
                        del self._known[k]
                self._known[cid] = ContainerMeta(id=cid, runtime=runtime, name=name, image=image)
            else:
                meta.name = meta.name or name
                meta.image = meta.image or image

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]

