"""scheduler/memtrim.py: the daemon's timer hands freed heap back to the OS; a replay keeps it
for its next batch."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.memtrim import (configure_allocator, configure_batch_allocator,
                               release_free_memory)

MiB = 1 << 20


def _libc() -> ctypes.CDLL:
    """glibc's malloc and free, typed for pointers."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_goes_back_to_the_os() -> None:
    """Many small blocks allocated then freed stay in glibc's arenas (RSS unchanged by the free)
    until trimmed; the trim returns most of them."""
    libc = _libc()
    # fragments of 1 KiB below glibc's mmap threshold, freed except every 64th one (which keeps
    # the heap from shrinking at its top by itself)
    blocks = [libc.malloc(1024) for _ in range(200_000)]
    for b in blocks:
        ctypes.memset(b, 1, 1024)
    keep = blocks[::64]
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    before = _rss_kib()
    done = release_free_memory()
    after = _rss_kib()
    for b in keep:
        libc.free(b)
    assert done["glibc"] is True
    assert before - after > 100 * 1024, f"RSS {before} -> {after} KiB"


def test_pyarrow_pool_is_asked() -> None:
    pytest.importorskip("pyarrow")
    assert release_free_memory()["pyarrow"] is True


def _in_fresh_process(func: str, configured: bool) -> dict:
    """This module's `func(configured)` run in a fresh interpreter (allocator settings are per
    process and must come before the allocations), with no allocator settings from the
    environment; its JSON result."""
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    code = ("import json, sys; sys.path[:0] = sys.argv[3:]; import test_memtrim; "
            "print(json.dumps(getattr(test_memtrim, sys.argv[1])(sys.argv[2] == 'configured')))")
    out = subprocess.run([sys.executable, "-c", code, func,
                          "configured" if configured else "plain", str(here), str(here.parent)],
                         env=env, check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def _freed_column_blocks(configured: bool) -> dict:
    """Run in a fresh child process (allocator settings are per process and must come before
    the allocations): free 1 MiB column-sized blocks that sit between small live ones, after an
    earlier large free raised glibc's threshold; how much RSS the frees gave back."""
    took = configure_allocator() if configured else {}
    libc = _libc()
    b = libc.malloc(8 * MiB)        # a large block mmapped and freed: glibc raises its threshold
    ctypes.memset(b, 1, 8 * MiB)
    libc.free(b)
    big, pins = [], []
    for _ in range(150):            # each 1 MiB block followed by a small live one
        p = libc.malloc(MiB)
        ctypes.memset(p, 1, MiB)
        big.append(p)
        pins.append(libc.malloc(2048))
    before = _rss_kib()
    for p in big:
        libc.free(p)
    return {"took": took, "freed_kib": before - _rss_kib()}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_configured_allocator_gives_freed_column_blocks_back_at_once() -> None:
    """With the daemon's allocator settings, MiB-sized blocks freed between live small ones go
    back to the OS on free; with glibc's defaults (its threshold raised by an earlier large
    free) they stay resident until a trim."""
    plain, configured = (_in_fresh_process("_freed_column_blocks", c) for c in (False, True))
    assert configured["took"] == {"arena_max": True, "mmap_threshold": True}
    assert configured["freed_kib"] > 120 * 1024, configured
    assert plain["freed_kib"] < 30 * 1024, plain


def test_operator_environment_wins(monkeypatch) -> None:
    """MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ set by the operator are left alone."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert configure_allocator() == {"arena_max": False, "mmap_threshold": False}


def _refaults(configured: bool) -> dict:
    """Run in a fresh child process: 100 blocks of 1 MiB (a batch's column arrays) allocated,
    written, freed, then allocated and written again, as the next batch does; the page faults of
    that second round."""
    import resource

    took = configure_batch_allocator() if configured else {}
    libc = _libc()

    def one_batch() -> list[int]:
        blocks = [libc.malloc(MiB) for _ in range(100)]
        for p in blocks:
            ctypes.memset(p, 1, MiB)
        return blocks

    for p in one_batch():
        libc.free(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = one_batch()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    for p in blocks:
        libc.free(p)
    return {"took": took, "faults": faults}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_batch_allocator_keeps_freed_batches_for_the_next() -> None:
    """With the replay's allocator, the memory one batch frees serves the next without a page
    fault; with glibc's defaults the freed top of the heap goes back to the OS and every page of
    the next batch faults again (100 MiB: 25,600 pages)."""
    plain, configured = (_in_fresh_process("_refaults", c) for c in (False, True))
    assert configured["took"] == {"mmap_threshold": True, "trim_threshold": True}
    assert configured["faults"] < 1000, configured
    assert plain["faults"] > 100 * 256 // 2, plain


def test_operator_environment_wins_for_batches(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert configure_batch_allocator() == {"mmap_threshold": False, "trim_threshold": False}


# ---- libraries the daemon never uses ---------------------------------------------------------

_RUN_ONCE = """
import json, sys
import numpy as np
import pyarrow as pa
from scheduler.cli.main import main
sys.argv = ["stowaway", "run", "--once", "-c", sys.argv[1]]
rc = main() if {as_command} else main(sys.argv[1:])
# pyarrow's own first conversions work without pandas (its shim sees no pandas installed)
text = pa.array(np.array(["a", "b"] * 200, dtype=object), type=pa.string())
out = {{"rc": rc, "pandas": sys.modules.get("pandas") is not None,
        "converted": text.dictionary_encode().indices.to_numpy().tolist()[:3]}}
try:
    import pandas  # noqa: F401
except ModuleNotFoundError:
    out["import"] = "refused"
print(json.dumps(out))
"""


def _run_once(tmp_path: Path, as_command: bool) -> dict:
    import gzip

    repo = Path(__file__).resolve().parents[1]
    zeek = tmp_path / "zeek"
    zeek.mkdir(exist_ok=True)
    src = repo / "scheduler" / "demo_data" / "benign_long" / "zeek" / "http.log.gz"
    with gzip.open(src, "rt") as fh:
        (zeek / "http.log").write_text("".join(line for _, line in zip(range(3000), fh)))
    st = tmp_path / ("cmd" if as_command else "call")
    cfg = tmp_path / f"{st.name}.toml"
    cfg.write_text(f'state_db = "{st}/state.db"\n[sources]\nzeek_log_dir = "{zeek}"\n'
                   f'address_map = "{st}/map.tsv"\n[sinks]\njsonl = "{st}/alerts.jsonl"\n'
                   f'[model]\ndir = "{st}/models"\n')
    r = subprocess.run([sys.executable, "-c", _RUN_ONCE.format(as_command=as_command), str(cfg)],
                       cwd=repo, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_daemon_as_a_command_keeps_pandas_out(tmp_path: Path) -> None:
    """pyarrow imports pandas on its first conversion when pandas is installed (~50 MiB); the
    daemon started as a command reads the same Zeek log without it. Called from Python code,
    nothing is kept out (the control: the same run imports pandas)."""
    assert _run_once(tmp_path, as_command=True) == {"rc": 0, "pandas": False,
                                                    "converted": [0, 1, 0], "import": "refused"}
    assert _run_once(tmp_path, as_command=False) == {"rc": 0, "pandas": True,
                                                     "converted": [0, 1, 0]}


_REPLAY = """
import json, sys
from scheduler.cli.main import main
sys.argv = ["stowaway", "replay", sys.argv[1], "--out", sys.argv[2], "--no-progress", "--fresh"]
rc = main() if {as_command} else main(sys.argv[1:])
print(json.dumps({{"rc": rc, "pandas": sys.modules.get("pandas") is not None}}))
"""


@pytest.mark.parametrize("as_command", [True, False])
def test_the_replay_as_a_command_keeps_pandas_out(tmp_path: Path, as_command: bool) -> None:
    """`stowaway replay` started as a program reads its logs without pandas, as the daemon does;
    the same replay called from Python code imports it (pyarrow's first conversion)."""
    repo = Path(__file__).resolve().parents[1]
    rec = repo / "scheduler" / "demo_data" / "geo_lookup"
    r = subprocess.run([sys.executable, "-c", _REPLAY.format(as_command=as_command), str(rec),
                        str(tmp_path / "alerts.jsonl")],
                       cwd=repo, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"rc": 0, "pandas": not as_command}
    assert (tmp_path / "alerts.jsonl").read_text().count("location_discovery") >= 2
