"""Transcoder training under torchrun (gloo, 2 CPU processes): layers split across ranks give
the set one process trains, bit for bit, and an interrupted run resumes from the ranks' partial sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--layers", "0-3", "--group-size", "1", "--width", "64", "--k", "8", "--tokens", "2048", "--batch-tokens",
        "256", "--buffer-tokens", "2048", "--warmup-steps", "2", "--dead-tokens", "1000", "--model-batch", "8",
        "--no-eval", "--threads", "1", "--no-progress"]


def _run(command: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _torchrun(out, *extra) -> str:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "tracer", "train-plt", "--out", str(out), *ARGS, *extra])


def _same_sets(a, b) -> None:
    for layer in range(4):
        ta, tb = load_file(str(a / f"layer_{layer}.safetensors")), load_file(str(b / f"layer_{layer}.safetensors"))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (layer, key)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("plt") / "single"
    _run([sys.executable, "-m", "tracer", "train-plt", "--out", str(out), *ARGS])
    return out


@pytest.mark.slow
def test_two_ranks_train_the_set_one_process_trains(single, tmp_path):
    out = tmp_path / "ranked"
    printed = _torchrun(out)
    assert "rank 0/2: trained layers [0]" in printed and "rank 1/2: trained layers [1]" in printed
    _same_sets(single, out)
    log = json.loads((out / "training_log.json").read_text())
    assert log["distributed"]["world_size"] == 2
    assert [g["layers"] for g in log["groups"]] == [[0], [1], [2], [3]]
    assert not (out / ".ranks").exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_the_ranks_partial_sets(single, tmp_path):
    from tracer.transcoders.loading import load_transcoder_set, save_transcoder_set
    from tracer.transcoders.transcoder_set import TranscoderSet

    out = tmp_path / "resumed"
    # what rank 1 had saved when the run died: layers 1 and 3
    full = load_transcoder_set(single, lazy_decoder=False)
    partial = TranscoderSet({layer: full[layer] for layer in (1, 3)}, config=dict(full.config))
    save_transcoder_set(partial, out / ".ranks" / "rank1", num_model_layers=4)
    printed = _torchrun(out, "--resume")
    assert "layers [1, 3] already trained" in printed
    assert "rank 0/2: trained layers [0]" in printed and "rank 1/2: trained layers [2]" in printed
    _same_sets(single, out)
