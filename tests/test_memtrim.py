"""scheduler/memtrim.py: the daemon's timer hands freed heap back to the OS."""
from __future__ import annotations

import platform

import pytest

from scheduler.memtrim import release_free_memory


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
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
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
