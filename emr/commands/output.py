"""Where the commands' tables go: standard output, whole.

On a terminal, rich fits a table to the window. Sent to a file or a pipe (an IT person's
`emr terminology load > report.txt`, a cron job's mail), rich assumes 80 columns and cuts
the cells; there the table is written as wide as its content instead.
"""

from __future__ import annotations

import sys

from rich.console import Console

_NOT_A_TERMINAL_WIDTH = 1000


def stdout_console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else _NOT_A_TERMINAL_WIDTH)
