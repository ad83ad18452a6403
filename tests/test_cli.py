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


@pytest.mark.parametrize("command", [["attribute", "--out", "out.graph.safetensors"], ["steer", "--ablate-region", "0"],
                                     ["attention", "--out", "out.graph.safetensors"]], ids=lambda c: c[0])
def test_a_corrupt_image_is_a_clear_error_before_any_model_loads(command, tmp_path, capsys, monkeypatch):
    from tracer.cli import main

    bad = tmp_path / "scene.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    monkeypatch.chdir(tmp_path)
    assert main(command + ["--prompt", "What color is the circle?", "--image", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "scene.png" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png"]  # nothing written


@pytest.mark.parametrize("flag, message", [
    ("--model", "no such folder (and not a Hugging Face model id"),
    ("--transcoders", "no such folder (and not a hub reference"),
])
def test_a_missing_model_or_transcoder_folder_is_one_clear_line(flag, message, tmp_path, capsys):
    from tracer.cli import main

    missing = tmp_path / "nowhere"
    assert main(["attribute", "--prompt", "What color is grass?", flag, str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {missing}: {message}")
    assert not any("Traceback" in line for line in err)


def test_every_option_explains_itself():
    missing = [(" ".join(path), action.option_strings or [action.dest])
               for path, sub in _all_subcommand_paths(build_parser())
               for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing, missing


def test_numeric_options_of_the_tracing_commands_are_range_checked():
    """No bare int/float option on any command: each number goes through a type that refuses
    values out of range (tracer.commands.common)."""
    from tracer.commands import common, toy, train_plt

    checked = {common.positive_int, common.non_negative_int, common.positive_int_or_all, common.share,
               common.probability, common.non_negative_float, common.positive_float,
               toy.question_mix,  # TYPE=WEIGHT pairs with whole weights (tests/test_families.py)
               train_plt._layers}  # non-negative layers and low-high ranges (tests/test_cli_validation.py)
    bare = [(" ".join(path), action.option_strings)
            for path, sub in _all_subcommand_paths(build_parser())
            for action in sub._actions if action.type in (int, float) or
            (action.type is not None and action.type not in checked and action.type is not str)]
    assert not bare, bare


def test_steer_help_shows_how_to_find_features_worth_steering(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["steer", "--help"])
    text = capsys.readouterr().out
    assert "--top-features" in text and "pos:40,41" in text
