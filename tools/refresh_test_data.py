#!/usr/bin/env python3
"""Rebuild the vendored test data in tests/data/ from a full fixtures checkout.

Why: the tests and benches must run from a plain clone, so the real recordings they read are
copied into the repository. This script is the one place that knows where they came from
(a `shared/fixtures` checkout beside the repository, `../shared/fixtures` seen from the repo
root); run it again when the fixtures change, then commit the result.

It copies only the files some test or bench reads (MANIFEST below; tests/data/README.md says
why each is there) and gzip-compresses the bulky ones that every reader also accepts as `.gz`.
Compression is deterministic (no name, mtime 0, level 9), so an unchanged fixture gives a
byte-identical file and git shows no diff.

    python tools/refresh_test_data.py [--src DIR] [--check]

--check rewrites nothing: it exits 1 and names every vendored file whose content differs from
its source (compared after decompression) or that is missing.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("refresh")

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
DEFAULT_SRC = DATA.parents[1].parent / "shared" / "fixtures"

SCENARIOS = ("benign", "benign_long", "churn", "drift", "geo_lookup")
# Read as plain text by a reader that does not accept .gz (the fixture converter in
# scheduler.collect.recording reads these three and raw/inspect_raw.jsonl by their plain names).
SCENARIO_PLAIN = ("containers.json", "events.jsonl", "ground_truth.json", "raw/inspect_raw.jsonl")
# Read through readers that accept a .gz sibling: stored compressed.
SCENARIO_GZ = ("processes.jsonl",
               "zeek/conn.log", "zeek/dns.log", "zeek/http.log", "zeek/ssl.log", "zeek/files.log",
               "zeek/x509.log",
               "zeek/json/conn.log", "zeek/json/dns.log", "zeek/json/http.log", "zeek/json/ssl.log")
# Stock Zeek logs per trace: the streams the pipeline reads, plus the trace's provenance note.
TRACE_FILES = ("conn.log", "dns.log", "http.log", "ssl.log", "SOURCE.txt")


@dataclass(frozen=True)
class Item:
    src: Path          # the file in the fixtures checkout (may itself be .gz)
    dst: Path          # the vendored file
    compress: bool     # gzip a plain source on the way in


def _source(path: Path) -> Path | None:
    """The fixture file, plain or already compressed (benign_long ships some files as .gz)."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else None


def manifest(src: Path, dst: Path) -> list[Item]:
    """Every vendored file and where it comes from; optional files are listed only if present."""
    items: list[Item] = []
    for scen in SCENARIOS:
        s, d = src / "container-scenarios" / scen, dst / "container-scenarios" / scen
        if not s.is_dir():
            raise SystemExit(f"refresh: scenario folder missing: {s}")
        for rel in SCENARIO_PLAIN:
            items.append(Item(s / rel, d / rel, compress=False))
        for rel in SCENARIO_GZ:
            found = _source(s / rel)
            if found is not None:
                items.append(Item(found, d / (rel + ".gz"), compress=found.suffix != ".gz"))
    traces = src / "zeek-traces"
    for trace in sorted(p for p in traces.iterdir() if p.is_dir()):
        for name in TRACE_FILES:
            if (trace / name).exists():
                items.append(Item(trace / name, dst / "zeek-traces" / trace.name / name, False))
    zat = src / "zat-data"
    for f in sorted(zat.rglob("*")):
        if f.is_file():
            items.append(Item(f, dst / "zat-data" / f.relative_to(zat), False))
    return items


def _gzip_bytes(data: bytes) -> bytes:
    import io
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as fh:
        fh.write(data)
    return buf.getvalue()


def _content(path: Path) -> bytes:
    """Decompressed content, for comparing a vendored file with its source."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError):
            return path.read_bytes()     # zat's deliberately damaged gzip: compare raw bytes
    return path.read_bytes()


def write(item: Item) -> None:
    item.dst.parent.mkdir(parents=True, exist_ok=True)
    if item.compress:
        item.dst.write_bytes(_gzip_bytes(item.src.read_bytes()))
    else:
        shutil.copyfile(item.src, item.dst)


def differs(item: Item) -> bool:
    if not item.dst.exists():
        return True
    if item.compress:
        return _content(item.dst) != item.src.read_bytes()
    return item.dst.read_bytes() != item.src.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help=f"fixtures checkout (default {DEFAULT_SRC})")
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.src.is_dir():
        print(f"refresh: fixtures not found at {args.src} (use --src)", file=sys.stderr)
        return 2
    items = manifest(args.src, DATA)
    missing = [i.src for i in items if not i.src.exists()]
    if missing:
        print("refresh: source files missing: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2
    stale = [i for i in items if differs(i)]
    if args.check:
        for i in stale:
            print(f"differs: {i.dst.relative_to(DATA)} (from {i.src})")
        print(f"{len(items)} files checked, {len(stale)} differ")
        return 1 if stale else 0
    for i in stale:
        write(i)
    total = sum(i.dst.stat().st_size for i in items)
    log.info("%d files, %d rewritten, %.2f MB vendored", len(items), len(stale), total / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
