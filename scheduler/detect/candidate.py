"""The record a rule hands to alerting: a `Candidate` (one detection hit) about a `ContainerRef`.

It lives in detect, not beside the `Alert` schema, so the rules that produce it need nothing from
the alerting stage: imports point down the flow (alerting imports this, never the other way).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Rule names (stable: they are in every alert and in `stowaway alerts --rule`).
RULE_LOCATION = "location_discovery"
RULE_CHURN = "container_churn"
RULE_RISKY = "risky_container_config"
RULE_ANOMALY = "behaviour_anomaly"
RULES = (RULE_LOCATION, RULE_CHURN, RULE_RISKY, RULE_ANOMALY)

UNKNOWN_CONTAINER_NAME = "container unknown"


@dataclass
class ContainerRef:
    """Who the alert is about. id "" with name "container unknown" = an address in a container
    subnet that no known container held at the time."""

    id: str = ""
    name: str = ""
    image: str = ""
    runtime: str = ""
    address: str = ""


@dataclass
class Candidate:
    """One detection hit, before merging and suppression."""

    rule: str
    ts: float
    host: str
    container: ContainerRef
    severity: str
    title: str
    evidence: list[dict[str, Any]]
    signature: str = ""            # refines the suppression key (e.g. an anomaly's top feature)
    score: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        ckey = self.container.id or f"unknown:{self.container.address}"
        return (self.host, ckey, self.rule, self.signature)
