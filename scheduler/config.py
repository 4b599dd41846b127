"""Scheduler configuration: `stowaway.toml`, read with tomllib, every key optional.

Why a dataclass tree with defaults rather than a dict: the daemon, the demo and the tests all build a
`Config` the same way (`load_config(path)` or `Config()`), so a missing key can never mean two
different things in two places. The defaults below are the documented ones (docs/scheduler.md and
`stowaway.example.toml`); the churn thresholds are justified against the recorded fixtures there.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import os
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
    # Replay and backfill: read, inflate and parse Zeek files ahead in threads while the engine
    # works (a second core: 0.8-0.9x the time for 1.05-1.1x the CPU). false where every core is
    # busy already (one Dask worker per core), where the threads would only cost CPU.
    read_ahead: bool = True
    # The address→container map that the Zeek package reads (written by the scheduler).
    address_map: str = "/var/lib/stowaway/address_map.tsv"
    # Its mode and group: 0600 by default like every file the daemon writes. A Zeek running as
    # another user needs e.g. address_map_mode = "0640" and address_map_group = "zeek" (and the
    # directory searchable by that group: docs/scheduler.md "Files and permissions").
    address_map_mode: str = "0600"
    address_map_group: str = ""


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
    # Judge images that have no training destinations (cold start)? Off by default: without the
    # image's baseline every cron job and poller is beacon-shaped (benign_long: 47 alerts). The
    # daemon's model store does not carry training destinations yet, so there the rule only runs
    # with this on (list pollers in beacon_allow); replays trained from recordings have them.
    beacon_cold_start: bool = False
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
    # Longest syslog message sent (bytes, header included). A longer alert is cut with a visible
    # marker and a pointer to its full text (alert id + the JSONL path). rsyslog's default
    # maxMessageSize is 8 KiB; UDP cannot carry more than 65507 bytes.
    syslog_max_bytes: int = 8192
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
    # Bytes of Zeek log one poll of a stream reads (its tail checkpoint is committed with what
    # was derived, once per poll; the collect job polls again while more is waiting, within
    # its interval): 4 MiB is ~24k http lines, what a parse holds at once.
    zeek_poll_bytes: int = 4 << 20
    # Every this many seconds, freed heap goes back to the OS (glibc malloc_trim, pyarrow's
    # pool): parse buffers are freed every collect, and without it RSS creeps up. Non-zero also
    # caps glibc's arenas and fixes its mmap threshold at start (scheduler/memtrim.py). 0: off.
    trim_interval_s: float = 5.0


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
    """A user error in a config file. The message is one line per problem, each naming the file,
    the key and the expected value, so the CLI prints it as is (exit status 2, no traceback)."""


def _clip(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _kind(value: Any) -> str:
    """TOML's name for a value's type, for 'expected X, got Y'."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _unknown_key(key: str, where: str, known: list[str]) -> ConfigError:
    """Unknown key: suggest the closest known one (a typo must not pass silently)."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or \
        difflib.get_close_matches(key.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
    if close:
        match = next(k for k in known if k.lower() == close[0].lower())
        return ConfigError(f"unknown key {where}{key}: did you mean {where}{match}?")
    return ConfigError(f"unknown key {where}{key}: expected one of {', '.join(sorted(known))}")


def _check_items(name: str, annotation: str, value: Any) -> None:
    """Element types of the list/table settings (annotations are strings here)."""
    if annotation == "list[str]":
        bad = next((v for v in value if not isinstance(v, str)), None)
        if bad is not None:
            raise ConfigError(f"{name} = {_clip(value)}: expected an array of strings, "
                              f"got {_kind(bad)} in it")
    elif annotation == "dict[str, str]":
        bad = next((k for k, v in value.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise ConfigError(f"{name}.{bad} = {_clip(value[bad])}: expected a string")
    elif annotation == "dict[str, list[str]]":
        for k, v in value.items():
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{name}.{k} = {_clip(v)}: expected an array of strings")


def _merge(obj: Any, data: dict[str, Any], where: str) -> Any:
    """Overlay `data` on dataclass `obj`, refusing unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in fields:
            raise _unknown_key(key, where, list(fields))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} = {_clip(value)}: expected a table [{name}], "
                                  f"got {_kind(value)}")
            _merge(current, value, f"{name}.")
            continue
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} = {_clip(value)}: expected true or false")
        elif isinstance(current, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} = {_clip(value)}: expected an integer, got "
                                  f"{_kind(value)}")
        elif isinstance(current, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} = {_clip(value)}: expected a number, got "
                                  f"{_kind(value)}")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{name} = {value}: expected a finite number")
        elif isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{name} = {_clip(value)}: expected a string, got {_kind(value)}")
        elif isinstance(current, list) and not isinstance(value, list):
            raise ConfigError(f"{name} = {_clip(value)}: expected an array, got {_kind(value)}")
        elif isinstance(current, dict) and not isinstance(value, dict):
            raise ConfigError(f"{name} = {_clip(value)}: expected a table, got {_kind(value)}")
        if isinstance(value, (list, dict)):
            _check_items(name, str(fields[key].type), value)
        setattr(obj, key, value)
    return obj


def config_from_dict(data: dict[str, Any]) -> Config:
    return _merge(Config(), data, "")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML table of a config file; every way it cannot be read is a one-line ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a TOML file")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (copy stowaway.example.toml)") from None
    except tomllib.TOMLDecodeError as exc:   # its message ends "(at line L, column C)"
        raise ConfigError(f"{p}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}): expected a TOML file") \
            from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None


def load_config(path: str | Path | None) -> Config:
    """Read a TOML file over the defaults; None gives the defaults.

    Raises ConfigError (one line per problem, each starting with the file) for syntax errors,
    unknown keys, wrong types and values out of range."""
    if path is None:
        return Config()
    data = read_toml(path)
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    problems = validate(cfg)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    log.info("config loaded from %s", path)
    return cfg


# ---- ranges --------------------------------------------------------------------------------------
# (key, test, expected) for every numeric setting. Nonsense values are errors, not surprises:
# retention.days = -1 would prune every window, collect_interval_s = 0 would spin.
_Check = tuple[str, Any, str]
_PORT = (lambda v: 1 <= v <= 65535, "a port 1-65535")
_PORT0 = (lambda v: 0 <= v <= 65535, "a port 0-65535 (0: any free port)")
_POS = (lambda v: v > 0, "a number > 0")
_NONNEG = (lambda v: v >= 0, "a number >= 0")
_ONE = (lambda v: v >= 1, "an integer >= 1")

RANGES: list[_Check] = [
    ("detection.window_s", *_POS),
    ("detection.churn_n", *_ONE),
    ("detection.churn_t_s", *_POS),
    ("detection.merge_s", *_NONNEG),
    ("detection.suppression_s", *_NONNEG),
    ("detection.attribution_hold_s", *_NONNEG),
    ("detection.misuse.beacon_min_conns", lambda v: v >= 3, "an integer >= 3 (two intervals)"),
    ("detection.misuse.beacon_max_cv", *_NONNEG),
    ("detection.misuse.beacon_min_period_s", *_POS),
    ("detection.misuse.beacon_max_period_s", *_POS),
    ("detection.misuse.beacon_max_missed_share", lambda v: 0 <= v <= 1, "a share 0-1"),
    ("detection.misuse.beacon_history", lambda v: v >= 3, "an integer >= 3"),
    ("detection.misuse.dns_window_s", *_POS),
    ("detection.misuse.dns_min_names", *_ONE),
    ("detection.misuse.dns_label_len", *_ONE),
    ("detection.misuse.dns_entropy", lambda v: 0 <= v <= 8, "bits per char 0-8"),
    ("detection.misuse.spoof_min_records", *_ONE),
    ("detection.misuse.spoof_window_s", *_POS),
    ("sinks.syslog_max_bytes", lambda v: 480 <= v <= 65507, "bytes 480-65507 (RFC 5426 minimum "
                                                           "to the UDP maximum)"),
    ("sinks.webhook.timeout_s", *_POS),
    ("sinks.webhook.max_attempts", *_ONE),
    ("sinks.webhook.backoff_s", *_NONNEG),
    ("model.retrain_hour_utc", lambda v: 0 <= v <= 23, "an hour 0-23"),
    ("model.min_windows", *_ONE),
    ("retention.days", *_POS),
    ("metrics.port", *_PORT0),
    ("daemon.collect_interval_s", lambda v: v > 0, "seconds > 0"),
    ("daemon.prune_interval_s", lambda v: v > 0, "seconds > 0"),
    ("daemon.lag_s", *_NONNEG),
    ("daemon.trim_interval_s", *_NONNEG),
    ("daemon.zeek_poll_bytes", lambda v: v > 0, "bytes > 0"),
    ("daemon.retrain_interval_s", lambda v: v >= 0,
     "0 (daily at model.retrain_hour_utc) or seconds > 0"),
    ("kubernetes.webhook_port", *_PORT0),
    ("kubernetes.churn_n", *_ONE),
    ("kubernetes.churn_t_s", *_POS),
    ("kubernetes.baseline_s", *_NONNEG),
    ("kubernetes.join_after_s", *_NONNEG),
]


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def syslog_address(target: str) -> str | tuple[str, int]:
    """`sinks.syslog` as a socket address: a path ("/dev/log") or (host, UDP port).

    Raises ValueError saying what was expected."""
    if target.startswith("/"):
        return target
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, "514"
    host = host.strip("[]")
    if not host:
        raise ValueError("expected \"/dev/log\" or \"host:port\", the host is missing")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected \"host:port\" with a UDP port 1-65535, not {port!r}")
    return host, int(port)


def _mode(text: str) -> int:
    """An octal file mode string ("0640") for files only the daemon writes: no execute bits, no
    write for others."""
    value = int(text, 8)
    if value & ~0o777 or value & 0o111 or value & 0o022 or not value & 0o600 == 0o600:
        raise ValueError
    return value


def validate(cfg: Config) -> list[str]:
    """Problems as "key = value: expected ..." lines (empty when fine). load_config raises on any;
    the daemon refuses a Config built in code that has any."""
    problems = []
    for key, ok, expected in RANGES:
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            problems.append(f"{key} = {value!r}: expected {expected}")
    m = cfg.detection.misuse
    if m.beacon_max_period_s < m.beacon_min_period_s:
        problems.append(f"detection.misuse.beacon_max_period_s = {m.beacon_max_period_s!r}: "
                        f"expected >= beacon_min_period_s ({m.beacon_min_period_s!r})")
    if cfg.sources.osquery_mode not in ("results_log", "thrift", "none"):
        problems.append(f"sources.osquery_mode = {cfg.sources.osquery_mode!r}: expected "
                        "\"results_log\", \"thrift\" or \"none\"")
    if cfg.sources.zeek_format not in ("auto", "tsv", "json"):
        problems.append(f"sources.zeek_format = {cfg.sources.zeek_format!r}: expected \"auto\", "
                        "\"tsv\" or \"json\"")
    try:
        _mode(cfg.sources.address_map_mode)
    except ValueError:
        problems.append(f"sources.address_map_mode = {cfg.sources.address_map_mode!r}: expected "
                        "an octal mode like \"0600\" or \"0640\" (owner read-write, no execute, "
                        "no write for group/others)")
    if cfg.sources.address_map_group:
        import grp
        try:
            grp.getgrnam(cfg.sources.address_map_group)
        except KeyError:
            problems.append(f"sources.address_map_group = {cfg.sources.address_map_group!r}: "
                            "expected the name of an existing group")
    if cfg.sinks.syslog:
        try:
            syslog_address(cfg.sinks.syslog)
        except ValueError as exc:
            problems.append(f"sinks.syslog = {cfg.sinks.syslog!r}: {exc}")
    import logging.handlers as _lh
    if cfg.sinks.syslog_facility not in _lh.SysLogHandler.facility_names:
        problems.append(f"sinks.syslog_facility = {cfg.sinks.syslog_facility!r}: expected one of "
                        "local0-local7, daemon, user, auth, ...")
    if cfg.sinks.webhook.url and not cfg.sinks.webhook.url.startswith(("http://", "https://")):
        problems.append(f"sinks.webhook.url = {cfg.sinks.webhook.url!r}: expected an http:// or "
                        "https:// URL")
    for net in cfg.detection.container_subnets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"detection.container_subnets: {net!r} is not a CIDR")
    k = cfg.kubernetes
    if k.webhook_tls_key and not k.webhook_tls_cert:
        problems.append("kubernetes.webhook_tls_key: expected webhook_tls_cert to be set too")
    return problems


# Files and directories the daemon writes (docs/scheduler.md "Files and permissions").
def daemon_paths(cfg: Config) -> list[tuple[str, str, bool]]:
    """(key, path, is_directory) of everything `stowaway run` creates."""
    out = [("state_db", cfg.state_db, False), ("sinks.jsonl", cfg.sinks.jsonl, False),
           ("model.dir", cfg.model.dir, True),
           ("model.windows_db", cfg.model.windows_path, False),
           ("sources.address_map", cfg.sources.address_map, False)]
    if cfg.sinks.webhook.url:
        out.append(("sinks.webhook.spool_dir", cfg.sinks.webhook.spool_dir, True))
    return [(k, p, d) for k, p, d in out if p]


def check_paths(cfg: Config) -> list[str]:
    """Problems with the daemon's own paths, found before anything is opened: a path whose
    directory cannot be created (a file in the way, no permission), or a file that is a directory.
    Missing directories are fine: the daemon creates them (0700)."""
    problems = []
    for key, path, is_dir in daemon_paths(cfg):
        if key == "model.windows_db" and not cfg.model.windows_db:
            continue                        # inside model.dir: said once, for model.dir
        p = Path(path)
        if p.exists():
            if is_dir and not p.is_dir():
                problems.append(f"{key} = {path!r}: expected a directory, it is a file")
            elif not is_dir and p.is_dir():
                problems.append(f"{key} = {path!r}: expected a file path, it is a directory")
            continue
        parent = p if is_dir else p.parent
        anc = parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            problems.append(f"{key} = {path!r}: expected a path in a directory, but {anc} is "
                            "not a directory")
        elif not os.access(anc, os.W_OK | os.X_OK):
            what = "directory" if anc == parent else f"missing directory {parent} under"
            problems.append(f"{key} = {path!r}: cannot create it: the {what} {anc} is not "
                            "writable by this user")
    return problems
