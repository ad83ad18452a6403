"""Node coordinates for the graph view (cytoscape 'preset' layout; y grows downwards).

x: one column per token position, in prompt order, with each image's soft tokens as their own
block (a gap before and after, drawn with a shaded background); columns without any displayed
node take no room. A column is as wide as its busiest layer needs (nodes of one layer at one
position sit side by side, wrapping into sub-rows: at least `WRAP` across, more for busy cells).
y: one band per level: embeddings at the bottom, then layer 0 ... n_layers-1, logits on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.graph import Graph
from tracer.graph.graph import ERROR, LOGIT

LEVEL_HEIGHT = 150.0  # at least; taller when the view is wide, so that it is not a flat strip
ASPECT = 0.55  # height / width the levels stretch to
SLOT_TEXT = 34.0
SLOT_IMAGE = 15.0
BLOCK_GAP = 70.0
WRAP = 5
LOGIT_SPACING = 90.0


@dataclass
class Placement:
    xy: np.ndarray  # (n, 2) float: positions of the nodes passed in, same order
    level_y: dict[str, float] = field(default_factory=dict)  # axis label -> y
    x_min: float = 0.0
    x_max: float = 0.0
    image_blocks: list[tuple[int, float, float]] = field(default_factory=list)  # (image, x0, x1)
    column_x: dict[int, float] = field(default_factory=dict)  # position -> x of its column
    level_height: float = LEVEL_HEIGHT


def level_of(graph: Graph, indices: np.ndarray) -> np.ndarray:
    """0 for embeddings, layer + 1 for features and errors, n_layers + 1 for logits."""
    return graph.node_layers()[indices] + 1


def compute_positions(graph: Graph, indices: np.ndarray, influence: np.ndarray | None = None) -> Placement:
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    xy = np.zeros((n, 2))
    if n == 0:
        return Placement(xy)
    kinds = graph.node_kinds()[indices]
    levels = level_of(graph, indices)
    positions = graph.node_positions()[indices]
    is_logit = kinds == LOGIT

    image_of_pos = np.full(graph.n_positions, -1, np.int64)
    if len(graph.image_positions):
        image_of_pos[graph.image_positions] = graph.image_grid[:, 0]

    # Order inside a (level, position) cell: features by influence (strongest in the middle
    # column first), then errors; stable by node index for ties.
    rank = np.zeros(n)
    if influence is not None:
        rank = -np.asarray(influence)[indices]
    rank = rank + np.where(kinds == ERROR, 1e9, 0.0)
    order = np.lexsort((indices, rank, positions, levels))

    cells: dict[tuple[int, int], list[int]] = {}
    for k in order:
        if is_logit[k]:
            continue
        cells.setdefault((int(levels[k]), int(positions[k])), []).append(int(k))
    # a busy position (attribution graphs often have most features at the last position) gets
    # a wide column rather than a tall stack: about 3 nodes across per row of the stack
    wrap_per_pos: dict[int, int] = {}
    for (level, pos), members in cells.items():
        wrap_per_pos[pos] = max(wrap_per_pos.get(pos, WRAP), int(np.ceil(np.sqrt(3 * len(members)))))
    slots_per_pos: dict[int, int] = {}
    for (level, pos), members in cells.items():
        slots_per_pos[pos] = max(slots_per_pos.get(pos, 1), min(len(members), wrap_per_pos[pos]))

    # Columns, left to right, with a gap around each image block.
    column_x: dict[int, float] = {}
    blocks: dict[int, list[float]] = {}
    cursor = 0.0
    previous_image = -1
    for pos in sorted(slots_per_pos):
        image = int(image_of_pos[pos])
        if image != previous_image:
            cursor += BLOCK_GAP
        slot = SLOT_IMAGE if image >= 0 else SLOT_TEXT
        width = slots_per_pos[pos] * slot
        column_x[pos] = cursor + width / 2
        if image >= 0:
            block = blocks.setdefault(image, [cursor, cursor + width])
            block[1] = cursor + width
        cursor += width
        previous_image = image

    n_levels = graph.n_layers + 2
    level_height = max(LEVEL_HEIGHT, ASPECT * cursor / (n_levels - 1))
    for (level, pos), members in cells.items():
        slot = SLOT_IMAGE if image_of_pos[pos] >= 0 else SLOT_TEXT
        wrap = wrap_per_pos[pos]
        n_rows = (len(members) + wrap - 1) // wrap
        sub = min(26.0, (level_height - 50.0) / max(n_rows, 1))
        for j, k in enumerate(members):
            row, col = divmod(j, wrap)
            in_row = min(wrap, len(members) - row * wrap)
            xy[k, 0] = column_x[pos] + (col - (in_row - 1) / 2) * slot
            xy[k, 1] = -level * level_height + (row - (n_rows - 1) / 2) * sub

    logits = np.flatnonzero(is_logit)
    if len(logits):
        last = column_x[max(column_x)] if column_x else 0.0
        logit_order = logits[np.argsort(indices[logits])]
        for j, k in enumerate(logit_order):
            xy[k, 0] = last + (j - (len(logit_order) - 1) / 2) * LOGIT_SPACING
            xy[k, 1] = -(graph.n_layers + 1) * level_height

    level_y = {"embeddings": 0.0}
    for layer in range(graph.n_layers):
        level_y[f"layer {layer}"] = -(layer + 1) * level_height
    level_y["logits"] = -(graph.n_layers + 1) * level_height
    return Placement(level_height=level_height,
        xy=xy, level_y=level_y, x_min=float(xy[:, 0].min()), x_max=float(xy[:, 0].max()),
        image_blocks=[(k, v[0], v[1]) for k, v in sorted(blocks.items())], column_x=column_x,
    )
