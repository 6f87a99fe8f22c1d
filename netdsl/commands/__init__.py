"""Subcommands of the ``netdsl`` command line; each module has ``add_parser`` and ``run``."""
