"""GraphML export (for Gephi, Cytoscape desktop, yEd, networkx.read_graphml), written with
xml.etree so that networkx is not needed.

One directed graph; node ids are the viewer-JSON node ids (see tracer.graph.neuronpedia).
Node attributes: kind (feature / error / embedding / logit), layer (embeddings -1, logits
n_layers), position, feature (feature index; -1 for other kinds), token_id (embeddings and logits;
-1 otherwise), label, influence (un-normalised influence on the logits), activation (features;
0 otherwise), is_image, image, row, col (image soft tokens; -1 otherwise). Edge attribute:
weight = A[target, source]. Graph attribute: image_grids, the JSON list of [rows, cols] per image.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from tracer.files import atomic_path
from tracer.graph.graph import Graph

NS = "http://graphml.graphdrawing.org/xmlns"

NODE_KEYS = [
    ("kind", "string"), ("layer", "int"), ("position", "int"), ("feature", "int"), ("token_id", "int"),
    ("label", "string"), ("influence", "double"), ("activation", "double"), ("is_image", "boolean"),
    ("image", "int"), ("row", "int"), ("col", "int"),
]
EDGE_KEYS = [("weight", "double")]


def graph_to_graphml(graph: Graph, pruned=None, *, node_mask=None, edge_mask=None, labels: dict | None = None,
                     node_influence: np.ndarray | None = None) -> ET.ElementTree:
    """The GraphML document of a graph (optionally pruned: a `Pruned` or explicit masks; with
    neither, all nodes and every non-zero edge). Feature and error nodes without a kept edge are
    left out, as in the viewer JSON; embeddings and logits are always written."""
    from tracer.graph.neuronpedia import _kept_edges, _label_lookup, _resolve_masks, _target_token_ids, node_ids
    from tracer.graph.pruning import node_influence as compute_influence

    graph.validate()
    node_mask, edge_mask = _resolve_masks(graph, pruned, node_mask, edge_mask)
    if node_influence is None:
        node_influence = pruned.node_influence if pruned is not None else compute_influence(graph)
    ids = node_ids(graph)
    if labels is None:
        labels = graph.info.get("clerps") if isinstance(graph.info.get("clerps"), dict) else None
    label_of = _label_lookup(labels, ids)

    r_idx, src, dst, write = _kept_edges(graph, node_mask, edge_mask)

    ET.register_namespace("", NS)
    root = ET.Element(f"{{{NS}}}graphml")
    for name, typ in NODE_KEYS:
        ET.SubElement(root, f"{{{NS}}}key", {"id": f"n_{name}", "for": "node", "attr.name": name, "attr.type": typ})
    for name, typ in EDGE_KEYS:
        ET.SubElement(root, f"{{{NS}}}key", {"id": f"e_{name}", "for": "edge", "attr.name": name, "attr.type": typ})
    ET.SubElement(root, f"{{{NS}}}key", {"id": "g_image_grids", "for": "graph", "attr.name": "image_grids",
                                         "attr.type": "string"})
    g = ET.SubElement(root, f"{{{NS}}}graph", {"id": graph.slug or "graph", "edgedefault": "directed"})
    grids = ET.SubElement(g, f"{{{NS}}}data", {"key": "g_image_grids"})
    grids.text = json.dumps([list(rc) for rc in graph.grids()])

    kinds = graph.node_kinds()
    layers = graph.node_layers()
    positions = graph.node_positions()
    cell = {int(p): (int(i), int(r), int(c)) for p, (i, r, c) in zip(graph.image_positions.tolist(),
                                                                     graph.image_grid.tolist())}
    target_ids = _target_token_ids(graph)
    for i in np.flatnonzero(write).tolist():
        kind = kinds[i]
        feature, token_id, activation = -1, -1, 0.0
        image = row = col = -1
        if kind == "feature":
            feature = int(graph.features[i, 2])
            activation = float(graph.activations[i])
        elif kind == "embedding":
            token_id = int(graph.input_ids[positions[i]])
            if int(positions[i]) in cell:
                image, row, col = cell[int(positions[i])]
        elif kind == "logit":
            token_id = int(target_ids[i - graph.logit_offset])
        label = label_of.get(i) or graph.node_label(i)
        values = {
            "kind": kind, "layer": int(layers[i]), "position": int(positions[i]), "feature": feature,
            "token_id": token_id, "label": label, "influence": float(node_influence[i]), "activation": activation,
            "is_image": image >= 0, "image": image, "row": row, "col": col,
        }
        node = ET.SubElement(g, f"{{{NS}}}node", {"id": ids[i]})
        for name, _ in NODE_KEYS:
            d = ET.SubElement(node, f"{{{NS}}}data", {"key": f"n_{name}"})
            v = values[name]
            d.text = ("true" if v else "false") if isinstance(v, bool) else (repr(v) if isinstance(v, float) else str(v))
    for k, (s, t, r) in enumerate(zip(src.tolist(), dst.tolist(), r_idx.tolist())):
        e = ET.SubElement(g, f"{{{NS}}}edge", {"id": f"e{k}", "source": ids[s], "target": ids[t]})
        d = ET.SubElement(e, f"{{{NS}}}data", {"key": "e_weight"})
        d.text = repr(float(graph.adjacency[r, s]))
    tree = ET.ElementTree(root)
    ET.indent(tree, space=" ")
    return tree


def export_graphml(graph: Graph, path: str | Path, pruned=None, **kwargs) -> Path:
    """Write `path` (a folder gets `<slug>.graphml`) atomically; returns the file path."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        from tracer.graph.neuronpedia import safe_slug

        path = path / f"{safe_slug(graph.slug or 'graph')}.graphml"
    tree = graph_to_graphml(graph, pruned, **kwargs)
    with atomic_path(path) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
    return path


__all__ = ["export_graphml", "graph_to_graphml"]
