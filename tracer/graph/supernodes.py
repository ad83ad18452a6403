"""Supernode suggestions: groups of a graph's features that look like one unit (numpy only).

Three kinds of evidence, each grouped by complete linkage (every pair in a group is at least
`threshold` alike):

* "image cells": image-driven features (most of their input, along all paths, comes from image
  soft tokens) whose inflow over the image cells is alike (cosine); the reason names the cells
  carrying `cell_share` of the group's image inflow and, for toy graphs (graph.info["toy"]) or
  given `regions`, the object under which at least half of that inflow arrives;
* "inputs/outputs": features whose signed edge rows (inputs) and columns (outputs) are alike
  (mean of the two cosines);
* "decoder": features whose decoder directions are alike, when the caller passes them (a graph
  file does not store decoder rows; `python -m tracer supernodes --transcoders` reads them).

Only the features that carry the graph (kept at `node_threshold` of the feature influence,
at most `max_features`) are considered. The app should call `suggest_supernodes(graph)` and
offer each Suggestion's `label` + `members` (graph node indices, as the explorer's supernodes
hold them) as a one-click group, showing `reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.graph.graph import Graph
from tracer.graph.pruning import cumulative_threshold, node_influence, normalized_rows, row_nodes

KINDS = ("image cells", "inputs/outputs", "decoder")


@dataclass
class Suggestion:
    kind: str  # one of KINDS
    members: list[int]  # graph node indices (features), most influential first
    node_ids: list[str]  # the same nodes as viewer JSON node ids
    label: str  # short, for the supernode's name
    reason: str  # one line: why these belong together
    score: float  # mean pairwise similarity x the members' share of the feature influence
    cells: list[tuple[int, int, int]] = field(default_factory=list)  # (image, row, col), "image cells" only

    def to_dict(self) -> dict:
        return {"kind": self.kind, "members": self.members, "node_ids": self.node_ids, "label": self.label,
                "reason": self.reason, "score": self.score, "cells": [list(c) for c in self.cells]}


def _cosine(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
    return unit @ unit.T


def complete_linkage(sim: np.ndarray, threshold: float) -> list[list[int]]:
    """Clusters (lists of row indices) in which every pair has sim >= threshold; merges the most
    alike pair of clusters first."""
    k = len(sim)
    link = np.array(sim, np.float64, copy=True)
    np.fill_diagonal(link, -np.inf)
    clusters: dict[int, list[int]] = {i: [i] for i in range(k)}
    alive = np.ones(k, bool)
    while alive.sum() > 1:
        masked = np.where(alive[:, None] & alive[None, :], link, -np.inf)
        a, b = np.unravel_index(int(np.argmax(masked)), masked.shape)
        if masked[a, b] < threshold:
            break
        clusters[a] += clusters.pop(b)
        link[a] = link[:, a] = np.minimum(link[a], link[b])
        link[a, a] = -np.inf
        alive[b] = False
    return [sorted(c) for c in clusters.values()]


def feature_inflow(graph: Graph, features: np.ndarray) -> np.ndarray:
    """(len(features), n_positions): the share of each feature's input (|edges|, rows normalised,
    summed along all paths) that starts at each position's embedding node."""
    norm = normalized_rows(graph)
    rows = row_nodes(graph)
    x = np.zeros((len(features), graph.n_nodes), dtype=norm.dtype)
    x[np.arange(len(features)), features] = 1
    total = np.zeros((len(features), graph.n_nodes))
    for _ in range(graph.n_layers + 3):
        x = x[:, rows] @ norm
        if not x.any():
            break
        total += x
    return total[:, graph.embedding_offset: graph.logit_offset]


def toy_regions(graph: Graph) -> dict[str, list[int]]:
    """Object name -> its image soft-token cells (row-major), for toy graphs that record their
    scene in graph.info["toy"]; empty otherwise."""
    truth = (graph.info or {}).get("toy") or {}
    if not truth.get("objects"):
        return {}
    from tracer.toy import world  # numpy + PIL only

    scene = world.Scene(tuple(world.SceneObject(**o) for o in truth["objects"]))
    return {o.name: scene.token_positions(o) for o in scene.objects}


def _cell_text(cells: list[tuple[int, int, int]]) -> str:
    many = len({c[0] for c in cells}) > 1
    return ",".join(f"img{i} ({r},{c})" if many else f"({r},{c})" for i, r, c in cells)


def _top_cells(weights: np.ndarray, share: float) -> np.ndarray:
    """Indices of the fewest cells whose weight adds up to `share` of the total, largest first."""
    order = np.argsort(-weights)
    cum = np.cumsum(weights[order]) / max(weights.sum(), 1e-300)
    return order[: int(np.searchsorted(cum, share - 1e-12)) + 1]


def suggest_supernodes(graph: Graph, *, top: int | None = 20, node_threshold: float = 0.8,
                       max_features: int = 200, threshold: float = 0.8, image_share: float = 0.5,
                       cell_share: float = 0.6, min_size: int = 2, decoders: np.ndarray | None = None,
                       regions: dict[str, list[int]] | None = None) -> list[Suggestion]:
    """Suggested supernodes of a graph, best score first (at most `top`).

    decoders: optional (n_features, d_model) decoder rows aligned with graph.features.
    regions: optional name -> image cells (row-major indices within an image); defaults to the toy
    scene's objects when the graph records them.
    Returns Suggestion objects; `members` are graph node indices (what the explorer's supernodes
    hold), `node_ids` the same as viewer JSON ids, `reason` one line to show next to the button.
    """
    from tracer.graph.neuronpedia import node_ids

    if graph.n_features < min_size:
        return []
    influence = node_influence(graph)[: graph.n_features]
    total = float(influence.sum())
    if total <= 0:
        return []
    kept = np.flatnonzero(influence >= cumulative_threshold(influence, node_threshold))
    cand = kept[np.argsort(-influence[kept], kind="stable")][:max_features]
    ids = node_ids(graph)
    regions = toy_regions(graph) if regions is None else regions
    out: list[Suggestion] = []

    def make(kind: str, members: np.ndarray, sim: np.ndarray, label: str, reason: str, cells=()) -> Suggestion:
        members = members[np.argsort(-influence[members], kind="stable")]
        pairs = sim[np.triu_indices(len(sim), 1)]
        score = float(pairs.mean()) * float(influence[members].sum() / total)
        return Suggestion(kind, [int(m) for m in members], [ids[m] for m in members], label,
                          reason, score, list(cells))

    def layers(members) -> str:
        ls = sorted({int(graph.features[m, 0]) for m in members})
        return f"L{ls[0]}" if len(ls) == 1 else f"L{ls[0]}-L{ls[-1]}"

    # (a) image cells
    if len(graph.image_positions) and len(cand) >= min_size:
        inflow = feature_inflow(graph, cand)
        img = inflow[:, graph.image_positions]
        share = img.sum(1) / np.maximum(inflow.sum(1), 1e-300)
        driven = np.flatnonzero(share >= image_share)
        if len(driven) >= min_size:
            sim_all = _cosine(img[driven])
            for group in complete_linkage(sim_all, threshold):
                if len(group) < min_size:
                    continue
                weights = img[driven[group]].sum(0)
                picked = np.sort(_top_cells(weights, cell_share))
                cells = [tuple(int(x) for x in graph.image_grid[i]) for i in picked]
                name = ""
                if regions:
                    cols = np.array([c for _, c in graph.grids()], np.int64)[graph.image_grid[:, 0]]
                    local = graph.image_grid[:, 1] * cols + graph.image_grid[:, 2]
                    on = {n: weights[np.isin(local, cells_)].sum() / weights.sum() for n, cells_ in regions.items()}
                    best = max(on, key=on.get)
                    name = best if on[best] >= 0.5 else ""
                members = cand[driven[group]]
                text = f"{len(group)} features reading cells {_cell_text(cells)}" + (f": the {name}" if name else "")
                more = "…" if len(cells) > 3 else ""
                label = f"{name} cells" if name else f"cells {_cell_text(cells[:3])}{more}"
                out.append(make(KINDS[0], members, sim_all[np.ix_(group, group)], label, text, cells))

    # (b) shared inputs / outputs
    if len(cand) >= min_size:
        a = graph.adjacency.astype(np.float64)
        sim = (_cosine(a[cand]) + _cosine(a[:, cand].T)) / 2
        for group in complete_linkage(sim, threshold):
            if len(group) >= min_size:
                members = cand[group]
                out.append(make(KINDS[1], members, sim[np.ix_(group, group)], f"shared in/out {layers(members)}",
                                f"{len(group)} features with alike inputs and outputs (edge cosine >= {threshold:g})"))

    # (c) decoder directions
    if decoders is not None and len(cand) >= min_size:
        decoders = np.asarray(decoders)
        if decoders.shape[0] != graph.n_features:
            raise ValueError(f"decoders have {decoders.shape[0]} rows, the graph has {graph.n_features} features")
        sim = _cosine(decoders[cand])
        for group in complete_linkage(sim, threshold):
            if len(group) >= min_size:
                members = cand[group]
                out.append(make(KINDS[2], members, sim[np.ix_(group, group)], f"decoder {layers(members)}",
                                f"{len(group)} features writing alike directions (decoder cosine >= {threshold:g})"))

    # one suggestion per member set: the best-scoring one, with the other reasons added
    merged: dict[frozenset, Suggestion] = {}
    for s in sorted(out, key=lambda s: -s.score):
        key = frozenset(s.members)
        if key in merged:
            merged[key].reason += "; " + s.reason
        else:
            merged[key] = s
    result = list(merged.values())
    return result if top is None else result[:top]


def format_suggestions(suggestions: list[Suggestion], graph: Graph) -> str:
    if not suggestions:
        return "no supernode suggestions (no group of features is alike enough)"
    lines = []
    for k, s in enumerate(suggestions, 1):
        lines.append(f"{k:>2}. [{s.kind}] score {s.score:.3f}  {s.reason}")
        lines += [f"      {graph.node_label(m)}  ({s.node_ids[i]})" for i, m in enumerate(s.members)]
    return "\n".join(lines)
