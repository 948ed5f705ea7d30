"""Subcommands of the ``svfnet`` command line, one module each (see svfnet/cli.py)."""
