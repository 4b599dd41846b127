"""Hand memory the daemon has freed back to the operating system.

Why: every collect the daemon parses a few MiB of Zeek log into column arrays, builds window input
and state JSON from them, and drops it all. Python frees those objects (the Python heap stays flat
under tracemalloc), but glibc keeps the freed chunks in its arenas and pyarrow's allocator keeps
its own pages, so the process's RSS creeps up over hours although nothing is live
(bench/bench_daemon_ingest.py measures it). Asking both to release what they hold bounds RSS by
what the daemon really uses. It costs a walk of the free lists, milliseconds, so the daemon does it
on its own timer (`daemon.trim_interval_s`), not every collect.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    return getattr(_libc, "malloc_trim", None) if _libc else None


def release_free_memory() -> dict[str, bool]:
    """Return freed heap pages to the OS: glibc (malloc_trim(0)) and pyarrow's memory pool, where
    each is present. Says which released something (glibc) or was asked (pyarrow)."""
    out = {"glibc": False, "pyarrow": False}
    trim = _malloc_trim()
    if trim is not None:
        try:
            out["glibc"] = bool(trim(0))
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
