"""MITRE ATT&CK techniques the rules map to, each spelled out once.

Every rule module (rules, k8s_rules, misuse) names its techniques by id; the record an alert
carries (technique, name, tactic, tactic_id) comes from this one table, so a technique's name or
tactic cannot drift between the host, Kubernetes and misuse rules that share it.
"""
from __future__ import annotations

# id: (name, tactic, tactic id)
TECHNIQUES: dict[str, tuple[str, str, str]] = {
    "T1614": ("System Location Discovery", "Discovery", "TA0007"),
    "T1610": ("Deploy Container", "Defense Evasion", "TA0005"),
    "T1611": ("Escape to Host", "Privilege Escalation", "TA0004"),
    "T1609": ("Container Administration Command", "Execution", "TA0002"),
    "T1059.004": ("Command and Scripting Interpreter: Unix Shell", "Execution", "TA0002"),
    "T1572": ("Protocol Tunneling", "Command and Control", "TA0011"),
    "T1090": ("Proxy", "Command and Control", "TA0011"),
    "T1071": ("Application Layer Protocol", "Command and Control", "TA0011"),
    "T1071.004": ("Application Layer Protocol: DNS", "Command and Control", "TA0011"),
    "T1496": ("Resource Hijacking", "Impact", "TA0040"),
    "T1599": ("Network Boundary Bridging", "Defense Evasion", "TA0005"),
    "T1040": ("Network Sniffing", "Credential Access", "TA0006"),
}


def techniques(*ids: str) -> list[dict[str, str]]:
    """The alert records of these technique ids, in order (a KeyError names an unknown id)."""
    out = []
    for tid in ids:
        name, tactic, tactic_id = TECHNIQUES[tid]
        out.append({"technique": tid, "name": name, "tactic": tactic, "tactic_id": tactic_id})
    return out
