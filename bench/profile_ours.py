"""Where our attribution call spends its time, on the benchmark's inputs.

    python bench/profile_ours.py --transcoders DIR [--prompt ...] [--threads 1] [--calls 5]

DIR: a transcoder folder, e.g. the ReLU/JumpReLU copy that `compare_circuit_tracer.py --keep W`
leaves in W/compare-jumprelu. Runs warm-up calls, then times the engine's internal functions
(inclusive wall time, summed over `--calls` calls, by wrapping them) and prints torch's
per-operator table (self CPU time, grouped by input shape) for one call.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict

TIMES: dict[str, list[float]] = defaultdict(list)


def wrap(owner, name: str, label: str | None = None) -> None:
    fn = getattr(owner, name, None)
    if fn is None or getattr(fn, "_bench_wrapped", False):
        return
    label = label or f"{getattr(owner, '__name__', owner)}.{name}"

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - t)

    timed._bench_wrapped = True
    setattr(owner, name, timed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transcoders", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--prompt", default="What color is grass?")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=None)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--ops", type=int, default=25, help="rows of the operator table (0: none)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from tracer.attribution import attribute as attr_mod
    from tracer.attribution import record as record_mod
    from tracer.attribution import replacement as rep_mod
    from tracer.graph import pruning
    from tracer.models import base as base_mod
    from tracer.session import TracingSession
    from tracer.transcoders import per_layer

    session = TracingSession(args.model, args.transcoders, device="cpu", dtype="float32")
    from tracer.models.base import prepare_prompt

    text = prepare_prompt(session.processor, args.prompt, None, chat=True, adapter=session.adapter).text
    kw = dict(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, max_n_logits=args.max_n_logits,
              desired_logit_prob=args.desired_logit_prob, chat=False, progress=False)
    for _ in range(2):  # warm-up
        session.attribute(text, None, **kw)

    # the engine's functions, looked up where attribute.py calls them
    wrap(attr_mod._Influence, "__call__", "attribute._Influence (ranking of unexplored features)")
    for name in ("prepare_prompt", "record_forward", "resolve_targets", "_assemble",
                 "_position_activations", "_feature_logit_effects", "graph_scores", "_top_tokens"):
        wrap(attr_mod, name, f"attribute.{name}")
    wrap(rep_mod.LocalReplacement, "__init__", "LocalReplacement.__init__ (encode)")
    wrap(rep_mod.LocalReplacement, "backward", "LocalReplacement.backward")
    wrap(rep_mod.LocalReplacement, "feature_injection")
    wrap(rep_mod.LocalReplacement, "feature_target_values")
    wrap(per_layer.PerLayerTranscoder, "decoder_rows")
    wrap(per_layer.PerLayerTranscoder, "encoder_rows")
    wrap(per_layer.PerLayerTranscoder, "encode_sparse")
    wrap(per_layer.LazyRows, "rows", "LazyRows.rows (safetensors reads)")
    wrap(pruning, "node_influence", "pruning.node_influence")
    wrap(record_mod, "rms_scale")
    del base_mod

    totals = []
    for _ in range(args.calls):
        t = time.perf_counter()
        graph = session.attribute(text, None, **kw)
        totals.append(time.perf_counter() - t)
    n = args.calls
    total = statistics.median(totals)
    print(f"{graph.info.get('n_active_features')} active features, {len(graph.targets)} logit targets, "
          f"{graph.n_positions} positions, threads={args.threads}")
    print(f"attribution call: median {total:.3f} s over {n} calls ({', '.join(f'{t:.3f}' for t in totals)})")
    print(f"engine phases of the last call: {graph.info.get('timings_s')}")
    print()
    print(f"{'function (inclusive; nested calls overlap)':60s} {'calls/call':>10s} {'s/call':>8s} {'share':>6s}")
    for label, ts in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
        per_call = sum(ts) / n
        print(f"{label:60s} {len(ts) / n:10.1f} {per_call:8.3f} {per_call / total:6.0%}")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            session.attribute(text, None, **kw)
        print()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.ops,
                                                                  max_name_column_width=40,
                                                                  max_shapes_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
