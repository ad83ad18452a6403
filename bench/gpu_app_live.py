"""The app's live work (trace, steer, region ablation, vision attention, heads, attention graph)
at full Gemma3-4B size on one GPU, with random weights (no download).

    python bench/gpu_app_live.py                  # needs a GPU (about 60 GB of host memory too)
    python bench/gpu_app_live.py --scale tiny     # the same code path, tiny sizes, on a CPU

It drives exactly what `python -m app --model ... --transcoders ...` runs behind the browser:
the job queue (app/jobs.py) and the worker tasks (app/tasks.py) over a TracingSession, here
built from the random model and transcoders of bench/gpu_gemma3_4b.py (34 layers, d_model 2560,
896 px image -> 256 soft tokens, TopK(48) x 163,840 per layer). For each job it reports the
time, the peak GPU memory and a check of its result: the steering consistency identity (direct
effects only, ablating one feature moves its logit by minus the feature's edge) and the heads
breakdown giving back the graph's own edge.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_gemma3_4b import SCALES, build_model, build_processor, random_transcoders  # noqa: E402

from app.graph_store import GraphStore  # noqa: E402
from app.jobs import DONE  # noqa: E402
from app.live import LiveConfig, LiveState  # noqa: E402
from app.tasks import attention_job, heads_job, region_job, steer_job, trace_job, vision_job  # noqa: E402
from tracer.session import TracingSession  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="gemma3-4b")
    parser.add_argument("--max-feature-nodes", type=int, default=7500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=24)
    parser.add_argument("--generate", type=int, default=16, help="greedy tokens generated before and after steering")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one job")
    args = parser.parse_args()
    s, device = SCALES[args.scale], args.device
    gpu = device != "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32

    t0 = time.perf_counter()
    processor = build_processor(s)
    model = build_model(s, processor, device, dtype)
    tset = random_transcoders(s, device, dtype, host=gpu)
    session = TracingSession.from_parts(model, processor, tset, model_ref=f"random-{args.scale}",
                                        transcoders_ref=tset.source)
    results = {"device": torch.cuda.get_device_name() if gpu else "cpu", "scale": args.scale,
               "setup_s": round(time.perf_counter() - t0, 1), "jobs": []}

    graphs = Path(tempfile.mkdtemp(prefix="gpu-app-live-"))
    live = LiveState(LiveConfig(model=f"random-{args.scale}", transcoders="random", device=device), graphs,
                     factory=lambda config: session)

    def run(kind: str, fn, check=None):
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        job = live.submit(kind, fn)
        status = live.queue.wait(job, args.timeout)
        seconds = time.perf_counter() - start
        row = {"job": kind, "state": status["state"] if status else "timeout", "seconds": round(seconds, 2),
               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None}
        if not status or status["state"] != DONE:
            row["error"] = (status or {}).get("error")
            print(json.dumps(row), flush=True)
            raise SystemExit(f"{kind} job did not finish: {row}")
        out = live.queue.result(job)
        if check:
            row.update(check(out))
        results["jobs"].append(row)
        print(json.dumps(row), flush=True)
        return out

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (s["image"], s["image"], 3), dtype=np.uint8)).save(buf, format="PNG")
    words = " ".join(f"w{int(i)}" for i in rng.integers(100, 5000, args.text_tokens))
    prompt = f"<start_of_turn>user\n<start_of_image>{words}<end_of_turn>\n<start_of_turn>model\n"

    settings = {"max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size, "chat": False}
    # a small trace first, so that the timed one does not pay for kernel selection
    run("warm-up trace", trace_job(live, buf.getvalue(), prompt, None, dict(settings, max_feature_nodes=64), "warm"))
    traced = run("trace", trace_job(live, buf.getvalue(), prompt, None, settings, "random-4b"),
                 lambda out: {"feature_nodes": out["n_features"], "targets": len(out["targets"])})

    view = GraphStore(graphs).session(traced["name"])
    g = view.graph
    into_top_logit = g.adjacency[g.n_features, : g.n_features]
    strongest = np.argsort(-np.abs(into_top_logit))[:4]

    def edit(i, positions):
        return {"layer": int(g.features[i, 0]), "feature": int(g.features[i, 2]), "mode": "ablate", "value": None,
                "positions": positions}

    run("steer (4 features, ablate, generate)",
        steer_job(live, g, [edit(i, "active") for i in strongest], False, False, 10, args.generate),
        lambda out: {"answer_before": out["answer_before"], "answer_after": out["answer_after"],
                     "generated_tokens": args.generate})

    # token targets are logits minus the mean logit: check the identity on the difference of the
    # two top targets, where the mean cancels
    contrast = into_top_logit - g.adjacency[g.n_features + 1, : g.n_features]
    i = int(np.argmax(np.abs(contrast)))
    first, second = g.targets[0].token_id, g.targets[1].token_id

    def identity(out):
        change = {c["id"]: c["logit_change"] for c in out["changes"]}
        moved = change[first] - change[second]
        return {"contrast_change": moved, "minus_edge": -float(contrast[i]), "abs_error": abs(moved + float(contrast[i]))}

    run("steer (direct effects only: the consistency identity)",
        steer_job(live, g, [edit(i, [int(g.features[i, 1])])], True, True, 50, 0), identity)

    side = int(round(len(g.image_positions) ** 0.5))
    cells = [(0, r, c) for r in range(side // 2 - 1, side // 2 + 1) for c in range(side // 2 - 1, side // 2 + 1)]
    run("region ablation (2x2 cells, mean)", region_job(live, g, cells, "mean", 10),
        lambda out: {"cells": len(out["positions"])})
    run("vision attention maps", vision_job(live, view))
    run("heads of an edge into the top logit", heads_job(live, view, g.logit_offset, i),
        lambda out: {"edge": out["edge"], "graph_edge": out["graph_edge"], "n_heads": out["n_heads"]})
    run("attention graph", attention_job(live, view), lambda out: {"graph": out["name"]})

    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
