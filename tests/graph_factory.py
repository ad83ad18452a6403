"""Small self-consistent graphs for tests that need a Graph but not a model.

Edges follow the real structure (sources in lower layers, causal positions) and the sum rule
holds by construction, so format and viewer tests see realistic data. Tests of the attribution
engine itself use real graphs computed on the toy VLM instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tracer.graph import Graph, Target


def rewrite_graph_file(path: Path, meta=None, tensors=None, out: Path | None = None) -> Path:
    """Re-save a graph file (at `out`, else in place) with its metadata / tensors edited in place by
    the given functions, as a hostile writer would."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    t = load_file(str(path))
    m = json.loads(raw["vlm_circuits_graph"])
    if meta:
        meta(m)
    if tensors:
        tensors(t)
    out = Path(out or path)
    save_file(t, str(out), metadata={"vlm_circuits_graph": json.dumps(m)})
    return out


def make_graph(seed: int = 0, n_layers: int = 3, n_pos: int = 12, n_features: int = 20, n_logits: int = 2,
               image_side: int = 2, with_image: bool = True, grids: list[tuple[int, int]] | None = None) -> Graph:
    """grids: (rows, cols) of each image's soft-token grid (several images, any shape); by
    default one image_side x image_side image (or none without with_image)."""
    rng = np.random.default_rng(seed)
    tokens = ["<bos>", "<start_of_turn>", "user", "\n"]
    grids = list(grids) if grids is not None else [(image_side, image_side)] if with_image else []
    image_positions, grid = [], []
    for k, (rows, cols) in enumerate(grids):
        tokens.append("<start_of_image>")
        image_positions += range(len(tokens), len(tokens) + rows * cols)
        grid += [(k, r, c) for r in range(rows) for c in range(cols)]
        tokens += ["<image_soft_token>"] * (rows * cols) + ["<end_of_image>"]
    words = ["What", "color", "is", "the", "circle", "?", "<end_of_turn>", "\n", "<start_of_turn>", "model", "\n"]
    tokens += words[: max(0, n_pos - len(tokens))]
    n_pos = len(tokens)
    prefix = 4
    feats = np.stack([
        rng.integers(0, n_layers, n_features),
        rng.integers(prefix, n_pos, n_features),
        rng.integers(0, 50, n_features),
    ], 1).astype(np.int64)
    feats = np.unique(feats, axis=0)
    n_features = len(feats)
    errors = np.array([(l, p) for l in range(n_layers) for p in range(prefix, n_pos)], dtype=np.int64)
    n_err = len(errors)
    n_nodes = n_features + n_err + n_pos + n_logits
    layers = np.concatenate([feats[:, 0], errors[:, 0], np.full(n_pos, -1), np.full(n_logits, n_layers)])
    positions = np.concatenate([feats[:, 1], errors[:, 1], np.arange(n_pos), np.full(n_logits, n_pos - 1)])
    rows = np.concatenate([np.arange(n_features), n_features + n_err + n_pos + np.arange(n_logits)])
    adjacency = np.zeros((n_features + n_logits, n_nodes), np.float32)
    for r, node in enumerate(rows):
        ok = (layers < layers[node]) & (positions <= positions[node])
        ok[rows[n_features:]] = False
        adjacency[r, ok] = rng.normal(0, 1, ok.sum()) * (rng.random(ok.sum()) < 0.6)
    constants = rng.normal(0, 0.1, len(rows))
    unexplored = np.zeros(len(rows))
    values = adjacency.astype(np.float64).sum(1) + constants + unexplored
    probs = rng.dirichlet(np.ones(n_logits)) * 0.9
    targets = [Target(label=f"tok{k}", token_id=100 + k, probability=float(probs[k])) for k in range(n_logits)]
    image_positions = np.array(image_positions, dtype=np.int64)
    grid = np.array(grid, dtype=np.int64).reshape(-1, 3)
    # one 64 x 64 image as before (tests compare its pixels); several: 8 pixels per cell
    sizes = [(64, 64)] if grids == [(image_side, image_side)] else [(8 * rows, 8 * cols) for rows, cols in grids]
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    graph = Graph(
        prompt="".join(tokens), input_ids=np.arange(n_pos, dtype=np.int64), tokens=tokens, n_layers=n_layers,
        features=feats, activations=rng.random(n_features).astype(np.float32) + 0.1, errors=errors,
        targets=targets, adjacency=adjacency, values=values, constants=constants, unexplored=unexplored,
        image_positions=image_positions, image_grid=grid,
        tokens_per_side=grids[0][0] if len(set(grids)) == 1 and grids[0][0] == grids[0][1] else 0,
        image_grids=[tuple(g) for g in grids],
        images=images, prefix_length=prefix,
        feature_position_activations=rng.random((n_features, n_pos)).astype(np.float32),
        top_logit_ids=rng.integers(0, 50, (n_features, 5)), top_logit_values=rng.random((n_features, 5)).astype(np.float32),
        bottom_logit_ids=rng.integers(0, 50, (n_features, 5)), bottom_logit_values=-rng.random((n_features, 5)).astype(np.float32),
        vocab={i: f"w{i}" for i in range(50)} | {100: "tok0", 101: "tok1"},
        model="toy", transcoders="toy-plt", scan="toy", slug=f"synthetic-{seed}",
        config={"node_threshold": 0.8}, scores={},
    )
    graph.validate()
    return graph
