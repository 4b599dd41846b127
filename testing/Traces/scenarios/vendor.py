#!/usr/bin/env python3
"""Copy the fixture scenario captures into the repository, with the labels the btests assert.

A user's clone has no ../shared, so the btests read their own copies: one gzip-compressed pcap
per scenario (byte-identical to the fixture's scenario.pcap once decompressed), the labelled
location-discovery lookups of geo_lookup and churn (labels.tsv, from each scenario's
ground_truth.json ``zeek_evidence``) and the container address map of each scenario in the
format the scheduler writes (``ip container_id container_name image``, from containers.json).

Run from anywhere: ``python testing/Traces/scenarios/vendor.py [FIXTURES_DIR]`` (default
../shared/fixtures/container-scenarios next to the repository). Only used to refresh the copies.
"""
from __future__ import annotations

import gzip
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_FIXTURES = HERE.parents[3] / "shared" / "fixtures" / "container-scenarios"
SCENARIOS = ("benign", "benign_long", "churn", "drift", "geo_lookup")
LABELLED = ("geo_lookup", "churn")
LABEL_FIELDS = ("scenario", "action", "container_ip", "orig_p", "resp_h", "resp_p", "method",
                "host", "container_id", "container_name", "image")
ADDRESS_FIELDS = ("ip", "container_id", "container_name", "image")

log = logging.getLogger("vendor")


def pcap_bytes(scenario_dir: Path) -> bytes:
    """The scenario's pcap, plain (benign_long ships it gzip-compressed)."""
    plain = scenario_dir / "scenario.pcap"
    if plain.is_file():
        return plain.read_bytes()
    return gzip.decompress((scenario_dir / "scenario.pcap.gz").read_bytes())


def evidence_rows(scenario: str, truth: dict) -> list[tuple[str, ...]]:
    """One row per (connection, method) the package must log for a labelled action.

    DNS evidence gives ``dns`` (the query), HTTP ``http`` (the Host header), TLS ``tls`` (SNI).
    """
    rows = []
    for action in truth.get("malicious_actions", []):
        for ev in action.get("zeek_evidence", []):
            names = [("dns", d["query"]) for d in ev.get("dns", [])]
            names += [("http", h["host"]) for h in ev.get("http", [])]
            names += [("tls", s["server_name"]) for s in ev.get("ssl", [])]
            for method, host in dict.fromkeys(names):
                rows.append((scenario, action["action_id"], ev["orig_h"], str(ev["orig_p"]),
                             ev["resp_h"], str(ev["resp_p"]), method, host.lower(),
                             action["container_id"], action["container_name"], action["image"]))
    return rows


def address_rows(containers: dict) -> list[tuple[str, ...]]:
    """The address map the scheduler would have written: one line per container address.

    An address reused by a later container (benign_long's redeploys keep their IPs) keeps the
    container that held it last, as a map rewritten on every inventory change would.
    """
    by_ip: dict[str, tuple[str, ...]] = {}
    for c in sorted(containers["containers"], key=lambda c: c.get("started_ts") or 0):
        ip = c.get("ip_address")
        if ip:
            by_ip[ip] = (ip, c["id"], c["name"], c["image"])
    return [by_ip[ip] for ip in sorted(by_ip, key=lambda s: tuple(int(x) for x in s.split(".")))]


def tsv(fields: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "#fields\t" + "\t".join(fields) + "\n" + "".join("\t".join(r) + "\n" for r in rows)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fixtures = Path(argv[1]) if len(argv) > 1 else DEFAULT_FIXTURES
    if not fixtures.is_dir():
        log.error("fixtures not found: %s", fixtures)
        return 1
    labels: list[tuple[str, ...]] = []
    for scenario in SCENARIOS:
        src = fixtures / scenario
        out = HERE / f"{scenario}.pcap.gz"
        out.write_bytes(gzip.compress(pcap_bytes(src), compresslevel=9, mtime=0))
        containers = json.loads((src / "containers.json").read_text())
        (HERE / f"{scenario}.addresses.tsv").write_text(tsv(ADDRESS_FIELDS,
                                                            address_rows(containers)))
        if scenario in LABELLED:
            labels += evidence_rows(scenario, json.loads((src / "ground_truth.json").read_text()))
        log.info("%s: %s (%d bytes)", scenario, out.name, out.stat().st_size)
    (HERE / "labels.tsv").write_text(tsv(LABEL_FIELDS, labels))
    log.info("labels.tsv: %d rows", len(labels))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
