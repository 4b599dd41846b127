"""On top, cli: the `stowaway` command line, one module per command group (cmd_*.py)."""
from scheduler.cli.main import SUBCOMMAND_MODULES, build_parser, main

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]
