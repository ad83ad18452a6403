"""What a traced batch says as a whole (for the explorer's batch view and for scripts).

    recurring_features(rows): which (layer, feature) pairs appear among the examples' strongest
        features, in how many examples, with what mean influence
    cell_influence_map(rows): the mean share of image influence per soft-token cell, over the
        examples with one image of the most common grid (optionally only one question type)
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


def _layout(row: dict, n_cells: int) -> tuple | None:
    """The image grids of a row's cell_influence: its cell_grids, else (summaries written before
    grids were recorded) one square image."""
    grids = tuple(tuple(int(x) for x in g) for g in _items(row.get("cell_grids")) if len(g) == 2)
    if grids and sum(r * c for r, c in grids) == n_cells:
        return grids
    side = int(round(n_cells ** 0.5))
    return ((side, side),) if side * side == n_cells else None


def cell_influence_map(rows: list[dict], question_type: str | None = None) -> np.ndarray | None:
    """(rows, cols) mean share of image influence per cell over the one-image examples; None when
    none has an image. Examples whose grid differs from the most common one are left out (a
    dynamic-resolution family gives each image size its own grid)."""
    maps: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for row in rows:
        cells = np.asarray(_items(row.get("cell_influence")), float)
        if not len(cells) or (question_type is not None and row.get("question_type") != question_type):
            continue
        layout = _layout(row, len(cells))
        if layout is not None and len(layout) == 1:
            maps[layout[0]].append(cells)
    if not maps:
        return None
    grid = max(maps, key=lambda g: len(maps[g]))
    return np.mean(maps[grid], axis=0).reshape(grid)
