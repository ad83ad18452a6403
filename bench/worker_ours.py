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

from process_memory import peak_mb, reset_window_peak, rss_mb, window_peak_mb  # bench/, next to this script


class PhaseMemory:
    """Peak RSS growth of each attribution phase, from the engine's progress callback (phase names
    as in graph.info["timings_s"]; the first phase, forward, starts with the call)."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.phase, self.base = "forward", 0.0
        self.windowed = reset_window_peak()
        self.base = rss_mb()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase

    def close(self) -> None:
        if self.phase is None:
            return
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), window_peak_mb() - self.base)
        self.base = rss_mb()
        self.windowed = reset_window_peak()
        self.phase = None


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

    image = None
    if spec.get("image"):
        from PIL import Image

        image = Image.open(spec["image"]).convert("RGB")
    times, cpu, phases, phase_mem = [], [], [], []
    graph = None
    for _ in range(int(spec["repeats"])):
        graph = None
        t, c = time.perf_counter(), time.process_time()
        memory = PhaseMemory()
        graph = session.attribute(
            spec["prompt"], image, max_feature_nodes=spec["max_feature_nodes"], batch_size=int(spec["batch_size"]),
            max_n_logits=int(spec["max_n_logits"]), desired_logit_prob=float(spec["desired_logit_prob"]),
            chat=bool(spec.get("chat", False)), progress=False, on_progress=memory,
        )
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        memory.close()
        phases.append(graph.info.get("timings_s", {}))
        phase_mem.append(memory.peaks if memory.windowed else {})
    peak_end = peak_mb()

    result = {
        "tool": "ours",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "threads": torch.get_num_threads(),
        "import_s": t_import, "load_s": t_load, "attribution_s": times, "attribution_cpu_s": cpu, "phases_s": phases,
        "phase_peak_growth_mb": phase_mem,
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

        # the adjacency apart, as .npy, so that the comparison can read it a few rows at a time
        np.save(os.path.join(out_dir, "adjacency.npy"), np.asarray(graph.adjacency, dtype=np.float32))
        np.savez(
            os.path.join(out_dir, "graph.npz"),
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
