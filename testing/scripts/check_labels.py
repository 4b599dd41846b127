#!/usr/bin/env python3
"""Check Zeek's container_geo.log and notice.log against a scenario's labelled lookups.

Used by the scenario btests (stdlib only, so it runs with any python3). A baseline diff alone
would also pass if the baseline had been recorded with a lookup missing; this checks the output
against the ground truth of the capture itself (testing/Traces/scenarios/labels.tsv):

* every labelled (connection, method, host) has its container_geo row;
* no container_geo row is left over that no label accounts for;
* every labelled lookup is covered by a Stowaway::Container_Geo_Lookup notice from its
  container for its service, raised at or before the lookup (the package suppresses repeats
  per container address and service, so a second lookup of one service shares the first one's
  notice);
* with --with-map, each row carries the labelled container id, name and image.

Prints one summary line (what the btest baseline holds) and exits 1 listing every mismatch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOTE = "Stowaway::Container_Geo_Lookup"


def read_zeek_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a Zeek ASCII log (or a labels file) as dicts keyed by the #fields names."""
    fields: list[str] = []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#fields\t"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            if not fields:
                raise SystemExit(f"{path}: data line before the #fields header")
            values = line.split("\t")
            if len(values) != len(fields):
                raise SystemExit(f"{path}: {len(values)} columns, header has {len(fields)}")
            rows.append(dict(zip(fields, values)))
    return rows


def conn_key(row: dict[str, str], ip_field: str) -> tuple[str, ...]:
    return (row[ip_field], row.get("orig_p") or row["id.orig_p"],
            row.get("resp_h") or row["id.resp_h"], row.get("resp_p") or row["id.resp_p"],
            row["method"], row["host"])


def check(labels: list[dict[str, str]], geo: list[dict[str, str]],
          notices: list[dict[str, str]], with_map: bool) -> list[str]:
    """Every mismatch between the labels and the logs, as readable lines (empty: all good)."""
    problems = []
    rows = {conn_key(r, "id.orig_h"): r for r in geo}
    for label in labels:
        key = conn_key(label, "container_ip")
        row = rows.pop(key, None)
        if row is None:
            problems.append(f"{label['action']}: no container_geo row for {key}")
            continue
        if with_map:
            for field in ("container_id", "container_name", "image"):
                if row[field] != label[field]:
                    problems.append(f"{label['action']}: {field} {row[field]!r}, "
                                    f"labelled {label[field]!r}")
        if not any(_covers(n, label["container_ip"], row["service"], float(row["ts"]))
                   for n in notices):
            problems.append(f"{label['action']}: no notice from {label['container_ip']} "
                            f"for {row['service']} at or before {row['ts']}")
    for key in rows:
        problems.append(f"unlabelled container_geo row {key}")
    return problems


def _covers(notice: dict[str, str], src: str, service: str, ts: float) -> bool:
    """Is ``notice`` the package's notice for ``service`` from ``src``, raised by ``ts``?
    (notice.log has no identifier column; the message names the service: "... via ipinfo (".)"""
    return (notice["note"] == NOTE and notice["src"] == src
            and f" via {service} (" in notice["msg"] and float(notice["ts"]) <= ts)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", type=Path)
    ap.add_argument("scenario")
    ap.add_argument("geo_log", type=Path)
    ap.add_argument("notice_log", type=Path)
    ap.add_argument("--with-map", action="store_true",
                    help="also require the labelled container id, name and image on each row")
    args = ap.parse_args(argv)
    labels = [r for r in read_zeek_tsv(args.labels) if r["scenario"] == args.scenario]
    if not labels:
        print(f"{args.labels}: no labels for scenario {args.scenario}", file=sys.stderr)
        return 1
    geo = read_zeek_tsv(args.geo_log)
    notices = read_zeek_tsv(args.notice_log)
    problems = check(labels, geo, notices, args.with_map)
    for p in problems:
        print(p, file=sys.stderr)
    actions = sorted({label["action"] for label in labels})
    print(f"{args.scenario}: {len(labels)} labelled rows of {len(actions)} actions; "
          f"{len(geo)} container_geo rows; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
