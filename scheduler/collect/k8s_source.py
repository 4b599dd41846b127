"""The daemon's Kubernetes audit source: the log file and/or the webhook, through one spool.

    --audit-log-path file --(AuditTailer: lines + checkpoint, one transaction)--> k8s_audit_spool
    webhook EventList POST --(AuditWebhookServer: commit, then 200)-------------> k8s_audit_spool
    k8s_audit_spool --(take: pending rows -> OrchestrationRecord)--> pipeline
                    <-(mark_consumed, in the collect transaction with alerts and state)--

Both producers dedupe on auditID at the spool's primary key, so an event that arrives twice (a
re-sent batch, the same cluster feeding both backends) is one record.
"""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from scheduler.collect import k8s_spool
from scheduler.collect.k8s_audit import (AuditEventError, AuditStats, AuditTailer,
                                         OrchestrationRecord, parse_event, parse_time)
from scheduler.collect.k8s_webhook import AuditWebhookServer, WebhookSettings

log = logging.getLogger(__name__)


def webhook_settings(cfg: Any) -> WebhookSettings:
    """The `[kubernetes]` webhook keys -> WebhookSettings (the token is read from its file)."""
    token = ""
    if cfg.webhook_token_file:
        try:
            token = Path(cfg.webhook_token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"kubernetes.webhook_token_file: cannot read "
                             f"{cfg.webhook_token_file}: {exc}") from None
        if not token:
            raise ValueError(f"kubernetes.webhook_token_file: {cfg.webhook_token_file} is empty")
    return WebhookSettings(address=cfg.webhook_address, port=int(cfg.webhook_port),
                           path=cfg.webhook_path, token=token, tls_cert=cfg.webhook_tls_cert,
                           tls_key=cfg.webhook_tls_key, client_ca=cfg.webhook_client_ca)


class K8sAuditSource:
    """Owns the audit tailer and the webhook server of one daemon."""

    def __init__(self, cfg: Any, store: Any, stats: AuditStats | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.stats = stats if stats is not None else AuditStats()
        store.ensure_schema(k8s_spool.SPOOL_SCHEMA)
        self.tailer = AuditTailer(cfg.audit_log, store, stats=self.stats) if cfg.audit_log else None
        self.server: AuditWebhookServer | None = None
        if cfg.webhook:
            self.server = AuditWebhookServer(webhook_settings(cfg), store.path, stats=self.stats)
            self.server.start()

    def spool_file(self, max_batches: int = 10) -> int:
        """Move new audit-log lines into the spool, each batch with its checkpoint."""
        if self.tailer is None:
            return 0
        n = 0
        for _ in range(max_batches):
            batch = self.tailer.poll()
            if not batch.lines:
                break
            rows = []
            for ev in batch.items:
                try:
                    ts = parse_time(ev.get("requestReceivedTimestamp"),
                                    f"{self.tailer.path}: requestReceivedTimestamp")
                except AuditEventError as exc:
                    self.stats.malformed += 1
                    log.warning("%s (event skipped)", exc)
                    continue
                rows.append((ev["auditID"], ts, ev))
            try:
                with self.store.transaction() as conn:
                    _, dup = k8s_spool.add_events(conn, rows, "file")
                    self.tailer.commit(batch, conn)
            except BaseException:
                self.tailer.rewind()
                raise
            self.stats.duplicates += dup
            n += len(rows)
        return n

    def take(self, limit: int = 10_000) -> tuple[list[str], list[OrchestrationRecord]]:
        """Pending spooled events as records; every id returned must be marked consumed in the
        caller's transaction (`k8s_spool.mark_consumed`), including those that gave no record."""
        with self.store.transaction() as conn:
            rows = k8s_spool.pending(conn, limit)
        ids, recs = [], []
        for audit_id, ev in rows:
            ids.append(audit_id)
            try:
                rec = parse_event(ev, self.cfg.cluster)
            except Exception as exc:  # noqa: BLE001 - one broken event never stops the source
                self.stats.malformed += 1
                log.warning("k8s audit spool: %s (event skipped)", exc)
                continue
            if rec is None or not rec.action:
                self.stats.not_relevant += 1
                continue
            self.stats.records += 1
            recs.append(rec)
        return ids, recs

    def bad_input(self) -> int:
        """Malformed lines and events and refused (unauthorized) webhook posts, since start."""
        tail = (self.tailer.bad_lines + self.tailer.io_errors) if self.tailer is not None else 0
        return self.stats.malformed + self.stats.unauthorized + tail

    @staticmethod
    def mark_consumed(conn: sqlite3.Connection, ids: list[str]) -> None:
        k8s_spool.mark_consumed(conn, ids)

    def prune(self, before: float, conn: sqlite3.Connection) -> int:
        return k8s_spool.prune(conn, before)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
