"""One row per supported VLM family: exactness and time of one attribution at the same settings.

Each family's tiny random-weight model (tracer.toy.families: text width 64, 2 layers, 64 image
soft tokens for the same 64 px scene) gets a seeded random TopK transcoder set of the same width;
the same held-out scene and question are traced with every feature explored, in float64 (for the
exactness figures: `verify`'s perturbation identity over 24 sources, the sum rule, logit
reconstruction against the real HF forward) and in float32 (for the time, median of --rounds
warm runs, measured one family after another in one process).

    python bench/families.py            # prints a markdown table (README "Supported families")
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.attribution.frozen import frozen_forward
from tracer.attribution.verify import verify_graph
from tracer.models import get_adapter, load_vlm
from tracer.toy import world
from tracer.toy.families import TINY_FAMILIES, write_tiny_model
from tracer.transcoders.activations import TopK
from tracer.transcoders.transcoder_set import random_transcoder_set


def measure(family: str, folder: Path, rounds: int, width: int) -> dict:
    scene = world.make_example("heldout", 2, question_type="color")
    row = {"family": family}
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    adapter = get_adapter(model)
    row["class"] = type(model).__name__
    tset = random_transcoder_set(adapter.n_layers, adapter.d_model, width, lambda g: TopK(16), dtype=torch.float64)
    result = attribute_full(model, processor, tset, scene.question, scene.image(),
                            AttributionConfig(progress=False, max_feature_nodes=None))
    report = verify_graph(result.graph, model, processor, tset)
    rep = result.replacement
    logits = frozen_forward(rep).final_hidden @ adapter.unembedding.detach().T.to(rep.dtype)
    row.update(positions=result.graph.n_positions, features=result.graph.n_features,
               perturbation=report.perturbation_max_rel, sum_rule=report.sum_rule_max_rel,
               reconstruction=float((logits - rep.record.logits).abs().max()))
    model, processor = load_vlm(str(folder), dtype=torch.float32)
    tset = random_transcoder_set(adapter.n_layers, adapter.d_model, width, lambda g: TopK(16), dtype=torch.float32)
    config = AttributionConfig(progress=False, max_feature_nodes=None)
    times = []
    for _ in range(rounds + 1):  # the first call warms up
        start = time.perf_counter()
        attribute_full(model, processor, tset, scene.question, scene.image(), config)
        times.append(time.perf_counter() - start)
    row["seconds"] = statistics.median(times[1:])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed warm runs per family (median)")
    parser.add_argument("--width", type=int, default=512, help="transcoder features per layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in TINY_FAMILIES:
            rows.append(measure(family, write_tiny_model(family, Path(tmp) / family), args.rounds, args.width))
    print(f"torch threads: 1; transcoder width {args.width}, TopK 16, every feature explored\n")
    print("| family | HF class | positions | features | perturbation (rel.) | sum rule (rel.) "
          "| logit reconstruction | attribution, float32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['class']} | {r['positions']} | {r['features']} | {r['perturbation']:.1e} "
              f"| {r['sum_rule']:.1e} | {r['reconstruction']:.1e} | {r['seconds'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
