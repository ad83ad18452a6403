"""What a new user meets first: the installer's choice of torch build, and the training commands
refusing to overwrite finished work or warning about settings that cannot do what was asked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _installer():
    spec = importlib.util.spec_from_file_location("install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("choice, installed, gpu, platform, expected", [
    ("auto", None, False, "linux", "cpu"),          # no GPU: never PyPI's CUDA build on Linux
    ("auto", None, True, "linux", "pypi"),          # a GPU: PyPI's CUDA build
    ("auto", None, False, "darwin", "pypi"),        # PyPI's macOS build has no CUDA
    ("auto", "2.13.0+cpu", False, "linux", "keep"),  # a fitting torch is kept
    ("auto", "2.3.1", False, "linux", "cpu"),       # too old: replaced
    ("auto", "2.15.0", True, "linux", "pypi"),      # too new: replaced
    ("cpu", "2.13.0", True, "linux", "cpu"),        # explicit choices win
    ("skip", None, False, "linux", "keep"),
])
def test_installer_picks_the_torch_build_for_the_machine(choice, installed, gpu, platform, expected):
    assert _installer().choose_torch(choice, installed, gpu, platform) == expected


def test_installer_help_explains_the_choices(capsys):
    with pytest.raises(SystemExit):
        _installer().main(["--help"])
    text = capsys.readouterr().out
    for word in ("--test", "--torch", "--wheel", "CUDA", "CPU"):
        assert word in text


def test_toy_train_refuses_to_restart_over_a_finished_model(tmp_path, capsys):
    from tracer.cli import main

    finished = tmp_path / "run"
    finished.mkdir()
    (finished / "model.safetensors").write_bytes(b"weights")
    (finished / "training_log.json").write_text('{"eval": [{"step": 4500}]}')
    assert main(["toy", "train", "--out", str(finished), "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a trained toy VLM (4500 steps)" in err and "--overwrite" in err
    assert (finished / "model.safetensors").read_bytes() == b"weights"  # nothing lost


def test_toy_train_refuses_a_resume_that_has_nothing_left_to_do(tmp_path, capsys):
    from tracer.cli import main
    from tracer.toy.train import CHECKPOINT

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 500}, run / CHECKPOINT)
    assert main(["toy", "train", "--out", str(run), "--steps", "500", "--no-progress"]) == 2
    assert "checkpoint at step 500" in capsys.readouterr().err


def test_train_plt_warns_when_the_run_is_shorter_than_its_warm_up(tmp_path, capsys):
    from tracer.cli import main

    # 4 steps against a 100-step warm-up; the missing model then stops the run before any work.
    code = main(["train-plt", "--out", str(tmp_path / "plt"), "--model", str(tmp_path / "no-model"),
                 "--tokens", "4096", "--batch-tokens", "1024", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "4 optimizer steps" in err and "100-step learning-rate warm-up" in err


@pytest.mark.parametrize("command", [["toy", "train", "--steps", "2"], ["toy", "sample"], ["toy", "sample-graphs"],
                                     ["train-plt"], ["features"], ["batch", "--data", "x.jsonl"]],
                         ids=lambda c: " ".join(c[:2]))
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    from tracer.cli import main

    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    assert main([*command, "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "a file"


def test_the_announced_graph_file_size_is_the_size_written(tmp_path, capsys):
    """`attribute` says up front how large the file can be (the default explores every active
    feature of a toy prompt: ~240 MB dense); the file is at most that, and not far below it (the
    adjacency, mostly zeros, is stored sparse when that is smaller)."""
    from tracer.cli import main
    from tracer.toy import world

    example = world.make_example("heldout", 0, question_type="color")
    example.image().save(tmp_path / "scene.png")
    out = tmp_path / "g.graph.safetensors"
    assert main(["attribute", "--prompt", example.question, "--image", str(tmp_path / "scene.png"),
                 "--max_feature_nodes", "400", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    text = (printed.out + printed.err).replace("\r", "\n")
    line = next(part for part in text.splitlines() if "the graph file will be at most" in part)
    announced = float(line.split("at most ")[1].split(" MB")[0].replace(",", "")) * 1e6
    assert "exploring 400 of" in line
    phases = next(part for part in text.splitlines() if part.startswith("phases: "))
    for phase in ("forward", "encode", "logits", "features", "assemble"):
        assert f"{phase} " in phases  # the time of each phase, not only the total
    assert 0.3 * announced < out.stat().st_size < 1.05 * announced
