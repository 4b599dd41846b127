"""Thresholds and exceptions of the named misuse rules (`[detection.misuse]` in stowaway.toml).

A dataclass of its own so scheduler/config.py can hold it without importing the rules. Every
default below is documented with its reason in docs/alerts.md ("Named rules"); the numbers were
checked against the bundled recordings: benign_long (30 min, 9 containers), benign, and the
emulated attacks in tests/data/misuse/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RULE_REVERSE_SHELL = "reverse_shell"
RULE_TUNNEL = "tunnel"
RULE_DNS_TUNNEL = "dns_tunnel"
RULE_BEACON = "beaconing"
RULE_MINER = "cryptomining"
RULE_ESCAPE = "container_escape"
RULE_NEW_IMAGE = "unexpected_image"
RULE_RAW_SOCKET = "raw_socket"
RULE_SPOOFED_SOURCE = "spoofed_source"
MISUSE_RULES = (RULE_REVERSE_SHELL, RULE_TUNNEL, RULE_DNS_TUNNEL, RULE_BEACON, RULE_MINER,
                RULE_ESCAPE, RULE_NEW_IMAGE, RULE_RAW_SOCKET, RULE_SPOOFED_SOURCE)


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
