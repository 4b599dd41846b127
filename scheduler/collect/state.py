"""The scheduler's embedded store: one SQLite file in WAL mode.

Why SQLite: one file, no service, transactional. The property we need most is that a tail
checkpoint (file, inode, offset, line number, TSV header) is committed in the *same transaction* as
everything derived from the lines it covers. Then a crash (kill -9, power loss) can only ever leave
the store at a transaction boundary: either the lines and their checkpoint are both in, or neither
is, and on restart the tailer resumes at the stored offset. No line is lost and none is counted
twice. Work with side effects outside SQLite (alert sinks) must therefore be queued in a table in the
same transaction and delivered from there (outbox), which is the pipeline's job.

Tables owned here:
  checkpoints   one row per followed source (key = stream name or path)
  containers    inventory history per host (scheduler/inventory.py)
  kv            small settings / markers

Other modules add their own tables with `register_schema(ddl)` (at import time, before opening the
store) or `store.ensure_schema(ddl)` on an open store.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from scheduler.collect.fsmode import create_private, tighten_sqlite

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    source      TEXT PRIMARY KEY,   -- a stable key: stream name or the followed path
    path        TEXT NOT NULL,      -- the path being followed
    device      INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    offset      INTEGER NOT NULL,   -- byte offset just after the last consumed line
    lineno      INTEGER NOT NULL,   -- number of lines consumed from this inode
    header      TEXT NOT NULL DEFAULT '',  -- Zeek TSV '#' header lines seen in this file
    fingerprint TEXT NOT NULL DEFAULT '',  -- "<n>:<sha1 of the first n bytes>": detects replacement
    updated     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    host          TEXT NOT NULL,
    container_id  TEXT NOT NULL,
    data          TEXT NOT NULL,    -- JSON of inventory.ContainerState
    first_seen    REAL,
    end_ts        REAL,             -- destroyed / gone, NULL while alive
    PRIMARY KEY (host, container_id)
);
CREATE INDEX IF NOT EXISTS containers_end ON containers(end_ts);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_extra_schemas: list[str] = []


def register_schema(ddl: str) -> None:
    """Add DDL (use CREATE ... IF NOT EXISTS) applied to every store opened afterwards.

    The table-creation hook for other modules (alerts, outbox, windows...): call it at import time.
    """
    if ddl not in _extra_schemas:
        _extra_schemas.append(ddl)


@dataclass(slots=True)
class Checkpoint:
    """Where a followed file was left. `header` holds the TSV '#' lines so a parser can be primed.

    The same record is the tailer's in-memory position (scheduler/tailer.py): what a batch reached
    is exactly what gets committed, so the two cannot drift apart.
    """

    source: str
    path: str
    device: int
    inode: int
    offset: int
    lineno: int
    header: list[str] = field(default_factory=list)
    fingerprint: str = ""
    updated: float = 0.0


class StateStore:
    """One SQLite database file. Thread-safe by a lock around a single connection.

    Use `with store.transaction() as conn:` for a unit of work (BEGIN IMMEDIATE ... COMMIT, rolled
    back on exception).
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            # 0600 in a 0700 directory (if we create it), whatever the umask: the state holds
            # the inventory, held records and alerts on their way out (docs/scheduler.md)
            create_private(self.path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transaction bounds are explicit
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                    timeout=30.0)
        self.conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        self.conn.execute("PRAGMA journal_mode=WAL")
        if str(path) != ":memory:":
            tighten_sqlite(self.path)   # -wal/-shm of a database an older version made 0644
        # NORMAL in WAL mode survives process crashes (kill -9) without losing committed work;
        # FULL also survives power loss at the cost of an fsync per commit.
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_BASE_SCHEMA)
        self._migrate()
        for ddl in _extra_schemas:
            self.conn.executescript(ddl)
        self.set_kv_default("schema_version", str(SCHEMA_VERSION))

    def _migrate(self) -> None:
        """Columns added after a store may have been created (ALTER TABLE ADD COLUMN is cheap)."""
        cols = {r["name"] for r in self.conn.execute("PRAGMA table_info(checkpoints)")}
        if "fingerprint" not in cols:
            self.conn.execute("ALTER TABLE checkpoints ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''")

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ensure_schema(self, ddl: str) -> None:
        """Create tables on an open store (idempotent DDL)."""
        with self._lock:
            self.conn.executescript(ddl)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; nested use joins the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth = 0
                self.conn.execute("COMMIT")

    # -- checkpoints ------------------------------------------------------------------------------
    def get_checkpoint(self, source: str) -> Checkpoint | None:
        with self._lock:
            row = self.conn.execute("SELECT * FROM checkpoints WHERE source=?", (source,)).fetchone()
        if row is None:
            return None
        header = json.loads(row["header"]) if row["header"] else []
        return Checkpoint(row["source"], row["path"], row["device"], row["inode"], row["offset"],
                          row["lineno"], header, row["fingerprint"], row["updated"])

    def put_checkpoint(self, cp: Checkpoint, conn: sqlite3.Connection | None = None) -> None:
        """Store a checkpoint; pass the transaction's `conn` to commit it with derived data."""
        import time
        cp.updated = time.time()
        sql = ("INSERT INTO checkpoints(source, path, device, inode, offset, lineno, header, "
               "fingerprint, updated) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(source) DO UPDATE SET "
               "path=excluded.path, device=excluded.device, inode=excluded.inode, "
               "offset=excluded.offset, lineno=excluded.lineno, header=excluded.header, "
               "fingerprint=excluded.fingerprint, updated=excluded.updated")
        args = (cp.source, cp.path, cp.device, cp.inode, cp.offset, cp.lineno,
                json.dumps(cp.header) if cp.header else "", cp.fingerprint, cp.updated)
        if conn is not None:
            conn.execute(sql, args)
        else:
            with self.transaction() as c:
                c.execute(sql, args)

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            rows = self.conn.execute("SELECT source FROM checkpoints ORDER BY source").fetchall()
        return [cp for r in rows if (cp := self.get_checkpoint(r["source"])) is not None]

    # -- containers (inventory history) -----------------------------------------------------------
    def save_container(self, host: str, container_id: str, data: dict[str, Any],
                       first_seen: float | None, end_ts: float | None,
                       conn: sqlite3.Connection | None = None) -> None:
        sql = ("INSERT INTO containers(host, container_id, data, first_seen, end_ts) VALUES (?,?,?,?,?) "
               "ON CONFLICT(host, container_id) DO UPDATE SET data=excluded.data, "
               "first_seen=excluded.first_seen, end_ts=excluded.end_ts")
        args = (host, container_id, json.dumps(data, separators=(",", ":")), first_seen, end_ts)
        if conn is not None:
            conn.execute(sql, args)
        else:
            with self.transaction() as c:
                c.execute(sql, args)

    def load_containers(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self.conn.execute("SELECT host, container_id, data FROM containers").fetchall()
        return [(r["host"], r["container_id"], json.loads(r["data"])) for r in rows]

    def prune_containers(self, before_ts: float, conn: sqlite3.Connection | None = None) -> int:
        """Forget containers that ended before `before_ts` (retention)."""
        sql = "DELETE FROM containers WHERE end_ts IS NOT NULL AND end_ts < ?"
        if conn is not None:
            return conn.execute(sql, (before_ts,)).rowcount
        with self.transaction() as c:
            return c.execute(sql, (before_ts,)).rowcount

    # -- kv -----------------------------------------------------------------------------------------
    def get_kv(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_kv(self, key: str, value: str, conn: sqlite3.Connection | None = None) -> None:
        sql = "INSERT INTO kv(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value"
        if conn is not None:
            conn.execute(sql, (key, value))
        else:
            with self.transaction() as c:
                c.execute(sql, (key, value))

    def set_kv_default(self, key: str, value: str) -> None:
        with self._lock:
            self.conn.execute("INSERT OR IGNORE INTO kv(key, value) VALUES (?,?)", (key, value))
