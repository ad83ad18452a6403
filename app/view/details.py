"""What the details panel shows about one node, as plain data."""

from __future__ import annotations

import numpy as np

from tracer.graph.graph import EMBEDDING, FEATURE, LOGIT

from app.annotations import Annotations
from app.view.session import GraphSession

TOP_EDGES = 8


def strongest_edges(session: GraphSession, index: int, k: int = TOP_EDGES) -> tuple[list[dict], list[dict]]:
    """Strongest direct inputs and outputs of a node in the full graph, by |weight|."""
    g = session.graph
    incoming, outgoing = [], []
    row = g.row_of_node(index)
    if row is not None:
        w = g.adjacency[row]
        order = np.argsort(-np.abs(w), kind="stable")[:k]
        incoming = [{"index": int(i), "key": session.keys[i], "weight": float(w[i])} for i in order if w[i] != 0]
    if session.kinds[index] != LOGIT:
        col = g.adjacency[:, index]
        order = np.argsort(-np.abs(col), kind="stable")[:k]
        outgoing = [{"index": int(session.rows[r]), "key": session.keys[session.rows[r]], "weight": float(col[r])}
                    for r in order if col[r] != 0]
    return incoming, outgoing


def feature_position_activations(session: GraphSession, index: int) -> np.ndarray | None:
    """Activation of a feature at every position of the prompt (from the graph file if stored;
    otherwise from the graph's own nodes of the same (layer, feature) at other positions)."""
    g = session.graph
    if session.kinds[index] != FEATURE:
        return None
    if g.feature_position_activations is not None and len(g.feature_position_activations) == g.n_features:
        return np.asarray(g.feature_position_activations[index], dtype=np.float64)
    layer, _, feat = g.features[index]
    same = np.flatnonzero((g.features[:, 0] == layer) & (g.features[:, 2] == feat))
    out = np.zeros(g.n_positions)
    out[g.features[same, 1]] = g.activations[same]
    return out


def image_heat(session: GraphSession, values: np.ndarray, image: int) -> np.ndarray:
    """Per-position values arranged on one image's soft-token grid."""
    rows, cols = session.grid_shape(image)
    grid = np.zeros((rows, cols))
    for pos, (img, r, c) in session.cell_of_position.items():
        if img == image:
            grid[r, c] = values[pos]
    return grid


def node_details(session: GraphSession, key: str, annotations: Annotations) -> dict | None:
    g = session.graph
    s = annotations.supernode(key)
    if s is not None:
        members = [m for m in s["members"] if m in session.index]
        return {"key": key, "kind": "supernode", "label": s["label"], "default_label": key,
                "members": [{"key": m, "label": annotations.labels.get(m) or session.default_label(session.index[m])}
                            for m in members],
                "influence": float(sum(session.influence[session.index[m]] for m in members))}
    if key not in session.index:
        return None
    index = session.index[key]
    kind = session.kinds[index]
    d: dict = {"key": key, "index": index, "kind": str(kind), "default_label": session.default_label(index),
               "label": annotations.labels.get(key, ""), "influence": float(session.influence[index]),
               "layer": int(session.layers[index]), "position": int(session.positions[index]),
               "token": session.token_text(session.positions[index]),
               "pinned": key in annotations.pinned}
    d["inputs"], d["outputs"] = strongest_edges(session, index)
    for e in d["inputs"] + d["outputs"]:
        e["label"] = annotations.labels.get(e["key"]) or session.default_label(e["index"])
    if kind == FEATURE:
        layer, pos, feat = (int(v) for v in g.features[index])
        d.update(feature=feat, activation=float(g.activations[index]))
        d["promoted"] = _top_tokens(session, g.top_logit_ids, g.top_logit_values, index)
        d["suppressed"] = _top_tokens(session, g.bottom_logit_ids, g.bottom_logit_values, index)
        acts = feature_position_activations(session, index)
        d["position_activations"] = acts
    elif kind == LOGIT:
        target = g.targets[index - g.logit_offset]
        d.update(target=target.label, token_id=target.token_id, probability=float(target.probability),
                 target_kind=target.kind, value=float(g.values[g.n_features + index - g.logit_offset]))
    elif kind == EMBEDDING:
        pos = index - g.embedding_offset
        d.update(token_id=int(g.input_ids[pos]), cell=session.cell_of_position.get(pos))
    return d


def _top_tokens(session: GraphSession, ids, values, index: int) -> list[tuple[str, float]]:
    if ids is None or values is None or len(ids) <= index:
        return []
    return [(session.token_string(t), float(v)) for t, v in zip(np.asarray(ids[index]).tolist(), np.asarray(values[index]).tolist())]

