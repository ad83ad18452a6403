import argparse
import subprocess
import sys

import pytest

from tracer.cli import build_parser


def _all_subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _all_subcommand_paths(sub, prefix + (name,))


def test_top_level_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "tracer", "--help"], capture_output=True, text=True, check=True).stdout
    for path, _ in _all_subcommand_paths(build_parser()):
        if len(path) == 1:
            assert path[0] in out


@pytest.mark.parametrize("path", [p for p, _ in _all_subcommand_paths(build_parser())], ids=" ".join)
def test_every_subcommand_has_useful_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(list(path) + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and len(text.split()) > 25, text


def test_toy_sample_writes_examples(tmp_path):
    from tracer.cli import main

    assert main(["toy", "sample", "--out", str(tmp_path), "-n", "6", "--type", "color"]) == 0
    lines = (tmp_path / "examples.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert len(list(tmp_path.glob("*.png"))) == 6
