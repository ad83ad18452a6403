"""Node coordinates for the graph view (cytoscape 'preset' layout; y grows downwards), in pixels
at zoom 1: the layout is sized so that a view of tens of nodes fits a laptop window near zoom 1,
where every label is readable.

x: the position axis. Every prompt token has a column, in prompt order (its label drawn along
the bottom); an image's soft tokens fold into one block: its patch thumbnails sit below the axis
as the image's grid, and the nodes at any of its patches share the block's column, ordered by
grid column (so a node sits roughly above its patch; hovering shows which). A column is as wide
as its busiest cell needs: nodes of one layer at one column sit side by side (`SLOT` apart, room
for a label), wrapping into sub-rows after `WRAP`.
y: one band per level, embeddings (the axis) at 0, then the layers that have nodes, logits on
top; a band is as tall as its busiest cell's sub-rows, and thin when it holds only (unlabelled)
error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.graph import Graph

SLOT = 50.0  # between labelled nodes side by side in one cell
SLOT_ERROR = 22.0  # error nodes carry no label
ROW = 32.0  # between sub-rows of one cell
WRAP = 7
TEXT_COLUMN = 17.0  # an empty token column: room for its (vertical) label
THUMB = 13.0  # patch thumbnail size
PITCH = THUMB + 4.0  # thumbnails' distance: their boxes (border and all) do not touch
LEVEL_MIN = 56.0
LEVEL_MIN_COMPACT = 40.0  # a subgraph: few nodes, a short pane
LEVEL_UNLABELLED = 24.0  # a band of error nodes only
BLOCK_GAP = 16.0
LOGIT_SLOT = 110.0

AXIS, LOGITS = -1, 10**6  # levels of embeddings and logits (layers are 0 .. n_layers-1)


@dataclass
class Placement:
    xy: np.ndarray  # (n, 2) float: positions of the items passed in, same order
    level_y: dict[str, float] = field(default_factory=dict)  # level label -> y
    x_min: float = 0.0
    x_max: float = 0.0
    image_blocks: list[tuple[int, float, float, float]] = field(default_factory=list)  # image, x0, x1, y1 (bottom)


def column_keys(graph: Graph) -> list[tuple]:
    """The axis column of every position, in prompt order: ('t', pos) for a text token,
    ('i', image) for an image soft token."""
    cells = {int(p): int(i) for p, (i, _, _) in zip(graph.image_positions, graph.image_grid)}
    return [("i", cells[p]) if p in cells else ("t", p) for p in range(graph.n_positions)]


def compute_positions(graph: Graph, levels: np.ndarray, positions: np.ndarray, rank: np.ndarray,
                      slots: np.ndarray | None = None, compact: bool = False) -> Placement:
    """levels: AXIS for embeddings, a layer, or LOGITS; positions: token positions (logits: any);
    rank: order inside a cell (lower first, e.g. -influence); slots: the width each item takes
    in its row (default SLOT); compact: columns only for positions that have items (a subgraph)."""
    levels = np.asarray(levels, np.int64)
    slots = np.full(len(levels), SLOT) if slots is None else np.asarray(slots, float)
    positions = np.asarray(positions, np.int64)
    n = len(levels)
    xy = np.zeros((n, 2))
    col_of_pos = column_keys(graph)
    cells_of = {int(p): (int(i), int(r), int(c)) for p, (i, r, c) in zip(graph.image_positions, graph.image_grid)}
    columns = list(dict.fromkeys(col_of_pos))
    if compact:
        used = {col_of_pos[p] for p, lv in zip(positions.tolist(), levels.tolist()) if lv != LOGITS}
        columns = [c for c in columns if c in used]

    grid_col = np.array([cells_of[int(p)][2] if int(p) in cells_of else 0 for p in positions], np.int64)
    cells: dict[tuple[int, tuple], list[int]] = {}
    for k in np.lexsort((np.arange(n), np.asarray(rank, float), grid_col)).tolist():
        if levels[k] in (AXIS, LOGITS):
            continue
        cells.setdefault((int(levels[k]), col_of_pos[positions[k]]), []).append(k)
    grid_rows = {i: rows for i, (rows, _) in enumerate(graph.grids())}
    grid_cols = {i: cols for i, (_, cols) in enumerate(graph.grids())}
    width = {c: (grid_cols[c[1]] * PITCH if c[0] == "i" else TEXT_COLUMN) for c in columns}
    for (_, col), members in cells.items():
        for start in range(0, len(members), WRAP):
            width[col] = max(width[col], float(slots[members[start:start + WRAP]].sum()))

    column_x: dict[tuple, float] = {}
    blocks: dict[int, list[float]] = {}
    cursor, previous = 0.0, None
    for col in columns:
        image = col[1] if col[0] == "i" else None
        if image != previous and (image is not None or previous is not None):
            cursor += BLOCK_GAP
        column_x[col] = cursor + width[col] / 2
        if image is not None:
            blocks.setdefault(image, [cursor, cursor])[1] = cursor + width[col]
        cursor += width[col]
        previous = image

    # bands: the axis at 0, each layer with nodes above it, as tall as its busiest cell
    layers = sorted({lv for lv, _ in cells})
    rows_in = {lv: max((len(m) + WRAP - 1) // WRAP for (l2, _), m in cells.items() if l2 == lv) for lv in layers}
    # a band of error nodes only (no labels) needs no room for labels: deep models' graphs have many
    labelled = {lv for (l2, _), m in cells.items() for lv in [l2] if (slots[m] > SLOT_ERROR).any()}
    level_y: dict[str, float] = {"tokens": 0.0}
    centre: dict[int, float] = {}
    top = 0.0
    for lv in layers:
        height = max(LEVEL_MIN_COMPACT if compact else LEVEL_MIN, rows_in[lv] * ROW + (10.0 if compact else 26.0))
        if lv not in labelled:
            height = LEVEL_UNLABELLED * rows_in[lv]
        centre[lv] = top - height / 2 - (4.0 if not centre else 0.0)
        top = centre[lv] - height / 2
        level_y[f"L{lv}"] = centre[lv]
    if (levels == LOGITS).any() or not compact:
        level_y["logits"] = top - 34.0

    for (lv, col), members in cells.items():
        n_rows = (len(members) + WRAP - 1) // WRAP
        for row in range(n_rows):
            in_row = members[row * WRAP:(row + 1) * WRAP]
            left = column_x[col] - slots[in_row].sum() / 2
            for k in in_row:
                xy[k, 0] = left + slots[k] / 2
                xy[k, 1] = centre[lv] + (row - (n_rows - 1) / 2) * ROW
                left += slots[k]
    for k in np.flatnonzero(levels == AXIS).tolist():
        p = int(positions[k])
        if p in cells_of:
            image, row, col = cells_of[p]
            xy[k, 0] = column_x[("i", image)] + (col - (grid_cols[image] - 1) / 2) * PITCH
            xy[k, 1] = row * PITCH
        else:
            xy[k, 0] = column_x[col_of_pos[p]]
    logits = np.flatnonzero(levels == LOGITS)
    last = column_x[columns[-1]] if columns else 0.0
    for j, k in enumerate(logits.tolist()):
        xy[k, 0] = last + (j - (len(logits) - 1) / 2) * LOGIT_SLOT
        xy[k, 1] = top - 34.0

    return Placement(
        xy=xy, level_y=level_y, x_min=float(min(xy[:, 0].min(), 0.0)) if n else 0.0,
        x_max=float(max(xy[:, 0].max(), cursor)) if n else cursor,
        image_blocks=[(i, v[0], v[1], grid_rows[i] * PITCH) for i, v in sorted(blocks.items())],
    )
