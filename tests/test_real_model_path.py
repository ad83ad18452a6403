"""The real-model code path (`--model google/gemma-3-4b-it --transcoders tianhux2/gemma3-4b-it-plt`),
exercised offline on tiny files in exactly those formats: a Gemma3ForConditionalGeneration saved
as a Hugging Face hub snapshot, and a bf16 ReLU+TopK transcoder set in the published layout
(config.yaml with relative layer file names), both resolved by hub id from a local cache."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
import yaml

from tracer.graph import load_graph
from tracer.toy import world
from tracer.toy.model import ToyModelSpec, build_model
from tracer.transcoders.activations import TopK
from tracer.transcoders.per_layer import PerLayerTranscoder
from tracer.transcoders.transcoder_set import TranscoderSet
from tracer.transcoders.loading import save_transcoder_set

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SPEC = ToyModelSpec(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, num_kv_heads=1, head_dim=16,
                    vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2, tokens_per_side=4)


def _snapshot(cache, repo: str):
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


def test_hub_ids_tiny_gemma3_and_published_plt_layout(tmp_path):
    cache = tmp_path / "hub"
    model, processor = build_model(seed=5, spec=SPEC)
    model_dir = _snapshot(cache, "tiny-org/gemma-3-tiny-it")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    g = torch.Generator().manual_seed(0)
    layers = {}
    for layer in range(SPEC.num_layers):
        tc = PerLayerTranscoder.init_random(layer, SPEC.hidden_size, 256, TopK(12), generator=g)
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3, generator=g)
        layers[layer] = tc
    tset = TranscoderSet(layers, config={"model_name": "tiny-org/gemma-3-tiny-it", "feature_input_hook": "mlp.hook_in",
                                        "feature_output_hook": "mlp.hook_out", "top_k": 12})
    plt_dir = _snapshot(cache, "tiny-org/gemma-3-tiny-plt")
    save_transcoder_set(tset.to(dtype=torch.bfloat16), plt_dir, model_name="tiny-org/gemma-3-tiny-it")
    config = yaml.safe_load((plt_dir / "config.yaml").read_text())
    assert config["top_k"] == 12 and config["transcoders"] == [f"layer_{i}.safetensors" for i in range(3)]
    assert config["feature_input_hook"] == "mlp.hook_in" and config["feature_output_hook"] == "mlp.hook_out"

    image = tmp_path / "scene.png"
    world.make_example("heldout", 0, question_type="color").image().save(image)
    out = tmp_path / "tiny.graph.safetensors"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    run = subprocess.run(
        [sys.executable, "-m", "tracer", "attribute", "--model", "tiny-org/gemma-3-tiny-it",
         "--transcoders", "tiny-org/gemma-3-tiny-plt", "--prompt", "What color is the circle?", "--image", str(image),
         "--out", str(out), "--max_feature_nodes", "120", "--batch_size", "32", "--quiet", "--verify",
         "--graph_file_dir", str(tmp_path / "json")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout
    graph = load_graph(out)
    assert graph.model == "tiny-org/gemma-3-tiny-it" and graph.transcoders == "tiny-org/gemma-3-tiny-plt"
    assert len(graph.image_positions) == 16 and graph.tokens_per_side == 4
    assert graph.n_features == 120
    assert (np.abs(graph.sum_rule_residual()) / np.maximum(1, np.abs(graph.values))).max() < 1e-3  # float32 edges
    assert (tmp_path / "json" / "graph-metadata.json").exists()

    # `verify` on its own finds model and transcoders from the references stored in the graph
    run = subprocess.run([sys.executable, "-m", "tracer", "verify", str(out), "--sources", "8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and "PASS" in run.stdout, run.stdout + run.stderr
