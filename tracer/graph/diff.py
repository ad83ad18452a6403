"""Compare two attribution graphs of the same model and transcoders.

Researchers compare circuits: the right answer against a wrong one, image A against image B, a
prompt before and after an edit. Two graphs are aligned node by node:

* positions: image soft tokens by their cell (image, row, column); text positions by aligning
  the two token sequences (difflib), so that "What color is the cross?" and "What color is the
  circle?" share every position but the one word, which is paired position for position;
* features by (layer, feature index, aligned position); errors by (layer, aligned position);
  embeddings by aligned position; logits by their target label.

A node's weight in each graph is its influence on that graph's output (tracer.graph.pruning:
the share of the weighted logits that flows from it along all paths), so influences of two
graphs are on the same scale. The nodes compared are those either graph keeps when pruned at
`node_threshold` / `edge_threshold`; each is looked up in the other graph in full (a node the
other graph has but prunes is "changed", not "appears"). Edges are the kept edges of either
graph, weighed in both. Where both graphs carry an image of the same size, the cells whose
pixels differ are reported: the part of the image that changed.

numpy only, like the rest of tracer.graph.
"""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tracer.errors import InputError
from tracer.files import atomic_path, atomic_write_text
from tracer.graph.graph import ATTRIBUTION_GRAPH, FEATURE, LOGIT, Graph
from tracer.graph.pruning import Pruner, row_nodes

APPEARS, VANISHES, CHANGED, SAME = "appears", "vanishes", "changed", "same"
PIXEL_CHANGE = 8.0  # mean |difference| over a cell's pixels (0-255) that counts as changed


@dataclass
class NodeChange:
    key: str  # the aligned identity, e.g. "F L2 #538 @p84"
    kind: str
    label_a: str | None  # the node's label in each graph (None where it is absent)
    label_b: str | None
    influence_a: float
    influence_b: float
    activation_a: float | None = None  # features only
    activation_b: float | None = None
    status: str = SAME

    @property
    def delta(self) -> float:
        return self.influence_b - self.influence_a


@dataclass
class EdgeChange:
    source: str  # node keys
    target: str
    weight_a: float  # 0 where the edge does not exist in that graph
    weight_b: float
    status: str = SAME

    @property
    def delta(self) -> float:
        return self.weight_b - self.weight_a


@dataclass
class GraphDiff:
    name_a: str
    name_b: str
    targets_a: list[dict]
    targets_b: list[dict]
    positions: list[dict]  # aligned positions: key, pos_a, pos_b, text_a, text_b
    nodes: list[NodeChange]
    edges: list[EdgeChange]
    changed_cells: list[dict] = field(default_factory=list)  # image, row, col, pixel_change
    settings: dict = field(default_factory=dict)

    def by_status(self, status: str, kind: str | None = None) -> list[NodeChange]:
        hits = [n for n in self.nodes if n.status == status and (kind is None or n.kind == kind)]
        return sorted(hits, key=lambda n: -abs(n.delta))

    def counts(self) -> dict[str, dict[str, int]]:
        out = {"nodes": {}, "edges": {}}
        for status in (APPEARS, VANISHES, CHANGED, SAME):
            out["nodes"][status] = sum(n.status == status for n in self.nodes)
            out["edges"][status] = sum(e.status == status for e in self.edges)
        return out

    def to_dict(self) -> dict:
        return {
            "format": "vlm-circuits-graph-diff", "version": 1,
            "a": self.name_a, "b": self.name_b, "targets_a": self.targets_a, "targets_b": self.targets_b,
            "settings": self.settings, "counts": self.counts(), "changed_cells": self.changed_cells,
            "positions": self.positions,
            "nodes": [{**asdict(n), "delta": n.delta} for n in self.nodes],
            "edges": [{**asdict(e), "delta": e.delta} for e in self.edges],
        }

    def format(self, top: int = 10) -> str:
        def targets(ts):
            return ", ".join(f"{t['label']} p={t['probability']:.3f}" for t in ts[:3])

        c = self.counts()
        lines = [f"A: {self.name_a}  [{targets(self.targets_a)}]", f"B: {self.name_b}  [{targets(self.targets_b)}]",
                 "nodes: " + ", ".join(f"{v} {k}" for k, v in c["nodes"].items()),
                 "edges: " + ", ".join(f"{v} {k}" for k, v in c["edges"].items())]
        if self.changed_cells:
            cells = " ".join(f"({d['row']},{d['col']})" for d in self.changed_cells)
            lines.append(f"image cells that changed ({len(self.changed_cells)}): {cells}")
        for status, title in ((APPEARS, "appear in B"), (VANISHES, "vanish from A"), (CHANGED, "change influence")):
            hits = self.by_status(status)[:top]
            if not hits:
                continue
            lines.append(f"nodes that {title} (influence A -> B):")
            for n in hits:
                lines.append(f"  {n.label_b or n.label_a:<44} {n.influence_a:8.4f} -> {n.influence_b:8.4f}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- alignment

def _position_symbols(graph: Graph) -> list[str]:
    """What identifies a position across graphs: its image cell, or its token."""
    symbols = []
    for pos in range(graph.n_positions):
        cell = graph.image_cell(pos)
        symbols.append(f"img{cell[0]}:{cell[1]},{cell[2]}" if cell is not None else f"tok:{graph.tokens[pos]}")
    return symbols


def align_positions(a: Graph, b: Graph) -> tuple[list[str], list[str], list[dict]]:
    """A key per position of each graph (shared by aligned positions) and the table of keys."""
    sa, sb = _position_symbols(a), _position_symbols(b)
    keys_a = [f"a{i}" for i in range(len(sa))]
    keys_b = [f"b{j}" for j in range(len(sb))]
    matcher = difflib.SequenceMatcher(None, sa, sb, autojunk=False)
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i1 - i0 == j1 - j0):
            # equal runs, and a replaced run of the same length (a word swapped) pair up in order
            for i, j in zip(range(i0, i1), range(j0, j1)):
                keys_a[i] = keys_b[j] = f"p{i}" if i == j else f"p{i}/{j}"
    table = []
    index_b = {k: j for j, k in enumerate(keys_b)}
    seen = set()
    for i, key in enumerate(keys_a):
        j = index_b.get(key)
        table.append({"key": key, "pos_a": i, "pos_b": j, "text_a": a.position_text(i),
                      "text_b": b.position_text(j) if j is not None else None})
        seen.add(key)
    for j, key in enumerate(keys_b):
        if key not in seen:
            table.append({"key": key, "pos_a": None, "pos_b": j, "text_a": None, "text_b": b.position_text(j)})
    return keys_a, keys_b, table


def node_keys(graph: Graph, position_keys: list[str]) -> list[str]:
    """The aligned identity of every node of a graph, in node order."""
    keys = [f"F L{layer} #{feat} @{position_keys[pos]}" for layer, pos, feat in graph.features.tolist()]
    keys += [f"E L{layer} @{position_keys[pos]}" for layer, pos in graph.errors.tolist()]
    keys += [f"T @{key}" for key in position_keys]
    keys += [f"logit {t.label}" for t in graph.targets]
    return keys


# ---------------------------------------------------------------------------- the diff

def _check_comparable(a: Graph, b: Graph, allow_mismatch: bool) -> None:
    for graph, name in ((a, "A"), (b, "B")):
        if graph.kind != ATTRIBUTION_GRAPH:
            raise InputError(f"graph {name} is an {graph.kind} graph: only attribution graphs can be compared")
    if a.n_layers != b.n_layers:
        raise InputError(f"the graphs come from models with {a.n_layers} and {b.n_layers} layers: nothing to align")
    if allow_mismatch:
        return
    for field_name in ("model", "transcoders"):
        va, vb = getattr(a, field_name), getattr(b, field_name)
        if va and vb and va != vb:
            raise InputError(f"the graphs were traced with different {field_name} ({va!r} and {vb!r}); features are "
                             f"only comparable under one transcoder set (allow it anyway with --allow-mismatch)")


def changed_cells(a: Graph, b: Graph, threshold: float = PIXEL_CHANGE) -> list[dict]:
    """Cells of the soft-token grid whose pixels differ between the graphs' images (same sizes)."""
    out = []
    grids = a.grids()
    for k, (img_a, img_b) in enumerate(zip(a.images, b.images)):
        if img_a.shape != img_b.shape or k >= len(grids) or not all(grids[k]):
            continue
        rows, cols = grids[k]
        h, w = img_a.shape[:2]
        diff = np.abs(img_a.astype(np.int16) - img_b.astype(np.int16)).mean(-1)
        for r in range(rows):
            for c in range(cols):
                block = diff[r * h // rows:(r + 1) * h // rows, c * w // cols:(c + 1) * w // cols]
                change = float(block.mean()) if block.size else 0.0
                if change >= threshold:
                    out.append({"image": k, "row": r, "col": c, "pixel_change": round(change, 2)})
    return out


def diff_graphs(a: Graph, b: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                min_change: float = 0.25, names: tuple[str, str] = ("A", "B"),
                allow_mismatch: bool = False) -> GraphDiff:
    """Align b to a and report the nodes and edges that appear, vanish or change influence.

    min_change: a node present in both graphs is "changed" when its influence moves by at least
    this fraction of the larger of its two influences (an edge likewise, or when its sign flips).
    """
    if not 0 < node_threshold <= 1 or not 0 < edge_threshold <= 1:
        raise InputError("node_threshold and edge_threshold must be in (0, 1]")
    if not 0 <= min_change <= 1:
        raise InputError("min_change must be in [0, 1]")
    _check_comparable(a, b, allow_mismatch)
    pos_a, pos_b, table = align_positions(a, b)
    keys_a, keys_b = node_keys(a, pos_a), node_keys(b, pos_b)
    index_a = {k: i for i, k in enumerate(keys_a)}
    index_b = {k: i for i, k in enumerate(keys_b)}
    pruner_a, pruner_b = Pruner(a), Pruner(b)
    kept_a = pruner_a.prune(node_threshold, edge_threshold)
    kept_b = pruner_b.prune(node_threshold, edge_threshold)

    def change_status(x: float, y: float, present_a: bool, present_b: bool) -> str:
        if not present_a:
            return APPEARS
        if not present_b:
            return VANISHES
        big = max(abs(x), abs(y))
        if big > 0 and (abs(y - x) >= min_change * big or np.sign(x) * np.sign(y) < 0):
            return CHANGED
        return SAME

    compared = dict.fromkeys([keys_a[i] for i in np.flatnonzero(kept_a.node_mask)]
                             + [keys_b[j] for j in np.flatnonzero(kept_b.node_mask)])
    nodes = []
    for key in compared:
        i, j = index_a.get(key), index_b.get(key)
        graph, idx = (a, i) if i is not None else (b, j)
        kind = graph.node_kind(idx)
        inf_a = float(pruner_a.influence[i]) if i is not None else 0.0
        inf_b = float(pruner_b.influence[j]) if j is not None else 0.0
        act_a = float(a.activations[i]) if i is not None and kind == FEATURE else None
        act_b = float(b.activations[j]) if j is not None and kind == FEATURE else None
        if kind == LOGIT:  # a logit's weight is its probability, not an influence
            inf_a = a.targets[i - a.logit_offset].probability if i is not None else 0.0
            inf_b = b.targets[j - b.logit_offset].probability if j is not None else 0.0
        nodes.append(NodeChange(key, kind, a.node_label(i) if i is not None else None,
                                b.node_label(j) if j is not None else None, inf_a, inf_b, act_a, act_b,
                                change_status(inf_a, inf_b, i is not None, j is not None)))

    def weight(graph: Graph, index: dict, src: str, tgt: str) -> tuple[float, bool]:
        s, t = index.get(src), index.get(tgt)
        if s is None or t is None:
            return 0.0, False
        row = graph.row_of_node(t)
        return (float(graph.adjacency[row, s]), True) if row is not None else (0.0, False)

    rows_a, rows_b = row_nodes(a), row_nodes(b)
    edge_keys = {(keys_a[c], keys_a[rows_a[r]]) for r, c in zip(kept_a.edge_rows, kept_a.edge_cols)}
    edge_keys |= {(keys_b[c], keys_b[rows_b[r]]) for r, c in zip(kept_b.edge_rows, kept_b.edge_cols)}
    edges = []
    for src, tgt in sorted(edge_keys):
        wa, in_a = weight(a, index_a, src, tgt)
        wb, in_b = weight(b, index_b, src, tgt)
        edges.append(EdgeChange(src, tgt, wa, wb, change_status(wa, wb, in_a and wa != 0, in_b and wb != 0)))
    edges.sort(key=lambda e: -abs(e.delta))

    return GraphDiff(
        names[0], names[1], [t.to_dict() for t in a.targets], [t.to_dict() for t in b.targets], table,
        sorted(nodes, key=lambda n: -abs(n.delta)), edges, changed_cells(a, b),
        {"node_threshold": node_threshold, "edge_threshold": edge_threshold, "min_change": min_change,
         "pixel_change": PIXEL_CHANGE},
    )


# ---------------------------------------------------------------------------- files

def save_diff(diff: GraphDiff, out_dir: str | Path, a: Graph | None = None, b: Graph | None = None) -> list[Path]:
    """diff.json (everything), nodes.csv and edges.csv (for pandas / spreadsheets) and, when
    the graphs carry images, images.png: A, B and the changed cells outlined on B."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    written.append(atomic_write_text(out / "diff.json", json.dumps(diff.to_dict(), indent=1)))
    node_fields = ["key", "kind", "status", "influence_a", "influence_b", "delta", "activation_a", "activation_b",
                   "label_a", "label_b"]
    with atomic_path(out / "nodes.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, node_fields)
        writer.writeheader()
        for n in diff.nodes:
            writer.writerow({k: (n.delta if k == "delta" else getattr(n, k)) for k in node_fields})
    written.append(out / "nodes.csv")
    edge_fields = ["source", "target", "status", "weight_a", "weight_b", "delta"]
    with atomic_path(out / "edges.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, edge_fields)
        writer.writeheader()
        for e in diff.edges:
            writer.writerow({k: (e.delta if k == "delta" else getattr(e, k)) for k in edge_fields})
    written.append(out / "edges.csv")
    panel = image_panel(diff, a, b) if a is not None and b is not None else None
    if panel is not None:
        with atomic_path(out / "images.png") as tmp:
            panel.save(tmp, format="PNG")
        written.append(out / "images.png")
    return written


def image_panel(diff: GraphDiff, a: Graph, b: Graph):
    """A PIL image: each of A's images beside B's (one row per image), B's changed cells outlined
    on B's image grid (None without images)."""
    from PIL import Image, ImageDraw

    pairs = list(zip(a.images, b.images))
    if not pairs:
        return None
    scale = max(1, 256 // max(max(im.shape[:2]) for pair in pairs for im in pair))

    def big(im):
        return Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)

    rows = [(big(x), big(y)) for x, y in pairs]
    width = max(x.width + y.width for x, y in rows) + 8
    panel = Image.new("RGB", (width, sum(max(x.height, y.height) for x, y in rows) + 8 * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(panel)
    grids = b.grids()
    top = 0
    for k, (img_a, img_b) in enumerate(rows):
        panel.paste(img_a, (0, top))
        panel.paste(img_b, (img_a.width + 8, top))
        n_rows, n_cols = grids[k] if k < len(grids) else (0, 0)
        if n_rows and n_cols:
            ch, cw = img_b.height / n_rows, img_b.width / n_cols
            for cell in diff.changed_cells:
                if cell["image"] != k:
                    continue
                x0, y0 = img_a.width + 8 + cell["col"] * cw, top + cell["row"] * ch
                draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], outline=(255, 0, 255), width=2)
        top += max(img_a.height, img_b.height) + 8
    return panel
