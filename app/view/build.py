"""The displayed view of a graph: pruned (or pinned-only), minus hidden nodes, with supernodes
collapsed, laid out, as cytoscape elements; plus the highlight sets the stylesheet uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.graph.graph import EMBEDDING, ERROR, FEATURE, LOGIT

from app.annotations import Annotations
from app.view.keys import edge_id
from app.view.positions import compute_positions
from app.view.session import GraphSession

PRUNED, PINNED = "pruned", "pinned"
DECORATIONS = ("axis", "block")  # element kinds that are drawn but are not graph nodes

COLOURS = {
    "feature": "#f28e2b",
    "error": "#b8b8b8",
    "text": "#8fa3b8",
    "image": "#4e9a9a",
    "logit": "#59a14f",
    "supernode": "#9c6ade",
}
POSITIVE, NEGATIVE = "#2f6fbf", "#d0453a"
MIN_SIZE, MAX_SIZE, MAX_SIZE_IMAGE = 8.0, 26.0, 14.0  # px; slots are 34 (text) and 15 (image) px apart


@dataclass
class DisplayView:
    mode: str
    node_indices: np.ndarray  # graph nodes in the view (supernode members included)
    edge_rows: np.ndarray  # the edges in the view: adjacency rows (targets) ...
    edge_cols: np.ndarray  # ... and columns (sources)
    shape: tuple[int, int]  # of graph.adjacency
    display_of: dict[int, str]  # graph node index -> element key (its supernode's id if grouped)
    elements: list[dict] = field(default_factory=list)
    edges: list[tuple[str, str, float]] = field(default_factory=list)  # element keys, summed weight
    n_nodes: int = 0  # elements drawn (a supernode counts once)
    n_edges: int = 0
    nodes_cut: bool = False
    edges_cut: bool = False
    n_hidden: int = 0
    n_pinned_missing: int = 0

    @property
    def edge_mask(self) -> np.ndarray:
        """(n_rows, n_nodes) bool, rows as graph.adjacency: the edges in the view."""
        mask = np.zeros(self.shape, bool)
        mask[self.edge_rows, self.edge_cols] = True
        return mask


def node_class(session: GraphSession, index: int) -> str:
    kind = session.kinds[index]
    if kind == EMBEDDING:
        pos = index - session.graph.embedding_offset
        return "image" if session.image_mask[pos] else "text"
    return {FEATURE: "feature", ERROR: "error", LOGIT: "logit"}[kind]


def short_token(text: str, n: int = 12) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def build_view(session: GraphSession, annotations: Annotations, node_threshold: float, edge_threshold: float,
               mode: str = PRUNED) -> DisplayView:
    g = session.graph
    hidden = np.zeros(g.n_nodes, bool)
    for key in annotations.hidden:
        if key in session.index:
            hidden[session.index[key]] = True
    nodes_cut = edges_cut = False
    n_pinned_missing = 0
    if mode == PINNED:
        node_mask = np.zeros(g.n_nodes, bool)
        for key in annotations.pinned:
            if key in session.index:
                node_mask[session.index[key]] = True
            else:
                n_pinned_missing += 1
        n_hidden = int((node_mask & hidden).sum())
        node_mask &= ~hidden
        R = np.flatnonzero(node_mask[session.rows])
        C = np.flatnonzero(node_mask)
        r, c = np.nonzero(g.adjacency[np.ix_(R, C)])
        r, c = R[r], C[c]
        if len(r) > session.max_edges:
            edges_cut = True
            keep = np.sort(np.argsort(-np.abs(g.adjacency[r, c]), kind="stable")[: session.max_edges])
            r, c = r[keep], c[keep]
    else:
        budget = session.budget(node_threshold, edge_threshold)
        nodes_cut, edges_cut = budget.nodes_cut, budget.edges_cut
        n_hidden = int((budget.node_mask & hidden).sum())
        node_mask = budget.node_mask & ~hidden
        r, c = budget.edge_rows, budget.edge_cols
        if n_hidden:
            keep = node_mask[c] & node_mask[session.rows[r]]
            r, c = r[keep], c[keep]

    indices = np.flatnonzero(node_mask)
    view = DisplayView(mode, indices, r, c, g.adjacency.shape, {}, nodes_cut=nodes_cut, edges_cut=edges_cut,
                       n_hidden=n_hidden, n_pinned_missing=n_pinned_missing)
    if mode == PINNED:  # a compact layout of just the pinned nodes
        placement = compute_positions(g, indices, session.influence)
        xy = placement.xy
        shown_inf = session.influence[indices[session.kinds[indices] != LOGIT]] if len(indices) else np.zeros(0)
        max_inf = float(shown_inf.max()) if shown_inf.size and shown_inf.max() > 0 else 1.0
        max_w = float(np.abs(g.adjacency[r, c]).max()) if len(r) else 1.0
    else:  # positions and scales of the loosest view, so that slider steps move nothing
        ref = session.reference
        extra = np.setdiff1d(indices, ref["indices"])
        if len(extra):
            placement = compute_positions(g, np.union1d(ref["indices"], indices), session.influence)
            universe = np.union1d(ref["indices"], indices)
        else:
            placement = session.reference_placement()
            universe = ref["indices"]
        xy = placement.xy[np.searchsorted(universe, indices)]
        max_inf, max_w = ref["max_influence"], ref["max_weight"]

    member_of = annotations.supernode_of()
    supernodes = {s["id"]: s for s in annotations.supernodes}
    pinned = set(annotations.pinned)
    influence = session.influence

    elements: list[dict] = []
    groups: dict[str, list[int]] = {}
    for j, index in enumerate(indices.tolist()):
        key = session.keys[index]
        sid = member_of.get(key)
        if sid in supernodes:
            view.display_of[index] = sid
            groups.setdefault(sid, []).append(j)
            continue
        view.display_of[index] = key
        cls = node_class(session, index)
        label = annotations.labels.get(key) or session.default_label(index)
        if cls == "logit":
            target = g.targets[index - g.logit_offset]
            size = 22 + 26 * float(np.sqrt(max(target.probability, 0.0)))
            display = f"{short_token(target.label, 16)} ({target.probability:.2f})"
        else:
            # the largest node fits its slot (nodes of one cell sit one slot apart)
            top_size = MAX_SIZE_IMAGE if cls == "image" or session.image_mask[session.positions[index]] else MAX_SIZE
            size = MIN_SIZE + (top_size - MIN_SIZE) * float(np.sqrt(min(max(influence[index], 0.0) / max_inf, 1.0)))
            if cls == "text":
                display = short_token(session.token_text(index - g.embedding_offset))
            elif cls == "feature":
                display = short_token(annotations.labels.get(key, ""), 24)
            else:
                display = ""
        colour = COLOURS[cls]
        if cls == "image":
            colour = session.patch_colours.get(index - g.embedding_offset, colour)
        data = {"id": key, "label": label, "display": display, "kind": cls, "size": round(size, 1),
                "color": colour, "influence": round(float(influence[index]), 6)}
        if key in annotations.labels:
            data["labelled"] = True
        if key in pinned:
            data["pinned"] = True
        elements.append({
            "data": data,
            "position": {"x": round(float(xy[j, 0]), 1), "y": round(float(xy[j, 1]), 1)},
        })
    for sid, members in groups.items():
        s = supernodes[sid]
        centre = xy[members].mean(0)
        n_all = len(s["members"])
        elements.append({
            "data": {"id": sid, "label": f"{s['label']} ({len(members)}/{n_all} nodes)", "display": short_token(s["label"], 24),
                     "kind": "supernode", "size": 34.0, "color": COLOURS["supernode"],
                     "influence": round(float(influence[indices[members]].sum()), 6)},
            "position": {"x": round(float(centre[0]), 1), "y": round(float(centre[1]), 1)},
        })
        if all(m in pinned for m in s["members"]):
            elements[-1]["data"]["pinned"] = True
    view.n_nodes = len(elements)

    # Edges (source -> target), weights summed where supernodes merge several.
    weights = g.adjacency[r, c].astype(np.float64)
    targets = session.rows[r]
    if groups:
        merged: dict[tuple[str, str], float] = {}
        for s_idx, t_idx, w in zip(c.tolist(), targets.tolist(), weights.tolist()):
            s_key, t_key = view.display_of[s_idx], view.display_of[t_idx]
            if s_key != t_key:
                merged[(s_key, t_key)] = merged.get((s_key, t_key), 0.0) + w
        view.edges = [(s, t, w) for (s, t), w in merged.items()]
    else:
        keys = session.keys
        view.edges = [(keys[s], keys[t], w) for s, t, w in zip(c.tolist(), targets.tolist(), weights.tolist())]
    max_w = max_w or 1.0
    for s_key, t_key, w in view.edges:
        elements.append({"data": {"id": edge_id(s_key, t_key), "source": s_key, "target": t_key,
                                  "weight": round(w, 5), "width": round(0.6 + 4.4 * min(abs(w) / max_w, 1.0), 2),
                                  "color": POSITIVE if w >= 0 else NEGATIVE}})
    view.n_edges = len(view.edges)

    # Decorations: level labels on the left, a shaded block behind each image's soft tokens.
    if len(indices):
        x_left = placement.x_min - 140
        for k, (name, y) in enumerate(placement.level_y.items()):
            elements.append({"data": {"id": f"axis_{k}", "label": name, "display": name, "kind": "axis",
                                      "size": 1, "color": "#ffffff"},
                             "position": {"x": x_left, "y": y},
                             "selectable": False, "grabbable": False})
        top = -g.n_layers * placement.level_height - 50
        for image, x0, x1 in placement.image_blocks:
            rows, cols = session.grid_shape(image)
            name = f"image {image}: {rows}x{cols} soft tokens" if len(g.images) > 1 else f"image: {rows}x{cols} soft tokens"
            elements.append({"data": {"id": f"block_{image}", "label": name, "display": name, "kind": "block",
                                      "size": 1, "color": "#4e9a9a", "w": round(x1 - x0 + 30, 1), "h": round(-top + 50, 1)},
                             "position": {"x": round((x0 + x1) / 2, 1), "y": round((top + 50) / 2, 1)},
                             "selectable": False, "grabbable": False})
    view.elements = elements
    return view


def selection_highlight(view: DisplayView, key: str | None, k: int = 5) -> dict:
    """The selected element, its k strongest inputs and outputs (by |weight|) in the view."""
    if not key:
        return {"nodes": [], "edges": [], "selected": None}
    incoming = sorted((e for e in view.edges if e[1] == key), key=lambda e: -abs(e[2]))[:k]
    outgoing = sorted((e for e in view.edges if e[0] == key), key=lambda e: -abs(e[2]))[:k]
    nodes = [key] + [e[0] for e in incoming] + [e[1] for e in outgoing]
    return {"nodes": list(dict.fromkeys(nodes)), "edges": [edge_id(s, t) for s, t, _ in incoming + outgoing],
            "selected": key}


def base_stylesheet() -> list[dict]:
    return [
        {"selector": "node", "style": {
            "width": "data(size)", "height": "data(size)", "background-color": "data(color)",
            "label": "data(display)", "font-size": 9, "color": "#333", "text-valign": "bottom",
            "text-margin-y": 2, "min-zoomed-font-size": 7, "border-width": 1, "border-color": "#555",
            "text-wrap": "ellipsis", "text-max-width": 90,
        }},
        {"selector": 'node[kind = "feature"]', "style": {"shape": "ellipse"}},
        {"selector": 'node[kind = "error"]', "style": {"shape": "diamond", "border-style": "dashed"}},
        {"selector": 'node[kind = "text"]', "style": {"shape": "round-rectangle"}},
        {"selector": 'node[kind = "image"]', "style": {"shape": "rectangle", "border-color": "#1d6b6b", "border-width": 2}},
        {"selector": 'node[kind = "logit"]', "style": {"shape": "hexagon", "font-size": 11, "font-weight": "bold",
                                             "text-valign": "top", "text-margin-y": -3}},
        {"selector": 'node[kind = "supernode"]', "style": {"shape": "round-octagon", "font-size": 11, "font-weight": "bold",
                                                 "border-width": 2, "border-color": "#5b2c91"}},
        {"selector": "node[?labelled]", "style": {"border-width": 2, "border-color": "#7a4a00"}},
        {"selector": "node[?pinned]", "style": {"border-width": 4, "border-color": "#e0b000"}},
        {"selector": 'node[kind = "axis"]', "style": {"shape": "rectangle", "background-opacity": 0, "border-width": 0,
                                            "width": 1, "height": 1, "font-size": 34, "color": "#777",
                                            "min-zoomed-font-size": 0, "text-valign": "center",
                                            "text-halign": "left", "text-max-width": 400, "events": "no"}},
        {"selector": 'node[kind = "block"]', "style": {"shape": "round-rectangle", "width": "data(w)", "height": "data(h)",
                                             "background-color": "#4e9a9a", "background-opacity": 0.07,
                                             "border-width": 1, "border-color": "#9cc", "border-style": "dashed",
                                             "text-valign": "top", "text-margin-y": 36, "font-size": 26,
                                             "min-zoomed-font-size": 0, "text-max-width": 2000,
                                             "color": "#2b6b6b", "events": "no",
                                             "z-index": 0}},
        {"selector": "edge", "style": {
            "curve-style": "haystack", "haystack-radius": 0, "width": "data(width)", "line-color": "data(color)",
            "opacity": 0.45,
        }},
        {"selector": "node:selected", "style": {"border-width": 4, "border-color": "#111", "overlay-opacity": 0}},
    ]
