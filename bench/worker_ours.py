"""One run of our attribution engine, in its own process (measured exactly like circuit-tracer's).

    python bench/worker_ours.py SPEC.json

Started by compare_circuit_tracer.py. Writes `result.json` (times, memory) and, when asked,
`graph.npz` (the adjacency and its node lists) into spec["out_dir"].
"""

from __future__ import annotations

import json
import os
import sys
import time

from process_memory import peak_mb, rss_mb  # bench/, next to this script


def main(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    out_dir = spec["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    # what loading will need, imported here so that "load" is loading (as in the other worker)
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

    from tracer.session import TracingSession
    t_import = time.perf_counter() - t0

    t1 = time.perf_counter()
    session = TracingSession(spec["model"], spec["transcoders"], device="cpu", dtype="float32",
                             lazy_encoder=bool(spec["lazy_encoder"]), lazy_decoder=bool(spec["lazy_decoder"]))
    t_load = time.perf_counter() - t1
    rss_loaded, peak_loaded = rss_mb(), peak_mb()

    times, cpu, phases = [], [], []
    graph = None
    for _ in range(int(spec["repeats"])):
        graph = None
        t, c = time.perf_counter(), time.process_time()
        graph = session.attribute(
            spec["prompt"], None, max_feature_nodes=spec["max_feature_nodes"], batch_size=int(spec["batch_size"]),
            max_n_logits=int(spec["max_n_logits"]), desired_logit_prob=float(spec["desired_logit_prob"]),
            chat=False, progress=False,
        )
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        phases.append(graph.info.get("timings_s", {}))
    peak_end = peak_mb()

    result = {
        "tool": "ours",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "threads": torch.get_num_threads(),
        "import_s": t_import, "load_s": t_load, "attribution_s": times, "attribution_cpu_s": cpu, "phases_s": phases,
        "rss_after_load_mb": rss_loaded, "peak_after_load_mb": peak_loaded, "peak_rss_mb": peak_end,
        "n_active_features": int(graph.info.get("n_active_features", -1)),
        "n_selected_features": int(len(graph.features)),
        "n_logits": len(graph.targets), "n_positions": len(graph.input_ids),
        "prefix_length": int(graph.prefix_length),
        "input_ids": [int(i) for i in graph.input_ids],
        "logit_token_ids": [int(t.token_id) for t in graph.targets],
    }
    if spec.get("save_graph"):
        import numpy as np

        np.savez(
            os.path.join(out_dir, "graph.npz"),
            adjacency=np.asarray(graph.adjacency, dtype=np.float32),
            features=np.asarray(graph.features, dtype=np.int64),
            activations=np.asarray(graph.activations, dtype=np.float32),
            errors=np.asarray(graph.errors, dtype=np.int64).reshape(-1, 2),
            logit_token_ids=np.array(result["logit_token_ids"], dtype=np.int64),
            logit_probabilities=np.array([t.probability for t in graph.targets], dtype=np.float32),
            n_layers=np.int64(graph.n_layers), n_positions=np.int64(len(graph.input_ids)),
            d_model=np.int64(session.adapter.d_model),
        )
    json.dump(result, open(os.path.join(out_dir, "result.json"), "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
