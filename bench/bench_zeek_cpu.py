#!/usr/bin/env python3
"""CPU cost of the Stowaway Zeek package: stock Zeek against Zeek with the package, same pcap.

Two captures are built at bench time from the vendored benign_long capture
(testing/Traces/scenarios/benign_long.pcap.gz: 30 minutes, 93,694 packets, real podman
containers, every connection from the container subnet), so no large pcap is committed:

* ``container``: the capture repeated 5 times, each copy shifted by the capture's duration plus
  a minute (468,470 packets, ~49 MB). Every connection is a container's: the package's worst case.
* ``mixed``: the first half of the capture plus 9 copies of it whose container addresses
  (172.17.0.0/16) are rewritten to 192.168.<10+k>.x, interleaved packet by packet (468,470
  packets, ~49 MB): containers are 10 % of the connections, as on a host tap where most traffic
  is the host's own.

For each capture, stock ``zeek -C -r`` and ``zeek -C -r <pkg>`` run as paired, interleaved
runs (the order alternates per pair so drift in machine load hits both sides alike). Each run's
user+sys CPU comes from wait4's rusage (all Zeek threads). Printed: every run, the median paired
ratio (package / stock) and the target. Exit status 1 when a median misses its target
(<= 1.05 container, <= 1.02 mixed).

``--profile`` additionally runs the package once with ``zeek --profile-scripts`` on the container
capture and prints the package's most expensive functions and event handlers.

Usage: .venv/bin/python bench/bench_zeek_cpu.py [--pairs N] [--only container|mixed] [--profile]
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "testing" / "Traces" / "scenarios" / "benign_long.pcap.gz"
PACKAGE = ROOT / "zeek_scripts" / "__load__.zeek"
REPEATS = 5
MIX_COPIES = 9
TARGETS = {"container": 1.05, "mixed": 1.02}
CONTAINER_NET = (172, 17)  # the capture's container subnet, 172.17.0.0/16

log = logging.getLogger("bench_zeek_cpu")

Record = tuple[int, int, bytes]  # (ts_sec, ts_usec, frame); caplen == origlen in these captures


# -- pcap building (pure functions over bytes) ---------------------------------------------------

def read_pcap(raw: bytes) -> tuple[bytes, list[Record]]:
    """The global header and the records of a little-endian microsecond pcap."""
    header = raw[:24]
    if header[:4] != b"\xd4\xc3\xb2\xa1":
        raise ValueError(f"{SOURCE}: not a little-endian microsecond pcap")
    records = []
    off = 24
    while off + 16 <= len(raw):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", raw, off)
        off += 16
        records.append((sec, usec, raw[off:off + incl]))
        off += incl
    return header, records


def write_pcap(path: Path, header: bytes, records: Iterable[Record]) -> int:
    """Write records after ``header``; returns the packet count."""
    n = 0
    with open(path, "wb") as out:
        out.write(header)
        for sec, usec, frame in records:
            out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            out.write(frame)
            n += 1
    return n


def repeated(records: list[Record], copies: int) -> Iterator[Record]:
    """``copies`` back-to-back copies, each shifted by the capture's span plus a minute, so
    connections of one copy are long gone (timed out) when the next starts."""
    span = records[-1][0] - records[0][0] + 60
    for k in range(copies):
        for sec, usec, frame in records:
            yield sec + k * span, usec, frame


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def moved_out_of_containers(frame: bytes, third_octet: int) -> bytes:
    """The frame with every 172.17.x.y IPv4 source/destination moved to 192.168.<third>.y
    (header checksum fixed; Zeek runs with -C, so L4 checksums do not matter). Non-IPv4
    frames (ARP, IPv6) are returned unchanged."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    ip = bytearray(frame[14:14 + ihl])
    changed = False
    for off in (12, 16):
        if ip[off] == CONTAINER_NET[0] and ip[off + 1] == CONTAINER_NET[1]:
            ip[off:off + 3] = bytes((192, 168, third_octet))
            changed = True
    if not changed:
        return frame
    ip[10:12] = b"\x00\x00"
    ip[10:12] = struct.pack("!H", _ipv4_checksum(bytes(ip)))
    return frame[:14] + bytes(ip) + frame[14 + ihl:]


def mixed(records: list[Record], copies: int) -> Iterator[Record]:
    """The capture interleaved with ``copies`` non-container copies of itself, packet by packet
    at the same timestamps (distinct addresses, so distinct connections)."""
    for sec, usec, frame in records:
        yield sec, usec, frame
        for k in range(copies):
            yield sec, usec, moved_out_of_containers(frame, 10 + k)


def build_captures(workdir: Path, only: str | None) -> dict[str, Path]:
    header, records = read_pcap(gzip.decompress(SOURCE.read_bytes()))
    out = {}
    if only in (None, "container"):
        path = workdir / "container.pcap"
        n = write_pcap(path, header, repeated(records, REPEATS))
        log.info("container: %s, %d packets, %.1f MB", path, n, path.stat().st_size / 1e6)
        out["container"] = path
    if only in (None, "mixed"):
        path = workdir / "mixed.pcap"
        n = write_pcap(path, header, mixed(records[:len(records) // 2], MIX_COPIES))
        log.info("mixed: %s, %d packets, %.1f MB", path, n, path.stat().st_size / 1e6)
        out["mixed"] = path
    return out


# -- running Zeek --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    cpu: float       # user + sys seconds, all threads
    maxrss_mb: float
    wall: float


def run_zeek(pcap: Path, with_package: bool, workdir: Path, extra: tuple[str, ...] = ()) -> Run:
    """One ``zeek -C -r`` in a fresh directory; CPU and peak RSS from wait4's rusage."""
    import time

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    argv = ["zeek", "-C", "-r", str(pcap), *extra]
    if with_package:
        argv.append(str(PACKAGE))
    env = dict(os.environ, ZEEK_DNS_FAKE="1", ZEEK_DISABLE_ZEEKYGEN="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err[-2000:]}")
    return Run(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, wall)


def paired(pcap: Path, pairs: int, workdir: Path) -> list[tuple[Run, Run]]:
    """``pairs`` (stock, package) runs; even pairs run stock first, odd pairs package first."""
    results = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {}
        for with_package in order:
            got[with_package] = run_zeek(pcap, with_package, workdir / f"run-{int(with_package)}")
        stock, pkg = got[False], got[True]
        print(f"  pair {i + 1}: stock {stock.cpu:6.2f} s  package {pkg.cpu:6.2f} s  "
              f"ratio {pkg.cpu / stock.cpu:.3f}  (rss {stock.maxrss_mb:.0f} / "
              f"{pkg.maxrss_mb:.0f} MB)", flush=True)
        results.append((stock, pkg))
    return results


def median_ratio(results: list[tuple[Run, Run]]) -> float:
    return statistics.median(pkg.cpu / stock.cpu for stock, pkg in results)


# -- profile ---------------------------------------------------------------------------------------

def profile(pcap: Path, workdir: Path, top: int = 15) -> None:
    """The package's script functions and handlers by CPU, from ``zeek --profile-scripts``."""
    prof = workdir / "prof.out"
    run_zeek(pcap, True, workdir / "profile", extra=(f"--profile-scripts={prof}",))
    rows = []
    for line in prof.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 6 or "zeek_scripts" not in line:
            continue
        rows.append(parts)
    print("package functions/handlers by CPU (--profile-scripts: function, location, type, "
          "calls, total CPU s, CPU s in callees):")
    for parts in sorted(rows, key=lambda p: _float(p[4]), reverse=True)[:top]:
        print("  " + "\t".join(parts[:6]))


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 0.0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--only", choices=sorted(TARGETS))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", type=Path, help="build/run in this directory and keep it")
    args = ap.parse_args(argv)
    if shutil.which("zeek") is None:
        print("zeek is not on PATH: nothing to measure")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-zeek-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        captures = build_captures(workdir, args.only)
        missed = []
        for name, pcap in captures.items():
            print(f"{name}: {pcap.stat().st_size / 1e6:.0f} MB, {args.pairs} paired runs "
                  f"(user+sys CPU)", flush=True)
            results = paired(pcap, args.pairs, workdir)
            ratio = median_ratio(results)
            stock = statistics.median(s.cpu for s, _ in results)
            pkg = statistics.median(p.cpu for _, p in results)
            ok = ratio <= TARGETS[name]
            print(f"{name}: median stock {stock:.2f} s, package {pkg:.2f} s, median paired "
                  f"ratio {ratio:.3f}x (target <= {TARGETS[name]:.2f}x) "
                  f"{'OK' if ok else 'MISSED'}", flush=True)
            if not ok:
                missed.append(name)
        if args.profile and "container" in captures:
            profile(captures["container"], workdir)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
