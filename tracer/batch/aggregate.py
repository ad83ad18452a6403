"""What a traced batch says as a whole (for the explorer's batch view and for scripts).

    recurring_features(rows): which (layer, feature) pairs appear among the examples' strongest
        features, in how many examples, with what mean influence
    cell_influence_map(rows): the mean share of image influence per soft-token cell, over the
        examples with an image (optionally only one question type)
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _items(value) -> list:
    """A list column as read back from JSON (list), parquet (array of arrays) or absent (None)."""
    return [] if value is None else list(value)


def recurring_features(rows: list[dict], top: int = 20) -> list[dict]:
    counts: dict[tuple[int, int], list[float]] = defaultdict(list)
    for row in rows:
        for layer, feature, influence in _items(row.get("feature_ids")):
            counts[(int(layer), int(feature))].append(float(influence))
    table = [{"layer": layer, "feature": feature, "examples": len(values), "mean_influence": float(np.mean(values))}
             for (layer, feature), values in counts.items()]
    table.sort(key=lambda r: (-r["examples"], -r["mean_influence"]))
    return table[:top]


def cell_influence_map(rows: list[dict], question_type: str | None = None) -> np.ndarray | None:
    """(side, side) mean share of image influence per cell; None when no example has an image.
    Examples whose grid differs from the most common one are left out."""
    cells = [np.asarray(_items(row.get("cell_influence")), float) for row in rows
             if len(_items(row.get("cell_influence")))
             and (question_type is None or row.get("question_type") == question_type)]
    if not cells:
        return None
    sizes = [len(c) for c in cells]
    n = max(set(sizes), key=sizes.count)
    side = int(round(n ** 0.5))
    if side * side != n:
        return None
    return np.mean([c for c in cells if len(c) == n], axis=0).reshape(side, side)
