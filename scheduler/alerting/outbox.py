"""The alert outbox: alerts queued in the state DB, then handed to the sinks.

Why a table: the sinks (files, syslog, webhooks) are side effects outside SQLite. An alert is
written to `alert_outbox` in the *same* transaction as the checkpoints and pipeline state that
produced it, and delivered from there afterwards; a crash between the two delivers it on the next
start, and the sinks drop ids they already have. The daemon and replays share this one table
(`source` says which wrote a row); the DDL is part of `scheduler.pipeline.PIPELINE_SCHEMA`.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from scheduler.alerting.alerts import Alert


class AlertOutbox:
    """Queue, list and mark the alerts of the `alert_outbox` table of one StateStore."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @staticmethod
    def add(conn: sqlite3.Connection, alerts: Iterable[Alert], source: str) -> None:
        """Queue alerts inside the caller's transaction; a known id (a replayed alert) is kept."""
        for a in alerts:
            conn.execute("INSERT OR IGNORE INTO alert_outbox(id, time, rule, container, body, "
                         "source) VALUES (?,?,?,?,?,?)",
                         (a.id, a.time, a.rule, a.container.id or a.container.name,
                          a.to_json(), source))

    def pending(self) -> list[Alert]:
        """Undelivered alerts in time order (then id, so the order is stable)."""
        from scheduler.alerting.alerts import alert_from_dict

        rows = self.store.conn.execute(
            "SELECT body FROM alert_outbox WHERE delivered=0 ORDER BY time, id").fetchall()
        return [alert_from_dict(json.loads(r[0])) for r in rows]

    def mark_delivered(self, ids: list[str]) -> None:
        with self.store.transaction() as conn:
            conn.executemany("UPDATE alert_outbox SET delivered=1 WHERE id=?", [(i,) for i in ids])


def deliver_outbox(store: Any, sinks: Any) -> int:
    """Hand undelivered alerts to the sinks, then mark them (sinks drop known ids on a repeat).

    `store` is anything with `pending()` and `mark_delivered(ids)`: an AlertOutbox or a ReplayStore.
    """
    pending = store.pending()
    if not pending:
        return 0
    if sinks is not None:
        sinks.emit(pending)
    store.mark_delivered([a.id for a in pending])
    return len(pending)
