"""Hand memory the daemon has freed back to the operating system.

Why: every collect the daemon parses a few MiB of Zeek log into column arrays, builds window input
and state JSON from them, and drops it all. Python frees those objects (the Python heap stays flat
under tracemalloc), but glibc keeps the freed chunks in its arenas and pyarrow's allocator keeps
its own pages, so the process's RSS creeps up over hours although nothing is live
(bench/bench_daemon_ingest.py measures it). Asking both to release what they hold bounds RSS by
what the daemon really uses. It costs a walk of the free lists, milliseconds, so the daemon does it
on its own timer (`daemon.trim_interval_s`, 5 s), not inside the collect.

Two allocator settings at start (`configure_allocator`) keep the freed memory from piling up
between trims. glibc gives each thread that allocates an arena of its own, up to 8 per core, and
the daemon's jobs run on APScheduler's pool threads, so the same column arrays end up spread over
several arenas that each keep their free chunks. And glibc raises its mmap threshold each time a
large mmapped block is freed (up to 32 MiB), after which the collect's MiB-sized column arrays
come from the heap, where freeing them leaves holes, instead of mmap, where freeing them gives the
pages back at once. Two arenas and a fixed 128 KiB threshold: bench_daemon_ingest at 20,000
lines/s went from a median of 427 MiB (max 508, a 100 MiB saw-tooth between 30 s trims) to 315 MiB
(max 327) with the 5 s trim, and the daemon's CPU per line did not rise.

A batch run (`stowaway replay`, `configure_batch_allocator`) wants the opposite. It reads
batch after batch of the same size as fast as it can, and what one batch frees the next one
needs again. With glibc's defaults the heap's top is handed back to the OS as soon as 128 KiB
of it is free, and every page taken again costs a page fault, about 1 µs on this VM. That is
about 2,000 faults per 100,000 http lines in steady state, and more in a fresh process, where
the threshold has not risen yet. Keeping freed memory in the heap (mmap threshold 32 MiB,
glibc's own ceiling for it; trim threshold 128 MiB) removes most of them. Peak RSS is
unchanged: the heap holds what the largest batch needed, which it held anyway. Measured on the
engine path of bench_ingest (12 alternating pairs of fresh processes): on 100,000 http lines
the median went from 40.3 to 37.6 ms and the page faults from 5,700 to 4,100; the reader alone
went from 1.9x to 2.6x zat's lines/s. On 1,000,000 lines (5 pairs) the time did not change
beyond the noise (329 and 337 ms), and the faults went from 9,900-13,900 to 4,400.

`start_command` is what a process that is one stowaway command does first. The CLI calls it when
started as a program, and the benches call it when they time a command's work in a child.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None


def _glibc() -> Any:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None (musl, macOS)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    return _libc if _libc and hasattr(_libc, "malloc_trim") else None


#: mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def configure_allocator(arenas: int = ARENA_MAX,
                        mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> dict[str, bool]:
    """Cap glibc's arenas and fix its mmap threshold (see the module docstring). Call it before
    the daemon starts threads: an arena is made when a thread first allocates. Says which
    setting glibc took; elsewhere (musl, macOS) nothing is set. An operator's MALLOC_ARENA_MAX /
    MALLOC_MMAP_THRESHOLD_ environment variables win: glibc read them at start-up."""
    return _mallopt({"arena_max": ("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
                     "mmap_threshold": ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD,
                                        mmap_threshold)})


def _mallopt(settings: dict[str, tuple[str, int, int]]) -> dict[str, bool]:
    """mallopt each of `settings` (name -> (the environment variable that overrides it, glibc's
    parameter, value)) unless the operator set its variable; which ones glibc took. Nothing
    without glibc."""
    libc = _glibc()
    return {name: libc is not None and env not in os.environ and bool(libc.mallopt(param, value))
            for name, (env, param, value) in settings.items()}


#: mallopt parameters for a batch run (see the module docstring)
M_TRIM_THRESHOLD = -1
BATCH_MMAP_THRESHOLD_BYTES = 32 << 20
BATCH_TRIM_THRESHOLD_BYTES = 128 << 20


def configure_batch_allocator(mmap_threshold: int = BATCH_MMAP_THRESHOLD_BYTES,
                              trim_threshold: int = BATCH_TRIM_THRESHOLD_BYTES
                              ) -> dict[str, bool]:
    """Keep freed memory in glibc's heap for the next batch (see the module docstring): for a
    process that reads batches and exits, not for the daemon. Says which setting glibc took;
    elsewhere nothing is set. The operator's MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
    win."""
    return _mallopt({"mmap_threshold": ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD,
                                        mmap_threshold),
                     "trim_threshold": ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD,
                                        trim_threshold)})


def start_command(command: str, *, dask: bool = False) -> dict[str, Any]:
    """What a process that runs one stowaway command and nothing else does before the command:
    the daemon (`run`) and the replay (`replay`) keep unused libraries out
    (`keep_unused_libraries_out`); the replay also sets the batch allocator. A replay on a Dask
    cluster keeps pandas, which Dask's serialization may use. The daemon sets its own allocator
    in `daemon.run`, from its config. Returns what was done."""
    out: dict[str, Any] = {}
    if command == "run" or (command == "replay" and not dask):
        out["kept_out"] = keep_unused_libraries_out()
    if command == "replay":
        out["allocator"] = configure_batch_allocator()
    return out


def release_free_memory() -> dict[str, bool]:
    """Return freed heap pages to the OS: glibc (malloc_trim(0)) and pyarrow's memory pool, where
    each is present. Says which released something (glibc) or was asked (pyarrow)."""
    out = {"glibc": False, "pyarrow": False}
    libc = _glibc()
    if libc is not None:
        try:
            out["glibc"] = bool(libc.malloc_trim(0))
        except OSError as exc:      # pragma: no cover - a broken libc binding
            log.debug("malloc_trim failed: %s", exc)
    try:
        import pyarrow as pa        # only if the daemon's reader already loaded it
    except ImportError:
        return out
    pool = pa.default_memory_pool()
    release = getattr(pool, "release_unused", None)
    if release is not None:
        release()
        out["pyarrow"] = True
    return out


#: Libraries the daemon never uses that others import for it when they are installed.
UNUSED_LIBRARIES = ("pandas",)


def keep_unused_libraries_out(names: tuple[str, ...] = UNUSED_LIBRARIES) -> list[str]:
    """Make `import` of each of `names` (and their submodules) raise ModuleNotFoundError in this
    process, unless already imported; returns the names kept out.

    Why: pyarrow imports pandas when it is installed, on its first conversion of an array (its
    pandas shim), and pandas is ~50 MiB of RSS (numpy + pyarrow are 54 MiB here, +pandas 104).
    The daemon converts nothing to pandas; without pandas pyarrow takes its own path. The import
    must fail as a missing package does: a None in sys.modules is handed back as the module by
    pyarrow's compiled import (then `None.__version__` fails), so a finder refuses it instead.
    Only for a process that is the daemon and nothing else (`stowaway run` started as a
    command): other code sharing the interpreter, tests for one, may need the library."""
    kept = tuple(n for n in names if n not in sys.modules)
    if kept:
        sys.meta_path.insert(0, _Refuse(kept))
    return list(kept)


class _Refuse:
    """A meta path finder that refuses some top-level packages (see keep_unused_libraries_out)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is kept out of the stowaway daemon",
                                      name=fullname)
        return None
