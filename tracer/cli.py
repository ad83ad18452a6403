"""`python -m tracer`: the command-line entry point. Each subcommand lives in its own module
under tracer/commands/ and registers itself here."""

from __future__ import annotations

import argparse
import sys

from tracer.commands import COMMANDS
from tracer.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracer",
        description="Circuit tracing for vision-language models: attribution graphs through per-layer "
        "transcoders, for image + text prompts. With no --model, commands use the shipped toy VLM "
        "and its transcoders, so everything runs on a CPU with no downloads.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as err:  # bad input (a file, image, prompt, target, model reference): one clear line
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
