"""``stowaway match-command`` and ``stowaway match-domain``: try the T1614 classifier by hand.

Why a CLI: users tune detections against their own command lines and DNS names (from shell
history, audit logs, Zeek's dns.log) before rolling the extension out. One JSON object per input
line keeps the output easy to pipe into ``jq`` or a test.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable, TextIO

from osquery_ext.classifier import classify_command, match_domain

_COMMAND_EPILOG = """\
examples:
  stowaway match-command "docker run --rm alpine curl ipinfo.io"
  stowaway match-command 'sh -c "nslookup checkip.amazonaws.com; sleep 1"'
  history | sed 's/^ *[0-9]* *//' | stowaway match-command
  stowaway match-command --only-positive < commands.txt

output (one JSON object per command):
  {"command": ..., "location_discovery": true, "indicator": "ipinfo.io", "tool": "curl",
   "service": "ipinfo", "category": "ip_geolocation"}
category is ip_geolocation, ip_echo, dns_echo or cloud_metadata. With --argv each stdin line is
a JSON array (an argv list, as in processes.jsonl) instead of a shell command line.
exit status: 0, or 2 on bad input; with -e/--exit-status 1 when no command matched.
"""

_DOMAIN_EPILOG = """\
examples:
  stowaway match-domain www.ipinfo.io        -> {"geo_service": true, "service": "ipinfo", ...}
  stowaway match-domain notipinfo.io         -> {"geo_service": false, ...}
  zeek-cut query < dns.log | stowaway match-domain --only-positive

Names match on label boundaries: an entry ipinfo.io covers ipinfo.io and any.sub.ipinfo.io,
never notipinfo.io. The list is osquery_ext/data/geo_services.tsv (shared with the Zeek package).
exit status: 0; with -e/--exit-status 1 when no name matched.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register match-command and match-domain on the ``stowaway`` parser."""
    pc = subparsers.add_parser(
        "match-command",
        help="classify command lines as location discovery (T1614) or not",
        description="Classify a command line: does it look up the host's public address or "
                    "location (IP-echo / geolocation services, DNS tricks such as "
                    "myip.opendns.com, cloud instance-metadata region/zone queries)? Reads one "
                    "command per line from stdin when COMMAND is omitted.",
        epilog=_COMMAND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pc.add_argument("command", nargs="?", metavar="COMMAND",
                    help="the command line, as one shell-quoted string")
    pc.add_argument("--argv", action="store_true",
                    help="stdin lines are JSON arrays (argv lists) rather than shell text")
    pc.add_argument("--only-positive", action="store_true",
                    help="print only the commands that match")
    pc.add_argument("-e", "--exit-status", action="store_true",
                    help="exit 1 when no command matched (like grep)")
    pc.set_defaults(func=run_match_command)

    pd = subparsers.add_parser(
        "match-domain",
        help="is a DNS name an IP-echo / geolocation service?",
        description="Look a DNS name up in Stowaway's list of IP-echo, IP-geolocation and "
                    "DNS-echo services. Reads one name per line from stdin when NAME is omitted.",
        epilog=_DOMAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pd.add_argument("name", nargs="?", metavar="NAME", help="the DNS name, e.g. api.ipify.org")
    pd.add_argument("--only-positive", action="store_true",
                    help="print only the names that match")
    pd.add_argument("-e", "--exit-status", action="store_true",
                    help="exit 1 when no name matched (like grep)")
    pd.set_defaults(func=run_match_domain)


def command_result(command: str | list[str]) -> dict[str, object]:
    """The JSON object printed for one command."""
    out: dict[str, object] = {"command": command}
    out.update(classify_command(command).to_dict())
    return out


def domain_result(name: str) -> dict[str, object]:
    """The JSON object printed for one DNS name."""
    m = match_domain(name)
    return {"name": name, "geo_service": m is not None,
            "service": m.service if m else None,
            "category": m.category if m else None,
            "domain": m.domain if m else None}


def _lines(stream: TextIO) -> Iterable[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _emit(obj: dict[str, object], out: TextIO) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")


def run_match_command(args: argparse.Namespace, stdin: TextIO | None = None,
                      stdout: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    inputs: Iterable[str | list[str]]
    if args.command is not None:
        inputs = [args.command]
    elif args.argv:
        def parsed() -> Iterable[list[str]]:
            for n, line in enumerate(_lines(stdin), start=1):
                try:
                    val = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"stdin line {n}: not JSON: {exc}") from None
                if not isinstance(val, list) or not all(isinstance(a, str) for a in val):
                    raise ValueError(f"stdin line {n}: expected a JSON array of strings")
                yield val
        inputs = parsed()
    else:
        inputs = _lines(stdin)
    matched = False
    try:
        for cmd in inputs:
            res = command_result(cmd)
            matched = matched or bool(res["location_discovery"])
            if res["location_discovery"] or not args.only_positive:
                _emit(res, stdout)
    except ValueError as exc:
        print(f"stowaway match-command: {exc}", file=sys.stderr)
        return 2
    stdout.flush()
    return 1 if args.exit_status and not matched else 0


def run_match_domain(args: argparse.Namespace, stdin: TextIO | None = None,
                     stdout: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    names = [args.name] if args.name is not None else (ln.strip() for ln in _lines(stdin))
    matched = False
    for name in names:
        res = domain_result(name)
        matched = matched or bool(res["geo_service"])
        if res["geo_service"] or not args.only_positive:
            _emit(res, stdout)
    stdout.flush()
    return 1 if args.exit_status and not matched else 0
