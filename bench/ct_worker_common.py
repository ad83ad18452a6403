"""What the two circuit-tracer-family workers share (worker_circuit_tracer.py, worker_uiuc.py).

Both tools descend from circuit-tracer: the same `load_transcoder_set(paths, ...)` signature, the
same `attribute(...)` returning a Graph with the same fields. Plain Python (numpy, yaml, torch),
importable from either tool's virtualenv; it never imports `tracer`.
"""

from __future__ import annotations

import json
import os
import time
from importlib.metadata import version
from typing import Callable


def transcoder_paths(folder: str) -> tuple[dict, dict[int, str]]:
    """The project's config.yaml (which the tools read only from the hub) and {layer: file}."""
    import yaml

    config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
    names = config["transcoders"]
    layers = config.get("layers") or list(range(len(names)))
    return config, {int(layer): os.path.join(folder, name) for layer, name in zip(layers, names)}


def timed_calls(run: Callable[[], object], repeats: int) -> tuple[object, list[float], list[float]]:
    """run() `repeats` times (the previous result freed first): the last result, wall and CPU seconds."""
    times, cpu, result = [], [], None
    for _ in range(int(repeats)):
        result = None
        t, c = time.perf_counter(), time.process_time()
        result = run()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return result, times, cpu


def graph_summary(graph, logit_token_ids: list[int]) -> dict:
    """The fields of result.json that describe the graph (the same in both tools' layout)."""
    return {
        "n_active_features": int(graph.active_features.shape[0]),
        "n_selected_features": int(graph.selected_features.numel()),
        "n_logits": len(logit_token_ids), "n_positions": int(graph.n_pos),
        "input_ids": [int(i) for i in graph.input_tokens.tolist()],
        "logit_token_ids": [int(t) for t in logit_token_ids],
    }


def write_result(out_dir: str, result: dict, graph=None, n_layers: int | None = None) -> None:
    """result.json, and with a graph its adjacency (.npy, so that the comparison can read it a few
    rows at a time) and node lists (graph.npz)."""
    if graph is not None:
        import numpy as np

        np.save(os.path.join(out_dir, "adjacency.npy"), graph.adjacency_matrix.float().numpy())
        np.savez(
            os.path.join(out_dir, "graph.npz"),
            active_features=graph.active_features.long().numpy(),
            selected_features=graph.selected_features.long().numpy(),
            activation_values=graph.activation_values.float().numpy(),
            logit_token_ids=np.array(result["logit_token_ids"], dtype=np.int64),
            logit_probabilities=graph.logit_probabilities.float().numpy(),
            n_layers=np.int64(n_layers), n_positions=np.int64(result["n_positions"]),
        )
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


def package_version(name: str) -> str:
    return version(name)
