"""Where the recorded data that tests and benches read lives, and how to open it.

Why one module: every test and bench used to build its own path to a fixtures checkout beside the
repository, so a plain clone could not run them. The data now ships in tests/data/ (see its
README.md for provenance); this is the only place that knows that root. The environment variable
STOWAWAY_FIXTURES still points everything at another copy with the same layout (for example a
full fixtures checkout with uncompressed files).

Vendored files are gzip-compressed where that saves space, so a reader asks for the plain name
(`zeek/conn.log`) and gets whichever of `conn.log` / `conn.log.gz` exists.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import IO

ENV = "STOWAWAY_FIXTURES"
DEFAULT_ROOT = Path(__file__).resolve().parent / "data"


def data_root() -> Path:
    """tests/data of this repository, or the directory STOWAWAY_FIXTURES names."""
    env = os.environ.get(ENV)
    return Path(env) if env else DEFAULT_ROOT


def scenario_dir(name: str) -> Path:
    """One recorded container scenario (benign, benign_long, churn, drift, geo_lookup)."""
    return data_root() / "container-scenarios" / name


def scenarios_dir() -> Path:
    return data_root() / "container-scenarios"


def zeek_traces_dir() -> Path:
    """Stock Zeek logs of Zeek's own public test traces, one folder per trace."""
    return data_root() / "zeek-traces"


def zat_dir() -> Path:
    """Third-party Zeek logs from the zat project (TSV, json/, gzip and damaged gzip)."""
    return data_root() / "zat-data"


def resolve(path: Path) -> Path:
    """`path` if it exists, else its `.gz` sibling; a clear error naming both when neither does."""
    path = Path(path)
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"test data missing: neither {path} nor {gz.name} exists "
                            f"(data root {data_root()}, override with {ENV})")


def exists(path: Path) -> bool:
    """Whether `path` or its `.gz` sibling exists."""
    path = Path(path)
    return path.exists() or path.with_name(path.name + ".gz").exists()


def open_text(path: Path) -> IO[str]:
    """Open a data file for reading text, plain or gzip-compressed."""
    real = resolve(path)
    if real.suffix == ".gz":
        return gzip.open(real, "rt", encoding="utf-8")
    return open(real, "rt", encoding="utf-8")


def read_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of a data file, plain or gzip-compressed."""
    real = resolve(path)
    if real.suffix == ".gz":
        with gzip.open(real, "rb") as fh:
            return fh.read()
    return real.read_bytes()


def read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8")
