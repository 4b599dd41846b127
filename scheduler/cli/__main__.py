"""`python -m scheduler.cli` runs the `stowaway` command line."""
import sys

from scheduler.cli.main import main

sys.exit(main())
