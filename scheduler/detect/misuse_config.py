"""Names of the named misuse rules; their settings (`[detection.misuse]` in stowaway.toml) are
`scheduler.config.MisuseConfig`, which the config stage owns (config imports no rule). Every
default there is documented with its reason in docs/alerts.md ("Named rules"); the numbers were
checked against the bundled recordings: benign_long (30 min, 9 containers), benign, and the
emulated attacks in tests/data/misuse/.
"""
from __future__ import annotations

from scheduler.config import MisuseConfig  # noqa: F401  (the settings live with the others)

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
