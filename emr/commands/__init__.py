"""`emr` subcommands that live in their own modules, one module per command, registered in `emr/cli.py`."""
