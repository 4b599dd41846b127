"""`stowaway emulate --zeek`: the Zeek package live on the emulation's bridge.

Why: the package's live behaviour (``zeek -i``, the address map re-read while Zeek runs) is what a
deployment relies on, and a pcap replay after the fact never exercises it. Here Zeek listens on
the run's own bridge (``stwe<run id>``, an --internal network with local stand-ins: nothing leaves
the machine) for the whole emulation, with the package and a small site script that

* adds the lab subnet to ``Stowaway::container_subnets`` (the lab picks a free 10.213.x.0/24),
* points ``Stowaway::container_addresses_file`` at a map this module rewrites atomically (the
  scheduler's format, ``scheduler.detect.inventory.ADDRESS_MAP_FIELDS``) whenever the emulation
  learns a container's address, and
* after each (re-)read of that map writes the addresses Zeek now knows to ``map_seen.txt``, so the
  emulation can wait for the re-read instead of sleeping.

A container started after Zeek thus gets its name and image on its ``container_geo.log`` rows
only through the live re-read; `check_map_rows` asserts that per action.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[2] / "zeek_scripts"
ADDR_STREAM = "stowaway-container-addresses"   # zeek_scripts/input.zeek's stream name
SEEN_FILE = "map_seen.txt"
#: The address map's columns as zeek_scripts/input.zeek reads them; the same as the daemon's
#: scheduler.detect.inventory.ADDRESS_MAP_FIELDS (the lab may not import detect/: a test compares).
ADDRESS_MAP_FIELDS = ("ip", "container_id", "container_name", "image")


def site_script(subnet: str, map_path: Path, seen_path: Path) -> str:
    """The run's site script: lab subnet, address map path, a marker of each map read."""
    return f"""# written by scheduler/emulate/zeeklive.py for one emulation run
redef Stowaway::container_subnets += {{ {subnet} }};
redef Stowaway::container_addresses_file = "{map_path}";

event Input::end_of_data(name: string, source: string)
	{{
	if ( name != "{ADDR_STREAM}" )
		return;
	local f = open("{seen_path}");
	for ( a in Stowaway::container_addresses )
		print f, a;
	close(f);
	}}
"""


def render_map(rows: dict[str, tuple[str, str, str]]) -> str:
    """The address map text: ip -> (container id, name, image); "-" for unknown values."""
    lines = ["#fields\t" + "\t".join(ADDRESS_MAP_FIELDS)]
    for ip in sorted(rows):
        cid, name, image = rows[ip]
        vals = [ip, cid or "-", name or "-", image or "-"]
        lines.append("\t".join(v.replace("\t", " ").replace("\n", " ") for v in vals))
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: Zeek's change check must never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=str(path.parent))
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class LiveZeek:
    """One ``zeek -i <bridge>`` with the package for the whole emulation."""

    def __init__(self, bridge: str, subnet: str, out_dir: Path) -> None:
        self.bridge, self.subnet, self.out_dir = bridge, subnet, out_dir
        self.map_path = out_dir / "container_addresses.tsv"
        self.seen_path = out_dir / SEEN_FILE
        self.rows: dict[str, tuple[str, str, str]] = {}
        self.confirmed: set[str] = set()   # addresses Zeek was seen to have read (wait_mapped)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start Zeek and return once it listens and has read the (empty) map."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.map_path, render_map(self.rows))
        site = self.out_dir / "stowaway_live_site.zeek"
        site.write_text(site_script(self.subnet, self.map_path.resolve(), self.seen_path.resolve()))
        err = open(self.out_dir / "zeek.stderr", "w")
        env = dict(os.environ, ZEEK_DNS_FAKE="1")
        self.proc = subprocess.Popen(["zeek", "-C", "-i", self.bridge, str(PACKAGE), str(site)],
                                     cwd=self.out_dir, env=env, stdout=subprocess.DEVNULL,
                                     stderr=err, start_new_session=True)
        err.close()
        self._wait(lambda: "listening on" in self._stderr() and self.seen_path.exists(), timeout,
                   f"zeek did not start listening on {self.bridge}")

    def map_container(self, ip: str, cid: str, name: str, image: str) -> None:
        """The scheduler's job live: rewrite the map with a newly learned container address."""
        self.rows[ip] = (cid, name, image)
        write_atomic(self.map_path, render_map(self.rows))

    def wait_mapped(self, ip: str, timeout: float = 15.0) -> float:
        """Wait until Zeek's re-read of the map knows `ip`; returns the seconds it took."""
        t0 = time.monotonic()
        self._wait(lambda: ip in self._seen(), timeout, f"zeek did not re-read the map with {ip}")
        self.confirmed.add(ip)
        return time.monotonic() - t0

    def stop(self) -> None:
        """SIGTERM: Zeek flushes and closes its logs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _stderr(self) -> str:
        return (self.out_dir / "zeek.stderr").read_text(errors="replace")

    def _seen(self) -> set[str]:
        try:
            return set(self.seen_path.read_text().split())
        except OSError:
            return set()

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"zeek exited ({self.proc.returncode}): {self._stderr()[-400:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{what} within {timeout:g}s: {self._stderr()[-400:]}")


def check_map_rows(scenario: str, actions: list[Any], geo_rows: list[dict[str, Any]],
                   z: LiveZeek, check: Callable[..., Any], passed: str, failed: str,
                   not_checked: str) -> list[Any]:
    """Per action from a mapped container: its container_geo.log rows carry that container's
    name and image, which Zeek only knew from the map's live re-read. A container whose address
    Zeek was not seen to read before the action (a --rm one-shot gone in under a second, before
    the next change check) is "not checked": that is the package's documented limit, and the
    scheduler attributes those rows from osquery's events."""
    out = []
    for a in actions:
        if a.container_ip not in z.rows or not a.dest_name:
            continue
        _cid, name, image = z.rows[a.container_ip]
        if a.container_ip not in z.confirmed:
            out.append(check(scenario, "zeek", f"{a.action_id} container_geo row names {name}",
                             not_checked, "container gone before Zeek's next re-read of the map"))
            continue
        lo, hi = a.start - 2, (a.end or a.start) + 5
        rows = [r for r in geo_rows if r.get("id.orig_h") == a.container_ip
                and lo <= float(r.get("ts") or 0) <= hi
                and a.dest_name.lower() in str(r.get("host") or "").lower()]
        good = [r for r in rows if r.get("container_name") == name and r.get("image") == image]
        what = f"{a.action_id} container_geo row names {name} ({image})"
        if good:
            methods = ",".join(sorted({str(r.get("method")) for r in good}))
            out.append(check(scenario, "zeek", what, passed,
                             f"{len(good)} row(s) [{methods}] from the live map re-read"))
        else:
            out.append(check(scenario, "zeek", what, failed,
                             f"{len(rows)} container_geo row(s) from {a.container_ip}, none named"))
    return out
