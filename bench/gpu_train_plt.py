"""Transcoder training (`train-plt`) at full Gemma3-4B size on one GPU, random weights (no download).

    python bench/gpu_train_plt.py                  # needs a GPU
    python bench/gpu_train_plt.py --scale tiny     # the same code path, tiny sizes, on a CPU

Measures what docs/transcoders.md's "what fits where" table estimates: the time and peak GPU
memory of training a group of layers together on the random Gemma3-4B model of
bench/gpu_gemma3_4b.py (bf16, 896 px images -> 256 soft tokens), with toy-world prompts as data
(what the data says does not matter for time and memory). Each setting is one call of
tracer.transcoders.training.train_plt, as `python -m tracer train-plt` makes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_gemma3_4b import SCALES, build_model, build_processor  # noqa: E402

from tracer.models.loading import FAST_ATTENTION  # noqa: E402
from tracer.transcoders.sources import ToySource  # noqa: E402
from tracer.transcoders.training import PLTTrainConfig, train_plt  # noqa: E402

# (width, layers trained together); the published set's width is 163,840
SETTINGS = {"gemma3-4b": [(16_384, 4), (163_840, 2)], "tiny": [(256, 3), (1024, 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="gemma3-4b")
    parser.add_argument("--tokens", type=int, default=262_144, help="training positions per layer")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    s, device = SCALES[args.scale], args.device
    gpu = device != "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    processor = build_processor(s)
    model = build_model(s, processor, device, dtype)
    model.set_attn_implementation(FAST_ATTENTION)  # as train-plt loads it: no attention pattern is read
    model_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    results = {"device": torch.cuda.get_device_name() if gpu else "cpu", "scale": args.scale,
               "model_gib": round(model_gib, 2), "runs": []}
    for width, group in SETTINGS[args.scale]:
        cfg = PLTTrainConfig(layers=list(range(group)), group_size=group, width=width, k=args.k, tokens=args.tokens,
                             buffer_tokens=min(args.tokens, 131_072), buffer_dtype="bfloat16" if gpu else "float32",
                             device=device, threads=0, seed=0)
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            _, log = train_plt(model, processor, ToySource(), out, cfg, model_ref="random", progress=False,
                               evaluate=False, log=None)
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        glog = log["groups"][-1]
        last = glog["history"][-1] if glog["history"] else {}
        run = {"width": width, "layers_together": group, "k": args.k, "positions_per_layer": args.tokens,
               "seconds": round(seconds, 1), "training_s": round(glog["seconds"], 1),
               "model_forward_s": round(glog["forward_seconds"], 1),
               "positions_per_s": round(args.tokens * group / seconds),
               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
               "last_log": last}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
