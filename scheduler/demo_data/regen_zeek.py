"""Regenerate the demo recordings' Zeek logs with the real Stowaway Zeek package.

Why: the recordings' stock logs came from a plain Zeek, so the demo never showed what the
package writes (``container_geo.log``, conn.log's ``container`` field). This runs
``zeek -C -r -`` with ``zeek_scripts/`` over each vendored scenario capture
(``testing/Traces/scenarios/<scenario>.pcap.gz``) and that scenario's address map (the file the
scheduler writes live, ``Stowaway::container_addresses_file``), then puts conn/dns/http/ssl and
container_geo into ``scheduler/demo_data/<scenario>/zeek/`` as ``.log.gz`` (gzip mtime 0). The
recordings' other files (files.log, x509.log, osquery, ground truth) are left as they are.

Zeek uids differ per run, so the output is not byte-stable; everything else is.
The ``k8s_*`` recordings copy their source's Zeek logs: rebuild them afterwards with
``python -m scheduler.collect.k8s_recording build`` (``--k8s`` here does it).

    .venv/bin/python scheduler/demo_data/regen_zeek.py [--scenario geo_lookup] [--k8s]
"""
from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("regen_zeek")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scheduler" / "demo_data"
SCENARIOS_DIR = ROOT / "testing" / "Traces" / "scenarios"
PACKAGE = ROOT / "zeek_scripts"
SCENARIOS = ("benign", "benign_long", "churn", "drift", "geo_lookup")
STREAMS = ("conn", "dns", "http", "ssl", "container_geo")


def zeek_command(address_map: Path) -> list[str]:
    """The Zeek invocation: read the pcap from stdin, load the package, point it at the map."""
    return ["zeek", "-C", "-r", "-", str(PACKAGE),
            f"Stowaway::container_addresses_file={address_map}"]


def run_zeek(pcap_gz: Path, address_map: Path, workdir: Path) -> None:
    """Run the package over a gzip'd pcap in `workdir` (Zeek writes its logs there)."""
    # The captures are small (benign_long is ~10 MB unpacked): feed them whole, as zcat would.
    proc = subprocess.run(zeek_command(address_map), input=gzip.decompress(pcap_gz.read_bytes()),
                          cwd=workdir, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(f"zeek failed on {pcap_gz} (exit {proc.returncode}): {err}")


def write_gz(src: Path, dst: Path) -> None:
    """gzip `src` to `dst` with mtime 0 (no timestamp in the header), written atomically."""
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            shutil.copyfileobj(fin, gz)
    tmp.replace(dst)


def place_logs(workdir: Path, zeek_dir: Path) -> dict[str, int]:
    """Copy the package's streams into the recording; return data lines per stream written.

    A stream Zeek did not write (no SSL in benign, no lookup in benign) leaves no file, and a
    stale copy of it from an earlier run is removed so the recording matches this run."""
    counts: dict[str, int] = {}
    zeek_dir.mkdir(parents=True, exist_ok=True)
    for stream in STREAMS:
        out = zeek_dir / f"{stream}.log.gz"
        src = workdir / f"{stream}.log"
        if not src.exists():
            if out.exists():
                out.unlink()
            continue
        write_gz(src, out)
        with open(src, encoding="utf-8", errors="replace") as fh:
            counts[stream] = sum(1 for line in fh if line and not line.startswith("#"))
    return counts


def regen(scenario: str, demo: Path = DEMO, scenarios_dir: Path = SCENARIOS_DIR) -> dict[str, int]:
    """Regenerate one recording's Zeek logs; return the line counts."""
    pcap = scenarios_dir / f"{scenario}.pcap.gz"
    amap = scenarios_dir / f"{scenario}.addresses.tsv"
    for p in (pcap, amap):
        if not p.exists():
            raise FileNotFoundError(f"{scenario}: missing {p}")
    with tempfile.TemporaryDirectory(prefix=f"regen-zeek-{scenario}-") as tmp:
        run_zeek(pcap, amap.resolve(), Path(tmp))
        return place_logs(Path(tmp), demo / scenario / "zeek")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=SCENARIOS,
                    help="only this scenario (repeatable); default: all five")
    ap.add_argument("--k8s", action="store_true",
                    help="then rebuild the k8s_* recordings that copy these logs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("zeek") is None:
        print("zeek not on PATH", file=sys.stderr)
        return 2
    for s in args.scenario or SCENARIOS:
        counts = regen(s)
        print(f"{s}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.k8s:
        from scheduler.collect import k8s_recording
        return k8s_recording.main(["build"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
