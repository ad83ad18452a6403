"""One table row per traced example: what the graph says, in numbers that compare across a data set.

Image influence is measured on embedding nodes (tracer.graph.pruning.node_influence: the share
of the weighted logits that flows from a position's input along all paths), so it counts every
route from a patch to the answer, through features and errors alike.
"""

from __future__ import annotations

import numpy as np

from tracer.graph.graph import Graph
from tracer.graph.pruning import node_influence

TOP_FEATURES = 5  # in the readable column
RECURRING_TOP = 20  # per example, for the aggregate "which features recur" (feature_ids column)


def graph_row(graph: Graph, evidence_tokens: list[int] | None = None, answer: str | None = None) -> dict:
    influence = node_influence(graph)
    inputs = influence[graph.embedding_offset: graph.logit_offset]
    image = inputs[graph.image_positions] if len(graph.image_positions) else np.zeros(0)
    total_inputs = float(inputs.sum())
    top = graph.targets[0] if graph.targets else None
    order = np.argsort(-influence[: graph.n_features])[:TOP_FEATURES]
    row = {
        "top_target": top.label if top else None,
        "probability": float(top.probability) if top else None,
        "correct": (top.label.strip() == answer.strip()) if top and answer is not None else None,
        "replacement": float(graph.scores.get("replacement", np.nan)),
        "completeness": float(graph.scores.get("completeness", np.nan)),
        "n_features": graph.n_features,
        "image_influence_share": float(image.sum() / total_inputs) if total_inputs > 0 and image.size else 0.0,
        "top_features": "; ".join(f"{graph.node_label(int(i))} ({influence[i]:.3f})" for i in order),
        "evidence_share": None,
        "evidence_ratio": None,
        # machine-readable extras for aggregates over a batch (tracer.batch.aggregate)
        "feature_ids": [[int(graph.features[i, 0]), int(graph.features[i, 2]), float(influence[i])]
                        for i in np.argsort(-influence[: graph.n_features])[:RECURRING_TOP]],
        "cell_influence": [float(v) for v in (image / image.sum() if image.size and image.sum() > 0 else image)],
        # (rows, cols) of each image's soft-token grid, so that cell_influence can be laid out
        "cell_grids": [[int(r), int(c)] for r, c in graph.grids()] if image.size else [],
    }
    if evidence_tokens and image.size:
        cells = np.zeros(image.size, bool)
        cells[[t for t in evidence_tokens if t < image.size]] = True
        if cells.any() and image.sum() > 0:
            row["evidence_share"] = float(image[cells].sum() / image.sum())
            if (~cells).any() and image[~cells].mean() > 0:
                row["evidence_ratio"] = float(image[cells].mean() / image[~cells].mean())
    return row
