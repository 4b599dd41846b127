"""The SQLite spool of Kubernetes audit events: one table both audit sources write, one reader.

Why a spool: the webhook backend must be answered only once a batch is safe (the API server drops
a batch it got a 200 for), and the daemon consumes events on its own schedule inside the same
transaction as the alerts and the pipeline state. So the receiver commits each EventList here
before it answers, the file source commits lines here together with its tail checkpoint, and the
daemon reads pending rows, derives what it derives and marks them consumed in one transaction:
a kill -9 anywhere loses nothing and counts nothing twice.

`audit_id` is the primary key, so a batch the API server re-sends (it retries when it got no
answer) and an event that arrives through both the file and the webhook are stored once.

Functions take a `sqlite3.Connection` so the receiver (its own connection, possibly its own
process) and the daemon (the StateStore's connection, inside its transaction) share the code.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

SPOOL_SCHEMA = """
CREATE TABLE IF NOT EXISTS k8s_audit_spool (
    audit_id  TEXT PRIMARY KEY,   -- Event.auditID: one row per request
    ts        REAL NOT NULL,      -- requestReceivedTimestamp, epoch seconds (reading order)
    received  REAL NOT NULL,      -- when the spool got it
    source    TEXT NOT NULL,      -- 'webhook' or 'file'
    body      TEXT NOT NULL,      -- the Event as the API server sent it
    consumed  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS k8s_audit_spool_pending ON k8s_audit_spool(consumed, ts);
CREATE TABLE IF NOT EXISTS k8s_audit_rejects (
    received  REAL NOT NULL,
    source    TEXT NOT NULL,
    reason    TEXT NOT NULL,      -- what was wrong, naming the field
    body      TEXT NOT NULL       -- the first MAX_REJECT_BYTES of what was sent
);
"""

MAX_REJECT_BYTES = 65536


def open_spool(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection of its own (the webhook receiver's): WAL, autocommit, the spool tables.

    FULL by default: a 200 to the API server is a promise, so the commit must survive power loss
    too, not only a killed process."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(SPOOL_SCHEMA)
    return conn


def add_events(conn: sqlite3.Connection, events: Iterable[tuple[str, float, dict[str, Any]]],
               source: str, now: float | None = None) -> tuple[int, int]:
    """Insert (audit_id, ts, event) rows on `conn` (the caller holds the transaction).

    Returns (added, duplicates)."""
    now = time.time() if now is None else now
    added = dup = 0
    for audit_id, ts, ev in events:
        cur = conn.execute(
            "INSERT OR IGNORE INTO k8s_audit_spool(audit_id, ts, received, source, body) "
            "VALUES (?,?,?,?,?)",
            (audit_id, ts, now, source, json.dumps(ev, separators=(",", ":"), sort_keys=True)))
        if cur.rowcount == 1:
            added += 1
        else:
            dup += 1
    return added, dup


def add_reject(conn: sqlite3.Connection, source: str, reason: str, body: bytes | str,
               now: float | None = None) -> None:
    """Keep what was refused (truncated) so an operator can see it after the fact."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    conn.execute("INSERT INTO k8s_audit_rejects(received, source, reason, body) VALUES (?,?,?,?)",
                 (time.time() if now is None else now, source, reason[:500],
                  text[:MAX_REJECT_BYTES]))


def pending(conn: sqlite3.Connection, limit: int = 10_000) -> list[tuple[str, dict[str, Any]]]:
    """Unconsumed events in request time order: [(audit_id, event)]."""
    rows = conn.execute("SELECT audit_id, body FROM k8s_audit_spool WHERE consumed=0 "
                        "ORDER BY ts, audit_id LIMIT ?", (limit,)).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


def mark_consumed(conn: sqlite3.Connection, audit_ids: Iterable[str]) -> None:
    conn.executemany("UPDATE k8s_audit_spool SET consumed=1 WHERE audit_id=?",
                     [(a,) for a in audit_ids])


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per state, for tests, metrics and `stowaway` status lines."""
    total, done = conn.execute("SELECT COUNT(*), COALESCE(SUM(consumed), 0) "
                               "FROM k8s_audit_spool").fetchone()
    rejects = conn.execute("SELECT COUNT(*) FROM k8s_audit_rejects").fetchone()[0]
    return {"events": int(total), "consumed": int(done), "pending": int(total) - int(done),
            "rejects": int(rejects)}


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Forget consumed events (and rejects) received before `before`. The auditID stays a
    dedupe key for as long as its row is kept, so this runs with the retention period."""
    n = conn.execute("DELETE FROM k8s_audit_spool WHERE consumed=1 AND received < ?",
                     (before,)).rowcount
    conn.execute("DELETE FROM k8s_audit_rejects WHERE received < ?", (before,))
    return n
