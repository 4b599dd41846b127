"""Test helper: build model.records from a recorded fixture scenario directory.

The real pipeline builds these records from osquery results and Zeek logs; the fixture scenarios
carry the host view as JSON (processes.jsonl, events.jsonl, containers.json) plus stock Zeek TSV logs.
This helper does the same join the scheduler does, minimally, so the model tests run on real data:
Zeek records are attributed to the container that held the source address at that time.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from datafiles import exists, open_text, scenario_dir  # scenario_dir: re-exported for the tests
from model.records import ContainerInfo, LifecycleRecord, NetRecord, ProcessRecord

log = logging.getLogger(__name__)


@dataclass
class ScenarioRecords:
    processes: list[ProcessRecord]
    nets: list[NetRecord]
    lifecycle: list[LifecycleRecord]
    containers: list[ContainerInfo]
    by_name: dict[str, list[str]]        # container name -> ids (a redeploy gives two)
    window: tuple[float, float]


def read_zeek_tsv(path: Path) -> Iterator[dict[str, str]]:
    """Minimal reader for Zeek's default ASCII (TSV) logs: `#fields` header, `-` unset."""
    fields: list[str] = []
    with open_text(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("#"):
                if line.startswith("#fields"):
                    fields = line.split("\t")[1:]
                continue
            if not line or not fields:
                continue
            values = line.split("\t")
            yield {k: ("" if v in ("-", "(empty)") else v) for k, v in zip(fields, values)}


def _classifier() -> tuple[Callable[[str], tuple[bool, str]], Callable[[str], str]]:
    """The project's T1614 classifier when it is installed; otherwise no classification.

    Falling back to "not location discovery" keeps these tests about the baseline, not the rules.
    """
    try:
        from osquery_ext import classifier  # type: ignore
    except Exception:  # noqa: BLE001 - any import problem means: not available yet
        log.info("osquery_ext.classifier not available: location_discovery left False")
        return (lambda _c: (False, "")), (lambda _d: "")

    def cmd(c: str) -> tuple[bool, str]:
        try:
            m = classifier.classify_command(c)
            return bool(m.location_discovery), str(getattr(m, "indicator", "") or "")
        except Exception:  # noqa: BLE001
            return False, ""

    def dom(d: str) -> str:
        try:
            m = classifier.match_domain(d) if d else None
            return str(m.service) if m else ""
        except Exception:  # noqa: BLE001
            return ""

    return cmd, dom


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def load_scenario(name: str, host: str = "fixture-host", environment: str = "fixtures") -> ScenarioRecords:
    d = scenario_dir(name)
    classify_cmd, classify_domain = _classifier()
    meta = json.loads((d / "containers.json").read_text())

    containers: list[ContainerInfo] = []
    ip_spans: list[tuple[str, float, float, str, str]] = []
    by_name: dict[str, list[str]] = {}
    for c in meta["containers"]:
        containers.append(ContainerInfo(
            container_id=c["id"], image=c["image"], name=c["name"], host=host,
            image_id=c.get("image_id") or "", created=c.get("created_ts"), environment=environment,
            ip_addresses=[c["ip_address"]] if c.get("ip_address") else []))
        by_name.setdefault(c["name"], []).append(c["id"])
        if c.get("ip_address"):
            end = c.get("removed_ts") or c.get("finished_ts") or float("inf")
            ip_spans.append((c["ip_address"], float(c.get("created_ts") or 0.0), float(end), c["id"], c["image"]))

    def owner(ip: str, ts: float) -> tuple[str, str]:
        best = ("", "")
        best_created = -1.0
        for addr, t0, t1, cid, image in ip_spans:
            if addr == ip and t0 - 0.5 <= ts <= t1 + 0.5 and t0 > best_created:
                best, best_created = (cid, image), t0
        return best

    processes: list[ProcessRecord] = []
    with open_text(d / "processes.jsonl") as fh:
        for line in fh:
            p = json.loads(line)
            if p.get("runtime_bootstrap") or not p.get("container_id"):
                continue
            argv = p.get("cmdline_rewritten") or p.get("cmdline") or []
            cmdline = " ".join(argv) if isinstance(argv, list) else str(argv)
            ld, ind = classify_cmd(cmdline) if cmdline else (False, "")
            processes.append(ProcessRecord(
                ts=float(p.get("start_time") or p["ts"]), container_id=p["container_id"],
                image=p.get("image") or "", pid=int(p["pid"]), ppid=int(p.get("ppid") or 0),
                name=p.get("comm") or "", path=p.get("exe") or "", cmdline=cmdline, host=host,
                location_discovery=ld, indicator=ind))

    lifecycle: list[LifecycleRecord] = []
    action_map = {"remove": "destroy", "died": "die"}
    with open_text(d / "events.jsonl") as fh:
        for line in fh:
            e = json.loads(line)
            if e.get("Type") != "container" or not e.get("ID"):
                continue
            lifecycle.append(LifecycleRecord(
                ts=_ts(e["Time"]), container_id=e["ID"], image=e.get("Image") or "",
                action=action_map.get(e["Status"], e["Status"]), name=e.get("Name") or "", host=host,
                exit_code=e.get("ContainerExitCode")))

    nets: list[NetRecord] = []
    zeek = d / "zeek"

    def add(kind: str, row: dict[str, str], **extra) -> None:
        ts = float(row["ts"])
        cid, image = owner(row["id.orig_h"], ts)
        if not cid:
            return
        nets.append(NetRecord(
            ts=ts, kind=kind, container_id=cid, image=image, orig_h=row["id.orig_h"],
            resp_h=row["id.resp_h"], resp_p=int(row.get("id.resp_p") or 0),
            orig_p=int(row.get("id.orig_p") or 0), uid=row.get("uid", ""), host=host, **extra))

    if exists(zeek / "conn.log"):
        for row in read_zeek_tsv(zeek / "conn.log"):
            add("conn", row, proto=row.get("proto", ""), conn_state=row.get("conn_state", ""),
                bytes_out=int(row.get("orig_bytes") or 0), bytes_in=int(row.get("resp_bytes") or 0))
    if exists(zeek / "dns.log"):
        for row in read_zeek_tsv(zeek / "dns.log"):
            q = row.get("query", "")
            add("dns", row, proto=row.get("proto", ""), domain=q, rcode=row.get("rcode_name", ""),
                geo_service=classify_domain(q))
    if exists(zeek / "http.log"):
        for row in read_zeek_tsv(zeek / "http.log"):
            h = row.get("host", "")
            add("http", row, proto="tcp", domain=h, uri=row.get("uri", ""),
                user_agent=row.get("user_agent", ""), geo_service=classify_domain(h.split(":")[0]))
    if exists(zeek / "ssl.log"):
        for row in read_zeek_tsv(zeek / "ssl.log"):
            sni = row.get("server_name", "")
            add("ssl", row, proto="tcp", domain=sni, geo_service=classify_domain(sni))

    w = meta.get("window") or {}
    window = (float(w.get("start", 0.0)), float(w.get("end", 0.0)))
    nets.sort(key=lambda r: r.ts)
    processes.sort(key=lambda r: r.ts)
    lifecycle.sort(key=lambda r: r.ts)
    return ScenarioRecords(processes, nets, lifecycle, containers, by_name, window)
