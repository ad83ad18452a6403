"""Subcommands of `python -m tracer`; each module has `register(subparsers)`."""

from tracer.commands import export, toy

COMMANDS = [toy, export]
