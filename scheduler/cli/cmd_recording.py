"""`stowaway convert`: a scenario in the fixture layout becomes a recording.

The fixture layout (containers.json, events.jsonl, processes.jsonl, zeek/) is what a capture lab
writes; replay, the demo and the tests read recordings (meta.json, osquery/, zeek/; see
docs/recordings.md). Converting is a separate, explicit step so a replay never guesses.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from scheduler.collect.recording import (DEFAULT_HOST, convert_scenario, is_fixture_layout)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a fixture-layout scenario directory into a recording",
        description="Build a recording (meta.json, osquery/osqueryd.results.log.gz, zeek/) from a "
                    "scenario directory in the fixture layout (containers.json, events.jsonl, "
                    "processes.jsonl[.gz], zeek/*.log). The host view becomes osqueryd results "
                    "lines of the extension's tables; the Zeek logs are copied.",
        epilog="example:\n  stowaway convert lab/geo_lookup rec/geo_lookup\n"
               "  stowaway replay rec/geo_lookup --train scheduler/demo_data/benign_long",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="scenario directory in the fixture layout")
    p.add_argument("out", help="recording directory to write (must not exist, unless --force)")
    p.add_argument("--host", default=DEFAULT_HOST, help="host name of the recording "
                   "(default: %(default)s)")
    p.add_argument("--zeek-format", choices=("tsv", "json"), default="tsv",
                   help="which of the scenario's Zeek logs to copy (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        print(f"stowaway convert: {src}: no such directory", file=sys.stderr)
        return 2
    if (src / "meta.json").is_file():
        print(f"stowaway convert: {src}: already a recording (has meta.json); replay it as is",
              file=sys.stderr)
        return 2
    if not is_fixture_layout(src):
        print(f"stowaway convert: {src}: not a fixture-layout scenario (needs containers.json and "
              f"events.jsonl or processes.jsonl[.gz])", file=sys.stderr)
        return 2
    if out.exists():
        if not args.force:
            print(f"stowaway convert: {out}: exists (use --force to replace it)", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    try:
        counts = convert_scenario(src, out, host=args.host, zeek_format=args.zeek_format)
    except (KeyError, ValueError, OSError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        print(f"stowaway convert: {src}: cannot convert: {exc!r}", file=sys.stderr)
        return 2
    print(json.dumps({"recording": str(out), **counts}))
    return 0
