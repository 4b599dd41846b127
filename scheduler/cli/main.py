"""The `stowaway` command line.

Each subcommand lives in its own module that exposes `add_parser(subparsers)`; the module's parser
sets `func` (called with the parsed args, returning an exit status). Keeping registration in one
list here means `stowaway --help` shows every command, and one broken optional dependency does not
take the whole CLI down: a command whose module fails to import is listed with the reason.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, one-line help shown if the module cannot be imported)
SUBCOMMAND_MODULES: list[tuple[str, str]] = [
    ("scheduler.cli.cmd_match", "match-command / match-domain: test the T1614 classifier"),
    ("scheduler.cli.cmd_pipeline", "run / demo / replay / alerts: the daemon and batch work"),
    ("scheduler.cli.cmd_model", "train / models / rollback / compile: per-image baselines"),
    ("scheduler.cli.cmd_recording", "convert: a fixture-layout scenario into a recording"),
    ("scheduler.cli.cmd_emulate", "emulate: run the adversary emulation and check each detection"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stowaway",
        description=(
            "Stowaway detects adversaries hiding in containers: location discovery (MITRE T1614) "
            "from inside containers, container churn and behaviour that departs from an image's "
            "baseline. It joins osquery (host) and Zeek (network) records per container."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, fallback in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not built yet / not shipped in this install
            _add_broken(sub, module_name, fallback, exc)
            continue
        except ImportError as exc:
            _add_broken(sub, module_name, fallback, exc)
            continue
        module.add_parser(sub)
    return parser


def _add_broken(sub, module_name: str, fallback: str, exc: Exception) -> None:
    name = fallback.split()[0]
    p = sub.add_parser(name, help=f"(unavailable: {exc})")

    def fail(_args: argparse.Namespace) -> int:
        print(f"stowaway: {module_name} cannot be loaded: {exc}", file=sys.stderr)
        return 2

    p.set_defaults(func=fail)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        # Started as a program, not called from other Python code: the process is this command
        # alone (scheduler/memtrim.py says what that changes, and why).
        from scheduler.memtrim import start_command

        start_command(getattr(args, "command", "") or "",
                      dask=bool(getattr(args, "dask_scheduler", None) or
                                getattr(args, "dask_local", None)))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from scheduler.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:   # a user error in a config file: its lines, no traceback
        for line in str(exc).splitlines():
            print(f"stowaway {args.command}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
