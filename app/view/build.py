"""The displayed view of a graph: pruned (or pinned-only), minus hidden nodes, with supernodes
collapsed, laid out, as cytoscape elements; plus the highlight sets the stylesheet uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.graph.graph import EMBEDDING, ERROR, FEATURE, LOGIT

from app.annotations import Annotations
from app.view.keys import edge_id
from app.view.positions import AXIS, LOGITS, SLOT, SLOT_ERROR, THUMB, compute_positions
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
FEATURE_BUDGETS = (10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500, 1000)  # the budget slider's steps
DEFAULT_FEATURE_BUDGET = 40  # features drawn by default: a view a person can take in


def feature_budget(index) -> int:
    """The budget slider's value (an index into FEATURE_BUDGETS) as a number of features."""
    if index is None:
        return DEFAULT_FEATURE_BUDGET
    return FEATURE_BUDGETS[int(min(max(int(index), 0), len(FEATURE_BUDGETS) - 1))]
POSITIVE, NEGATIVE = "#2f6fbf", "#d0453a"
MIN_SIZE, MAX_SIZE, MAX_ERROR_SIZE = 9.0, 24.0, 16.0  # px; nodes of one cell sit 50 (errors 22) px apart


@dataclass
class DisplayView:
    mode: str
    node_indices: np.ndarray  # graph nodes in the view (supernode members included)
    edge_rows: np.ndarray  # the edges in the view: adjacency rows (targets) ...
    edge_cols: np.ndarray  # ... and columns (sources)
    shape: tuple[int, int]  # of graph.adjacency
    display_of: dict[int, str]  # graph node index -> element key (its supernode's id if grouped)
    nodes: list[dict] = field(default_factory=list)  # cytoscape node elements (decorations included)
    edge_elements: list[dict] = field(default_factory=list)  # cytoscape edge elements of every kept edge
    edges: list[tuple[str, str, float]] = field(default_factory=list)  # element keys, summed weight
    n_nodes: int = 0  # elements drawn (a supernode counts once)
    n_edges: int = 0
    nodes_cut: bool = False
    edges_cut: bool = False
    n_hidden: int = 0
    n_pinned_missing: int = 0
    n_features: int = 0  # feature nodes in the view
    n_features_threshold: int = 0  # feature nodes the node threshold alone keeps (before the feature budget)

    @property
    def elements(self) -> list[dict]:
        return self.nodes + self.edge_elements

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


def _feature_colour(activation: float, top: float) -> str:
    """Light to deep orange with the activation (relative to the graph's strongest)."""
    t = min(max(activation / top, 0.0), 1.0) if top > 0 else 1.0
    lo, hi = (253, 208, 162), (217, 95, 2)
    return "#%02x%02x%02x" % tuple(round(a + (b - a) * t) for a, b in zip(lo, hi))


def build_view(session: GraphSession, annotations: Annotations, node_threshold: float, edge_threshold: float,
               mode: str = PRUNED, max_features: int | None = None) -> DisplayView:
    """mode PRUNED: the pruned graph (at most max_features features, the most influential);
    PINNED: the pinned nodes and supernodes with all their edges (the subgraph pane)."""
    g = session.graph
    hidden = np.zeros(g.n_nodes, bool)
    for key in annotations.hidden:
        if key in session.index:
            hidden[session.index[key]] = True
    nodes_cut = edges_cut = False
    n_pinned_missing = 0
    n_features_kept = 0
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
        budget = session.budget(node_threshold, edge_threshold, max_features)
        nodes_cut, edges_cut = budget.nodes_cut, budget.edges_cut
        n_features_kept = session.budget(node_threshold, edge_threshold, None).node_mask[: g.n_features].sum()
        n_hidden = int((budget.node_mask & hidden).sum())
        node_mask = budget.node_mask & ~hidden
        r, c = budget.edge_rows, budget.edge_cols
        if n_hidden:
            keep = node_mask[c] & node_mask[session.rows[r]]
            r, c = r[keep], c[keep]

    indices = np.flatnonzero(node_mask)
    view = DisplayView(mode, indices, r, c, g.adjacency.shape, {}, nodes_cut=nodes_cut, edges_cut=edges_cut,
                       n_hidden=n_hidden, n_pinned_missing=n_pinned_missing)
    if mode == PINNED and not len(indices):
        return view  # an empty subgraph: nothing drawn, not even the axis
    view.n_features = int((session.kinds[indices] == FEATURE).sum())
    view.n_features_threshold = int(n_features_kept)
    ref = session.reference
    max_inf = ref["max_influence"]
    max_w = float(np.abs(g.adjacency[r, c]).max()) if len(r) else 1.0

    member_of = annotations.supernode_of()
    supernodes = {s["id"]: s for s in annotations.supernodes}
    pinned = set(annotations.pinned)
    influence = session.influence
    emb0 = g.embedding_offset

    # The drawn items: graph nodes (a supernode's members folded into it), then the whole token
    # axis (every embedding, in the view or not), each with its level, position and rank.
    items: list[dict] = []
    groups: dict[str, list[int]] = {}
    for index in indices.tolist():
        key = session.keys[index]
        sid = member_of.get(key)
        if sid in supernodes:
            view.display_of[index] = sid
            groups.setdefault(sid, []).append(index)
        else:
            view.display_of[index] = key
            if session.kinds[index] != EMBEDDING:
                items.append({"key": key, "index": index})
    for sid, members in groups.items():
        items.append({"key": sid, "members": members})
    in_view = set(indices.tolist())
    for pos in range(g.n_embeddings):  # the subgraph shows only its own embeddings
        if mode == PINNED and emb0 + pos not in view.display_of:
            continue
        if view.display_of.get(emb0 + pos, session.keys[emb0 + pos]) == session.keys[emb0 + pos]:
            items.append({"key": session.keys[emb0 + pos], "index": emb0 + pos})

    levels, positions, rank, slots = [], [], [], []
    for it in items:
        slots.append(SLOT_ERROR if "index" in it and session.kinds[it["index"]] == ERROR else SLOT)
        if "members" in it:
            m = np.array(it["members"])
            lv = session.layers[m].astype(float)
            levels.append(int(round(lv[lv >= 0].mean())) if (lv >= 0).any() else AXIS)
            positions.append(int(session.positions[m].max()))
            rank.append(-np.inf)
            continue
        i = it["index"]
        kind = session.kinds[i]
        levels.append(AXIS if kind == EMBEDDING else LOGITS if kind == LOGIT else int(session.layers[i]))
        positions.append(max(int(session.positions[i]), 0))
        rank.append(-float(influence[i]) + (1e9 if kind == ERROR else 0.0))
    placement = compute_positions(g, np.array(levels, np.int64), np.array(positions, np.int64), np.array(rank),
                                  np.array(slots), compact=mode == PINNED)
    xy = placement.xy

    top_act = ref["max_activation"]
    thumbs = session.patch_thumbnails
    nodes: list[dict] = []
    for j, it in enumerate(items):
        key = it["key"]
        position = {"x": round(float(xy[j, 0]), 1), "y": round(float(xy[j, 1]), 1)}
        if "members" in it:
            s = supernodes[key]
            data = {"id": key, "label": f"{s['label']} ({len(it['members'])}/{len(s['members'])} nodes)",
                    "display": short_token(s["label"], 18), "kind": "supernode", "size": 26.0,
                    "color": COLOURS["supernode"], "influence": round(float(influence[it["members"]].sum()), 6)}
            if all(m in pinned for m in s["members"]):
                data["pinned"] = True
            nodes.append({"data": data, "position": position})
            continue
        index = it["index"]
        cls = node_class(session, index)
        label = annotations.labels.get(key) or session.default_label(index)
        if cls == "logit":
            target = g.targets[index - g.logit_offset]
            size = 16 + 14 * float(np.sqrt(max(target.probability, 0.0)))
            display = f"{short_token(target.label, 14)} ({target.probability:.2f})"
            colour = COLOURS[cls]
        elif cls == "feature":
            size = MIN_SIZE + (MAX_SIZE - MIN_SIZE) * float(np.sqrt(min(max(influence[index], 0.0) / max_inf, 1.0)))
            layer, _, feat = g.features[index]
            display = short_token(annotations.labels.get(key) or f"L{layer} #{feat}", 14)
            colour = _feature_colour(abs(float(g.activations[index])), top_act)
        elif cls == "error":  # unlabelled, in a narrower slot (positions.SLOT_ERROR)
            size = MIN_SIZE + (MAX_ERROR_SIZE - MIN_SIZE) * float(np.sqrt(min(max(influence[index], 0.0) / max_inf, 1.0)))
            display, colour = "", COLOURS[cls]
        else:  # the token axis
            pos = index - emb0
            size = THUMB if cls == "image" else 8.0
            display = "" if cls == "image" else short_token(session.token_text(pos), 16)
            colour = session.patch_colours.get(pos, COLOURS["image"]) if cls == "image" else COLOURS["text"]
        data = {"id": key, "label": label, "display": display, "kind": cls, "size": round(size, 1),
                "color": colour, "influence": round(float(influence[index]), 6)}
        if cls == "image" and (index - emb0) in thumbs:
            data["thumb"] = thumbs[index - emb0]
        if cls == "text":
            data["tmy"] = round(4 + 3.4 * len(display), 1)  # a vertical label hangs below its tick
        if index not in in_view:
            data["offview"] = True
        if key in annotations.labels:
            data["labelled"] = True
        if key in pinned:
            data["pinned"] = True
        nodes.append({"data": data, "position": position})
    view.n_nodes = len(nodes)

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
    view.edge_elements = [
        {"data": {"id": edge_id(s_key, t_key), "source": s_key, "target": t_key, "weight": round(w, 5),
                  "width": round(0.8 + 5.2 * min(abs(w) / max_w, 1.0), 2), "color": POSITIVE if w >= 0 else NEGATIVE}}
        for s_key, t_key, w in view.edges]
    view.n_edges = len(view.edges)

    # Decorations: level labels on the left, the image block's caption under its thumbnails.
    decorations = []
    x_left = placement.x_min - 46
    for k, (name, y) in enumerate(placement.level_y.items()):
        if name == "tokens":
            continue
        decorations.append({"data": {"id": f"axis_{k}", "label": name, "display": name, "kind": "axis", "size": 1,
                                     "color": "#ffffff"}, "position": {"x": x_left, "y": round(y, 1)},
                            "selectable": False, "grabbable": False})
    for image, x0, x1, y1 in placement.image_blocks:
        rows, cols = session.grid_shape(image)
        name = f"image {image}: {rows}x{cols}" if len(g.images) > 1 else f"image {rows}x{cols}"
        decorations.append({"data": {"id": f"block_{image}", "label": name, "display": name, "kind": "block",
                                     "size": 1, "color": "#ffffff"},
                            "position": {"x": round((x0 + x1) / 2, 1), "y": round(y1 + 6, 1)},
                            "selectable": False, "grabbable": False})
    view.nodes = nodes + decorations
    return view


def edges_payload(view: DisplayView) -> list[list]:
    """The view's edges for the browser's on-demand drawing: [source, target, weight, width]."""
    return [[e["data"]["source"], e["data"]["target"], e["data"]["weight"], e["data"]["width"]]
            for e in view.edge_elements]


def drawn_elements(view: DisplayView, all_edges: bool) -> list[dict]:
    """What cytoscape gets: every node, and every edge (all-edges mode, the pinned subgraph) or
    only the edges among pinned nodes (the rest is drawn on demand in the browser)."""
    if all_edges or view.mode == PINNED:
        return view.nodes + view.edge_elements
    pinned = {n["data"]["id"] for n in view.nodes if n["data"].get("pinned")}
    return view.nodes + [e for e in view.edge_elements if e["data"]["source"] in pinned and e["data"]["target"] in pinned]


def base_stylesheet() -> list[dict]:
    """Font sizes are in model pixels: the layout fits a laptop window near zoom 1 (positions.py),
    so they render at about their size; min-zoomed-font-size only hides labels far below fit."""
    return [
        {"selector": "node", "style": {
            "width": "data(size)", "height": "data(size)", "background-color": "data(color)",
            "label": "data(display)", "font-size": 11, "color": "#222", "text-valign": "bottom",
            "text-margin-y": 2, "min-zoomed-font-size": 4, "border-width": 1, "border-color": "#555",
            "text-wrap": "ellipsis", "text-max-width": 48, "text-background-color": "#ffffff",
            "text-background-opacity": 0.7, "text-background-padding": 1,
        }},
        {"selector": 'node[kind = "feature"]', "style": {"shape": "ellipse"}},
        {"selector": 'node[kind = "error"]', "style": {"shape": "diamond", "border-style": "dashed"}},
        {"selector": 'node[kind = "text"]', "style": {
            "shape": "round-rectangle", "width": 8, "height": 8, "font-size": 11, "text-rotation": -1.5708,
            "text-margin-y": "data(tmy)", "text-max-width": 200, "font-family": "monospace", "color": "#234",
            "text-background-opacity": 0}},
        {"selector": 'node[kind = "image"]', "style": {
            "shape": "rectangle", "border-color": "#1d6b6b", "border-width": 1, "background-image": "data(thumb)",
            "background-fit": "cover", "background-image-smoothing": "no"}},
        {"selector": 'node[kind = "logit"]', "style": {"shape": "hexagon", "font-size": 13, "font-weight": "bold",
                                             "text-valign": "top", "text-margin-y": -3, "text-max-width": 110}},
        {"selector": 'node[kind = "supernode"]', "style": {"shape": "round-octagon", "font-size": 12, "font-weight": "bold",
                                                 "border-width": 2, "border-color": "#5b2c91", "text-max-width": 90}},
        {"selector": "node[?offview]", "style": {"opacity": 0.55}},
        {"selector": "node[?labelled]", "style": {"border-width": 2, "border-color": "#7a4a00"}},
        {"selector": "node[?pinned]", "style": {"border-width": 3, "border-color": "#e0b000"}},
        {"selector": 'node[kind = "axis"]', "style": {"shape": "rectangle", "background-opacity": 0, "border-width": 0,
                                            "width": 1, "height": 1, "font-size": 12, "color": "#666",
                                            "text-valign": "center", "text-halign": "left",
                                            "text-background-opacity": 0, "events": "no"}},
        {"selector": 'node[kind = "block"]', "style": {"shape": "rectangle", "background-opacity": 0, "border-width": 0,
                                             "width": 1, "height": 1, "font-size": 11, "color": "#2b6b6b",
                                             "text-valign": "bottom", "text-max-width": 300,
                                             "text-background-opacity": 0, "events": "no"}},
        {"selector": "edge", "style": {
            "curve-style": "haystack", "haystack-radius": 0, "width": "data(width)", "line-color": "data(color)",
            "opacity": 0.7,
        }},
        # hover / selection (classes set in assets/vlmc.js): the focus, its neighbours, the rest faded
        {"selector": ".faded", "style": {"opacity": 0.2}},
        {"selector": 'node[kind = "image"].faded', "style": {"opacity": 0.45}},  # the image stays recognisable
        {"selector": "node.nbr", "style": {"opacity": 1}},
        {"selector": "edge.focus-edge", "style": {"opacity": 0.9, "z-index": 20}},
        {"selector": "node.focus", "style": {"opacity": 1, "border-width": 3, "border-color": "#111"}},
        {"selector": "node:selected", "style": {"border-width": 4, "border-color": "#111", "overlay-opacity": 0}},
    ]
