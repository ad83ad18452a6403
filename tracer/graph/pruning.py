"""Influence, pruning and graph scores (numpy only, so viewers can re-prune without torch).

Definitions (the same as circuit-tracer's, written here from their meaning):

* Normalised matrix N: |A| with every target row scaled to sum to 1.
* Logit weights w: the targets' probabilities, normalised to sum to 1 (uniform when all are 0,
  as for custom directions).
* Influence of node s on the output: (w^T (N + N^2 + N^3 + ...))[s] — the share of the output
  that flows from s along all paths. The graph is acyclic (edges go up in layer), so the series
  ends after at most n_layers + 2 terms.
* Node pruning keeps the fewest feature nodes whose influence adds up to `node_threshold` of the
  total feature influence; error, embedding and logit nodes stay. Edge pruning keeps the fewest
  edges whose scores N[t, s] * (influence of t + w_t) add up to `edge_threshold` of the total.
  Then nodes left without a path to a logit (or without any input, for features) are dropped.
* Replacement score: the share of the output's influence that comes from embeddings rather than
  error nodes. Completeness score: influence-weighted share of node inputs that do not come
  from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.graph.graph import Graph


def normalized_rows(graph: Graph) -> np.ndarray:
    """|adjacency| with each target row summed to 1 (zero rows stay zero), in the adjacency's
    precision (float32 for ordinary graphs: no float64 copy of a large matrix)."""
    a = np.abs(graph.adjacency)
    sums = a.sum(1, keepdims=True)
    return np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)


def logit_weights(graph: Graph) -> np.ndarray:
    p = np.array([max(t.probability, 0.0) for t in graph.targets], dtype=np.float64)
    if p.sum() <= 0:
        p = np.ones(len(p))
    return p / p.sum()


def row_nodes(graph: Graph) -> np.ndarray:
    """Node index of each adjacency row."""
    return np.concatenate([np.arange(graph.n_features), graph.logit_offset + np.arange(graph.n_logits)])


def node_influence(graph: Graph, norm: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Influence of every node on the weighted logits (logit nodes themselves get 0)."""
    norm = normalized_rows(graph) if norm is None else norm
    weights = logit_weights(graph) if weights is None else weights
    rows = row_nodes(graph)
    x = np.zeros(graph.n_nodes)
    x[graph.logit_offset:] = weights
    total = np.zeros(graph.n_nodes)
    for _ in range(graph.n_layers + 3):
        x = x[rows] @ norm
        if not x.any():
            break
        total += x
    return total


def cumulative_threshold(scores: np.ndarray, share: float) -> float:
    """The smallest score s such that the scores >= s add up to at least `share` of the total."""
    flat = np.sort(scores[scores > 0].ravel())[::-1]
    if flat.size == 0:
        return np.inf
    if share >= 1.0:
        return float(flat[-1])
    cum = np.cumsum(flat) / flat.sum()
    k = int(np.searchsorted(cum, share, side="left"))
    return float(flat[min(k, flat.size - 1)])


@dataclass
class Pruned:
    node_mask: np.ndarray  # (n_nodes,) bool
    edge_mask: np.ndarray  # (n_rows, n_nodes) bool, rows as graph.adjacency
    node_influence: np.ndarray  # (n_nodes,) influence in the unpruned graph
    node_threshold: float
    edge_threshold: float

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_feature_nodes: int | None = None, max_edges: int | None = None) -> Pruned:
    """Influence-based pruning; optional budgets cap the number of feature nodes and edges kept
    (the most influential first), for viewers that can only draw so much."""
    norm = normalized_rows(graph)
    weights = logit_weights(graph)
    influence = node_influence(graph, norm, weights)
    kinds_feature = np.zeros(graph.n_nodes, bool)
    kinds_feature[: graph.n_features] = True

    feat_inf = influence[: graph.n_features]
    keep_feat = feat_inf >= cumulative_threshold(feat_inf, node_threshold) if graph.n_features else feat_inf > 0
    if max_feature_nodes is not None and keep_feat.sum() > max_feature_nodes:
        order = np.argsort(-feat_inf)
        keep_feat = np.zeros_like(keep_feat)
        keep_feat[order[:max_feature_nodes]] = True
    node_mask = np.ones(graph.n_nodes, bool)
    node_mask[: graph.n_features] = keep_feat

    rows = row_nodes(graph)
    masked = norm * node_mask[None, :] * node_mask[rows][:, None]
    pruned_graph_influence = influence.copy()
    target_weight = pruned_graph_influence[rows] + np.concatenate([np.zeros(graph.n_features), weights])
    edge_scores = masked * target_weight[:, None]
    edge_mask = edge_scores >= cumulative_threshold(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    if max_edges is not None and edge_mask.sum() > max_edges:
        cut = np.sort(edge_scores[edge_mask])[::-1][max_edges - 1]
        edge_mask &= edge_scores >= cut

    # Drop what has become disconnected: features need an input and a path up to a logit;
    # errors and embeddings need a path up.
    for _ in range(graph.n_layers + 3):
        has_out = np.zeros(graph.n_nodes, bool)
        live_rows = node_mask[rows]
        has_out |= (edge_mask & live_rows[:, None]).any(0)
        has_in = np.zeros(graph.n_nodes, bool)
        has_in[rows] = (edge_mask & node_mask[None, :]).any(1)
        new = node_mask.copy()
        new[: graph.n_features] &= has_out[: graph.n_features] & has_in[: graph.n_features]
        new[graph.error_offset: graph.logit_offset] &= has_out[graph.error_offset: graph.logit_offset]
        edge_mask &= new[None, :] & new[rows][:, None]
        if np.array_equal(new, node_mask):
            break
        node_mask = new
    return Pruned(node_mask, edge_mask, influence, node_threshold, edge_threshold)


def graph_scores(graph: Graph) -> dict[str, float]:
    """Replacement and completeness scores of a graph (see the module docstring)."""
    norm = normalized_rows(graph)
    weights = logit_weights(graph)
    influence = node_influence(graph, norm, weights)
    err = slice(graph.error_offset, graph.embedding_offset)
    emb = slice(graph.embedding_offset, graph.logit_offset)
    token_inf, error_inf = influence[emb].sum(), influence[err].sum()
    replacement = token_inf / (token_inf + error_inf) if token_inf + error_inf > 0 else 0.0
    rows = row_nodes(graph)
    non_error = np.ones(graph.n_nodes)
    non_error[rows] = 1.0 - norm[:, err].sum(1)
    out_inf = influence.copy()
    out_inf[graph.logit_offset:] += weights
    has_rows = np.zeros(graph.n_nodes, bool)
    has_rows[rows] = True
    completeness = float((non_error * out_inf)[has_rows].sum() / max(out_inf[has_rows].sum(), 1e-300))
    return {"replacement": float(replacement), "completeness": completeness}


def influence_from(graph: Graph, sources: np.ndarray, edge_mask: np.ndarray | None = None) -> dict:
    """How much of each logit's input flows from a set of source nodes (e.g. an image region).

    Returns {"reachable": bool mask of nodes reachable upward from the sources through
    (kept) edges, "logit_share": share of each target's normalised input paths that start
    at the sources}.
    """
    norm = normalized_rows(graph)
    if edge_mask is not None:
        norm = norm * edge_mask
    rows = row_nodes(graph)
    src = np.zeros(graph.n_nodes, bool)
    src[np.asarray(sources, dtype=np.int64)] = True
    # share[v] = fraction of v's normalised input that comes (along paths) from the sources
    share = src.astype(np.float64)
    reach = src.copy()
    for _ in range(graph.n_layers + 3):
        new_share = share.copy()
        new_share[rows] = norm @ share
        new_share[src] = 1.0
        new_reach = reach.copy()
        new_reach[rows] |= ((norm > 0) & reach[None, :]).any(1)
        if np.allclose(new_share, share) and np.array_equal(new_reach, reach):
            break
        share, reach = new_share, new_reach
    return {"reachable": reach, "logit_share": share[graph.logit_offset:], "share": share}
