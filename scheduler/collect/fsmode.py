"""Private files: everything the daemon writes is 0600 and every directory it creates 0700,
whatever the umask.

Why: alerts carry full command lines and container details, the state DB holds the inventory and
held records, the spool holds alerts on their way out. A 0644 default would hand all of it to every
local user. Only the address map may be opened up (sources.address_map_mode/group), for a Zeek that
runs as another user and must read it (docs/scheduler.md "Files and permissions").

Existing directories are never changed (a state_db in /tmp must not make /tmp private); existing
files the daemon owns are tightened to 0600 at start (an install upgraded from a version that wrote
0644 files).
"""
from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
DAEMON_UMASK = 0o077
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: str | Path) -> Path:
    """Create `path` and any missing parents as 0700 (chmod after mkdir: mkdir's mode is masked
    by the umask, which could also leave too much). Existing directories are left as they are."""
    p = Path(path)
    missing = []
    cur = p
    while not cur.exists() and cur != cur.parent:
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue                 # someone else made it meanwhile: not ours to change
        os.chmod(d, PRIVATE_DIR)
    return p


def tighten(path: str | Path, mode: int = PRIVATE_FILE) -> bool:
    """chmod an existing regular file we own to `mode` if it allows more; True if changed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return False
    if stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, mode)
        log.info("%s: mode %o -> %o", path, stat.S_IMODE(st.st_mode), mode)
        return True
    return False


def create_private(path: str | Path) -> Path:
    """Make sure `path` exists as a 0600 file (created empty if missing; its directory 0700 if we
    create it). SQLite gives a database's -wal/-shm files the database file's mode, so a state
    DB created this way stays private."""
    p = Path(path)
    private_dir(p.parent)
    # a configured path may be a symlink the operator made on purpose: followed
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    os.close(fd)
    tighten(p)
    return p


def open_private_append(path: str | Path):
    """Text append handle on a 0600 file (created so, whatever the umask)."""
    create_private(path)
    return open(path, "a", encoding="utf-8")


def tighten_sqlite(path: str | Path) -> None:
    """The database and its side files 0600."""
    tighten(path)
    for suffix in SQLITE_SIDE_FILES:
        tighten(f"{path}{suffix}")


def apply_mode(path: str | Path, mode: str | int = PRIVATE_FILE, group: str = "") -> None:
    """Set a file's mode (octal text like "0640" or an int) and, if given, its group by name."""
    m = int(mode, 8) if isinstance(mode, str) else mode
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"group {group!r} does not exist") from None
        os.chown(path, -1, gid)
    os.chmod(path, m)


def prepare_private(paths: Iterable[tuple[str, str, bool]]) -> None:
    """Before the daemon opens anything: the directories of `paths` ((key, path, is_dir) as in
    config.daemon_paths) exist (created 0700), SQLite databases and the JSONL file exist as 0600
    files, and existing ones are tightened to 0600."""
    for key, path, is_dir in paths:
        if is_dir:
            private_dir(path)
            continue
        if key == "sources.address_map":
            private_dir(Path(path).parent)      # its mode is the configured one, set on write
        elif key in ("state_db", "model.windows_db", "sinks.jsonl"):
            create_private(path)
            tighten_sqlite(path)
