"""Scheduler configuration: `stowaway.toml`, read with tomllib, every key optional.

Why a dataclass tree with defaults rather than a dict: the daemon, the demo and the tests all build a
`Config` the same way (`load_config(path)` or `Config()`), so a missing key can never mean two
different things in two places. The defaults below are the documented ones (docs/scheduler.md and
`stowaway.example.toml`); the churn thresholds are justified against the recorded fixtures there.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.collect.k8s_config import KubernetesConfig

log = logging.getLogger(__name__)


@dataclass
class SourcesConfig:
    """Where records come from."""

    # "results_log": read osqueryd's filesystem-logger results; "thrift": query the extension's
    # tables directly through the osquery extension socket (single host without osqueryd).
    osquery_mode: str = "results_log"
    osquery_results_log: str = "/var/log/osquery/osqueryd.results.log"
    # thrift mode: the extension-manager socket the scheduler serves (it plays osqueryd's part);
    # with osquery_spawn_extension it starts `stowaway-osquery-extension` on it and restarts it.
    osquery_socket: str = "/var/osquery/osquery.em"
    osquery_spawn_extension: bool = True
    zeek_log_dir: str = "/opt/zeek/logs/current"
    zeek_streams: list[str] = field(
        default_factory=lambda: ["conn", "dns", "http", "ssl", "container_geo", "stratum"])
    zeek_format: str = "auto"          # auto | tsv | json
    # The address→container map that the Zeek package reads (written by the scheduler).
    address_map: str = "/var/lib/stowaway/address_map.tsv"


@dataclass
class MisuseConfig:
    """Named misuse rules: on/off, thresholds, per-image exceptions."""

    # Rules switched off (names from MISUSE_RULES). Off means no candidate at all.
    disabled: list[str] = field(default_factory=list)
    # Per-image exceptions: image (fnmatch pattern) -> rules that image may trigger without an
    # alert, e.g. {"docker.io/library/haproxy*" = ["tunnel"]} for a proxy that relays by design.
    allow: dict[str, list[str]] = field(default_factory=dict)

    # Beaconing: at least beacon_min_conns connections to one destination whose intervals
    # (a missed beat counts as two intervals of one period) have a coefficient of variation of
    # at most beacon_max_cv. 8 beats is ~40 s at a 5 s period; CV 0.10 tolerates a few percent of
    # scheduling noise (emulated beacons: CV < 0.02) but not the 1.5-2.5 s random health-check
    # sleep of benign_long's web ring (CV ~0.14).
    beacon_min_conns: int = 8
    beacon_max_cv: float = 0.10
    beacon_min_period_s: float = 1.0      # faster than this is a stream or a retry storm
    beacon_max_period_s: float = 3600.0
    beacon_max_missed_share: float = 0.25  # at most 1 in 4 intervals may span missed beats
    beacon_history: int = 24              # connections kept per (container, destination)
    # Destinations never judged as beacons, per image (fnmatch) -> entries: a domain, an IP,
    # "ip:port", "*:port" or a CIDR. Image "*" applies to all. Learned baselines (training
    # recordings) add the destinations each image already contacted.
    beacon_allow: dict[str, list[str]] = field(default_factory=dict)

    # DNS tunnelling: at least dns_min_names distinct names under one parent domain within
    # dns_window_s whose subdomain part has a label of >= dns_label_len characters and an
    # entropy >= dns_entropy bits/char. A 32-hex-digit label scores ~3.6; names like
    # db.svc.internal or a CDN host repeated do not count (not distinct, not long).
    dns_window_s: float = 120.0
    dns_min_names: int = 10
    dns_label_len: int = 24
    dns_entropy: float = 3.3

    # Unexpected images: registries allowed (empty: not checked) and images known (fnmatch; empty:
    # not checked). flag_images_without_baseline: an image the trained baselines never saw.
    allowed_registries: list[str] = field(default_factory=list)
    known_images: list[str] = field(default_factory=list)
    flag_images_without_baseline: bool = False

    # Spoofed source: records from a container-subnet address that no container ever held,
    # at least spoof_min_records within spoof_window_s (one stray packet is not enough).
    spoof_min_records: int = 3
    spoof_window_s: float = 60.0

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled


@dataclass
class DetectionConfig:
    """Rule thresholds and alert shaping."""

    window_s: float = 60.0             # feature window length (anomaly scoring)
    # Churn: more than churn_n creates (or destroys) of one image on one host within churn_t s.
    # The churn fixture runs 40 creates/min of one image; benign_long's rolling redeploy is 2
    # replacements in 15 s and one restart. 10 per 60 s sits 4x above normal operations and 4x
    # below the attack.
    churn_n: int = 10
    churn_t_s: float = 60.0
    # Host and network evidence for one container within merge_s of the alert's first evidence
    # go into one alert; the alert is written once merge_s of data time (or of wall time in the
    # daemon) has passed.
    merge_s: float = 10.0
    # After an alert, the same (container, rule, signature) stays quiet for suppression_s.
    suppression_s: float = 300.0
    # Daemon: a Zeek record from a container subnet whose container osquery has not reported
    # yet is held this long (retried on every collect) before it alerts as "container unknown".
    attribution_hold_s: float = 30.0
    risky_config: bool = True
    anomaly: bool = True
    # Container subnets besides osquery_ext/data/container_subnets.tsv (CIDRs): records from them
    # that no known container held are "container unknown" (and, repeated, a spoofed source).
    container_subnets: list[str] = field(default_factory=list)
    # Named misuse rules (reverse shell, tunnels, beaconing, ...): scheduler/detect/misuse.py.
    misuse: MisuseConfig = field(default_factory=MisuseConfig)


@dataclass
class WebhookConfig:
    url: str = ""
    spool_dir: str = "/var/lib/stowaway/spool"
    timeout_s: float = 5.0
    max_attempts: int = 5              # per flush; the spool keeps the rest for the next flush
    backoff_s: float = 0.5             # doubles each attempt
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SinksConfig:
    jsonl: str = "/var/lib/stowaway/alerts.jsonl"   # "" disables
    stdout: bool = False
    syslog: str = ""                   # "" off; "/dev/log" or "host:port" (UDP)
    syslog_facility: str = "local0"
    webhook: WebhookConfig = field(default_factory=WebhookConfig)


@dataclass
class ModelConfig:
    dir: str = "/var/lib/stowaway/models"
    # Feature windows the daemon scores are stored here; `stowaway train` (which looks in
    # <models>/windows.db by default) and the daily retrain read them back. "" = <dir>/windows.db.
    windows_db: str = ""

    @property
    def windows_path(self) -> str:
        return self.windows_db or str(Path(self.dir) / "windows.db")
    retrain_hour_utc: int = 3          # daily retrain per environment at this hour
    # An image needs this many training windows for its own baseline; fewer: the environment-wide
    # fallback (cold start). Same default as model.baseline.DEFAULT_MIN_WINDOWS and `stowaway train`.
    min_windows: int = 50


@dataclass
class RetentionConfig:
    days: float = 14.0                 # prune windows, seen-alert ids, inventory history


@dataclass
class MetricsConfig:
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 9464


@dataclass
class DaemonConfig:
    collect_interval_s: float = 5.0
    prune_interval_s: float = 3600.0
    # Sources deliver a little out of order (osquery reports on its schedule, Zeek writes a
    # connection when it ends): a window closes once data time is this far past its end, and
    # when the sources go quiet data time follows the wall clock from the last record.
    lag_s: float = 10.0
    # 0: retrain daily at model.retrain_hour_utc; > 0: every this many seconds instead.
    retrain_interval_s: float = 0.0


@dataclass
class Config:
    environment: str = "default"
    host: str = ""                     # "" = this machine's hostname
    state_db: str = "/var/lib/stowaway/state.db"
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file names an unknown key or gives a value of the wrong type."""


def _merge(obj: Any, data: dict[str, Any], where: str) -> Any:
    """Overlay `data` on dataclass `obj`, refusing unknown keys (a typo must not pass silently)."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {where}{key}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a table")
            _merge(current, value, f"{where}{key}.")
            continue
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}{key} must be true or false")
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}{key} must be a number")
            value = type(current)(value) if isinstance(current, float) else value
        elif isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{where}{key} must be a string")
        elif isinstance(current, list) and not isinstance(value, list):
            raise ConfigError(f"{where}{key} must be a list")
        elif isinstance(current, dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}{key} must be a table")
        setattr(obj, key, value)
    return obj


def config_from_dict(data: dict[str, Any]) -> Config:
    return _merge(Config(), data, "")


def load_config(path: str | Path | None) -> Config:
    """Read a TOML file over the defaults; None gives the defaults."""
    if path is None:
        return Config()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    cfg = config_from_dict(data)
    log.info("config loaded from %s", path)
    return cfg


def validate(cfg: Config) -> list[str]:
    """Return human-readable problems (empty when fine); the daemon refuses to start on any."""
    problems = []
    if cfg.sources.osquery_mode not in ("results_log", "thrift", "none"):
        problems.append("sources.osquery_mode must be results_log, thrift or none")
    if cfg.sources.zeek_format not in ("auto", "tsv", "json"):
        problems.append("sources.zeek_format must be auto, tsv or json")
    d = cfg.detection
    if d.window_s <= 0 or d.churn_t_s <= 0 or d.churn_n < 1:
        problems.append("detection.window_s, churn_t_s must be > 0 and churn_n >= 1")
    if d.merge_s < 0 or d.suppression_s < 0:
        problems.append("detection.merge_s and suppression_s must be >= 0")
    for net in d.container_subnets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"detection.container_subnets: {net!r} is not a CIDR")
    k = cfg.kubernetes
    if k.webhook and not (0 <= k.webhook_port < 65536):
        problems.append("kubernetes.webhook_port out of range")
    if k.webhook_tls_key and not k.webhook_tls_cert:
        problems.append("kubernetes.webhook_tls_key needs webhook_tls_cert")
    if k.churn_n < 1 or k.churn_t_s <= 0 or k.baseline_s < 0:
        problems.append("kubernetes.churn_n >= 1, churn_t_s > 0, baseline_s >= 0")
    if cfg.metrics.enabled and not (0 < cfg.metrics.port < 65536):
        problems.append("metrics.port out of range")
    return problems
