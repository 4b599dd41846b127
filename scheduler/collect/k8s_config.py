"""The `[kubernetes]` table of stowaway.toml: audit sources, rule thresholds, the join.

A dataclass of its own so scheduler/config.py can hold it without importing the source, the
receiver or the rules. Defaults and the reason for each are in docs/kubernetes.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class KubernetesConfig:
    """Kubernetes API server audit events (off unless a source is configured)."""

    # Name of the cluster: the `host` of Kubernetes alerts.
    cluster: str = "kubernetes"
    # The log backend's file (the API server's --audit-log-path); "" = not read.
    audit_log: str = ""
    # The webhook backend's receiver (--audit-webhook-config-file points the API server here).
    webhook: bool = False
    webhook_address: str = "127.0.0.1"
    webhook_port: int = 9443
    webhook_path: str = "/k8s-audit"
    webhook_token_file: str = ""       # bearer token the API server sends; "" = none required
    webhook_tls_cert: str = ""         # "" = plain HTTP (keep it on loopback then)
    webhook_tls_key: str = ""
    webhook_client_ca: str = ""        # require client certificates signed by this CA
    # Rules. Pod churn: more than churn_n pod creates (or deletes) by one requester in one
    # namespace within churn_t_s (same numbers and reasoning as the host-side churn rule).
    churn_n: int = 10
    churn_t_s: float = 60.0
    # The first baseline_s of audit data teach who execs into pods and which images run.
    baseline_s: float = 604800.0
    # Users treated like Kubernetes components (no churn / privileged-workload alerts).
    trusted_users: list[str] = field(default_factory=list)
    # The join: evidence this long after an exec/attach session ended still names its requester.
    join_after_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.audit_log) or self.webhook
