"""Stable node keys: readable, valid as cytoscape ids and CSS-selector identifiers.

    feature   F_{layer}_{feature}_{position}
    error     R_{layer}_{position}
    embedding E_{position}
    logit     L_{k}            (k-th target)
    supernode S_{n}            (user-made groups, stored in the annotations file)
"""

from __future__ import annotations

from tracer.graph import Graph


def node_keys(graph: Graph) -> list[str]:
    keys = [f"F_{l}_{f}_{p}" for l, p, f in graph.features.tolist()]
    keys += [f"R_{l}_{p}" for l, p in graph.errors.tolist()]
    keys += [f"E_{p}" for p in range(graph.n_embeddings)]
    keys += [f"L_{k}" for k in range(graph.n_logits)]
    return keys


def is_supernode_key(key: str) -> bool:
    return isinstance(key, str) and key.startswith("S_")


def edge_id(source: str, target: str) -> str:
    return f"{source}__{target}"
