"""The circuit that starts at an image region (a set of soft-token grid cells)."""

from __future__ import annotations

import numpy as np

from tracer.graph.pruning import influence_from

from app.view.build import DisplayView
from app.view.session import GraphSession


def region_circuit(session: GraphSession, view: DisplayView, image: int, cells) -> dict:
    """Everything reachable from the region's embedding nodes through the view's edges, and the
    share of each logit's (normalised) input that flows from the region: along the edges in
    the view, and along all edges of the graph.

    Returns {"sources": [graph node], "nodes": [element keys reachable, in the view],
             "edges_from": [element keys whose outgoing edges are in the circuit],
             "logits": [{"key", "label", "share_view", "share_full"}]}.
    """
    g = session.graph
    sources = session.cell_nodes(image, cells)
    if len(sources) == 0:
        return {"sources": [], "nodes": [], "edges_from": [], "logits": []}
    in_view = influence_from(g, sources, view.edge_mask)
    full = session.full_influence_from(sources)
    shown = np.zeros(g.n_nodes, bool)
    shown[view.node_indices] = True
    reachable = np.flatnonzero(in_view["reachable"] & shown)
    keys = list(dict.fromkeys(view.display_of[i] for i in reachable.tolist() if i in view.display_of))
    logits = []
    for k, target in enumerate(g.targets):
        logits.append({"key": session.keys[g.logit_offset + k], "label": target.label,
                       "probability": float(target.probability),
                       "share_view": float(in_view["logit_share"][k]), "share_full": float(full["logit_share"][k])})
    return {"sources": sources.tolist(), "nodes": keys, "edges_from": keys, "logits": logits}
