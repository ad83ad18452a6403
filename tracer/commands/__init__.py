"""Subcommands of `python -m tracer`; each module has `register(subparsers)`."""

from tracer.commands import attribute, toy
from tracer.commands import train_plt, transcoders
from tracer.commands import export, features
from tracer.commands import attention, batch, diff, steer, supernodes

COMMANDS = [attribute, toy, transcoders, train_plt, export, features, steer, attention, diff, supernodes, batch]
