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

from tracer.graph.graph import EMBEDDING, ERROR, FEATURE, LOGIT, Graph


def normalized_rows(graph: Graph) -> np.ndarray:
    """|adjacency| with each target row summed to 1 (zero rows stay zero), in the adjacency's
    precision (float32 for ordinary graphs: no float64 copy of a large matrix)."""
    a = np.abs(graph.adjacency)
    sums = a.sum(1, keepdims=True)
    sums[sums == 0] = 1  # a zero row stays zero; dividing in place keeps one copy of the matrix, not two
    return np.divide(a, sums, out=a)


def logit_weights(graph: Graph) -> np.ndarray:
    p = np.array([max(t.probability, 0.0) for t in graph.targets], dtype=np.float64)
    if p.sum() <= 0:
        p = np.ones(len(p))
    return p / p.sum()


def row_nodes(graph: Graph) -> np.ndarray:
    """Node index of each adjacency row."""
    return np.concatenate([np.arange(graph.n_features), graph.logit_offset + np.arange(graph.n_logits)])


def node_influence(graph: Graph, norm: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Influence of every node on the weighted logits (logit nodes themselves get 0). Without a
    normalised matrix `norm` to reuse, computed by influence_pass (no normalised copy)."""
    if norm is None:
        return influence_pass(graph, weights)[0]
    weights = logit_weights(graph) if weights is None else weights
    rows = row_nodes(graph)
    # x in the matrix's dtype: a float64 vector times a float32 matrix would copy the matrix
    # to float64 at every step (GBs for a 4B-model graph)
    x = np.zeros(graph.n_nodes, dtype=norm.dtype)
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
    edge_rows: np.ndarray  # kept edges: adjacency row (target) ...
    edge_cols: np.ndarray  # ... and column (source) of each
    shape: tuple[int, int]  # of graph.adjacency
    node_influence: np.ndarray  # (n_nodes,) influence in the unpruned graph
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    nodes_cut: bool = False  # a node budget removed nodes the thresholds keep
    edges_cut: bool = False  # an edge budget removed edges the thresholds keep

    @property
    def edge_mask(self) -> np.ndarray:
        """(n_rows, n_nodes) bool, rows as graph.adjacency."""
        mask = np.zeros(self.shape, bool)
        mask[self.edge_rows, self.edge_cols] = True
        return mask

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(len(self.edge_rows))

    @property
    def truncated(self) -> bool:
        return self.nodes_cut or self.edges_cut


def _drop_disconnected(node_ok: np.ndarray, edges: np.ndarray, row_cols: np.ndarray, col_is_feature: np.ndarray,
                       col_needs_out: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """On a submatrix: rows R (targets) x columns C (sources), row_cols[i] = column of row i's node.
    Features need an input and an output, errors and embeddings an output; logits stay."""
    edges = edges & node_ok[None, :] & node_ok[row_cols][:, None]
    for _ in range(n_iter):
        has_out = edges.any(0)
        has_in = np.zeros(len(node_ok), bool)
        has_in[row_cols] = edges.any(1)
        new = node_ok.copy()
        new[col_is_feature] &= has_out[col_is_feature] & has_in[col_is_feature]
        new[col_needs_out] &= has_out[col_needs_out]
        edges &= new[None, :] & new[row_cols][:, None]
        if np.array_equal(new, node_ok):
            break
        node_ok = new
    return node_ok, edges


class Pruner:
    """Influence pruning of one graph. What does not depend on the thresholds (node influence,
    row sums of |A|) is computed once, and edges are scored only on the submatrix of kept nodes,
    so that re-pruning for a viewer's slider is cheap on graphs with thousands of features."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.rows = row_nodes(graph)
        self.weights = logit_weights(graph)
        self.abs_sums = np.abs(graph.adjacency).sum(1, dtype=np.float64)
        self.influence = node_influence(graph)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, max_nodes: int | None = None,
              max_edges: int | None = None, max_feature_nodes: int | None = None) -> Pruned:
        """Budgets (optional): max_feature_nodes caps the feature nodes, max_nodes all nodes
        (errors and embeddings count, logits always stay), max_edges the edges; the most
        influential nodes and the highest-scoring edges are kept first."""
        g = self.graph
        nf = g.n_features
        influence = self.influence
        # 1. Feature nodes: the fewest whose influence reaches the threshold, within the budgets.
        feat_inf = influence[:nf]
        keep_feat = feat_inf >= cumulative_threshold(feat_inf, node_threshold) if nf else feat_inf > 0
        nodes_cut = False
        for cap in (max_feature_nodes, max_nodes):
            if cap is not None and keep_feat.sum() > cap:
                nodes_cut = True
                order = np.argsort(-np.where(keep_feat, feat_inf, -np.inf), kind="stable")
                keep_feat = np.zeros_like(keep_feat)
                keep_feat[order[:cap]] = True
        node_mask = np.ones(g.n_nodes, bool)
        node_mask[:nf] = keep_feat

        # 2. Edges, scored on the submatrix of kept nodes: rows R (targets), columns C (sources).
        R = np.flatnonzero(node_mask[self.rows])
        C = np.flatnonzero(node_mask)
        col_of = np.full(g.n_nodes, -1, np.int64)
        col_of[C] = np.arange(len(C))
        row_cols = col_of[self.rows[R]]
        sub = np.abs(g.adjacency[np.ix_(R, C)].astype(np.float64))
        sums = self.abs_sums[R][:, None]
        sub = np.divide(sub, sums, out=np.zeros_like(sub), where=sums > 0)
        target_weight = influence[self.rows[R]] + np.concatenate([np.zeros(nf), self.weights])[R]
        scores = sub * target_weight[:, None]
        edges = scores >= cumulative_threshold(scores, edge_threshold)
        edges &= scores > 0
        edges_cut = False
        if max_edges is not None and edges.sum() > max_edges:
            edges_cut = True
            cut = np.sort(scores[edges])[::-1][max_edges - 1]
            edges &= scores >= cut

        # 3. Drop what has become disconnected, then enforce the node budget and the exact edge
        # budget (ties at the score cut).
        kinds = g.node_kinds()[C]
        col_is_feature = kinds == FEATURE
        col_needs_out = (kinds == ERROR) | (kinds == EMBEDDING)
        n_iter = g.n_layers + 3
        node_ok = np.ones(len(C), bool)
        node_ok, edges = _drop_disconnected(node_ok, edges, row_cols, col_is_feature, col_needs_out, n_iter)
        if max_nodes is not None and node_ok.sum() > max_nodes:
            nodes_cut = True
            rank = influence[C].copy()
            rank[kinds == LOGIT] = np.inf
            rank[~node_ok] = -np.inf
            trimmed = np.zeros_like(node_ok)
            trimmed[np.argsort(-rank, kind="stable")[:max_nodes]] = True
            node_ok, edges = _drop_disconnected(node_ok & trimmed, edges, row_cols, col_is_feature, col_needs_out,
                                                n_iter)
        if max_edges is not None and edges.sum() > max_edges:
            edges_cut = True
            r, c = np.nonzero(edges)
            keep = np.argsort(-scores[r, c], kind="stable")[:max_edges]
            edges = np.zeros_like(edges)
            edges[r[keep], c[keep]] = True
            node_ok, edges = _drop_disconnected(node_ok, edges, row_cols, col_is_feature, col_needs_out, n_iter)

        node_mask = np.zeros(g.n_nodes, bool)
        node_mask[C[node_ok]] = True
        r, c = np.nonzero(edges)
        return Pruned(node_mask, R[r], C[c], g.adjacency.shape, influence, node_threshold, edge_threshold,
                      nodes_cut, edges_cut)


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_feature_nodes: int | None = None, max_edges: int | None = None, max_nodes: int | None = None) -> Pruned:
    """Influence-based pruning (see the module docstring); optional budgets as in Pruner.prune."""
    return Pruner(graph).prune(node_threshold, edge_threshold, max_nodes=max_nodes, max_edges=max_edges,
                               max_feature_nodes=max_feature_nodes)


def influence_pass(graph: Graph, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(influence of every node on the weighted logits, error share of every adjacency row):
    node_influence's quantity from |adjacency| / row sums a block of rows at a time (no normalised
    copy of a possibly multi-GB matrix), in one pass instead of one per path length: rows go top
    layer first (logits, then features by layer descending), and a feature's influence is
    complete once every row above its layer is done."""
    A = graph.adjacency
    weights = logit_weights(graph) if weights is None else weights
    rows = row_nodes(graph)
    err = slice(graph.error_offset, graph.embedding_offset)
    step = max(1, (1 << 20) // max(1, A.shape[1]))  # blocks of about 4 MB: |block| stays in cache
    scratch = np.empty((min(step, max(1, A.shape[0])), A.shape[1]), A.dtype)  # reused for every block

    def absolute(index: np.ndarray) -> np.ndarray:
        block = scratch[:len(index)]
        if index[-1] - index[0] + 1 == len(index):  # consecutive rows (the usual order): no gather
            return np.abs(A[index[0]:index[-1] + 1], out=block)
        np.take(A, index, axis=0, out=block, mode="clip")  # "raise" would buffer a copy
        return np.abs(block, out=block)

    row_layer = np.concatenate([graph.features[:, 0], np.full(graph.n_logits, graph.n_layers)]).astype(np.int64)
    order = np.argsort(-row_layer, kind="stable")  # logits, then features from the top layer down
    inv = np.zeros(A.shape[0], A.dtype)
    err_share = np.zeros(A.shape[0])
    influence = np.zeros(graph.n_nodes)
    coef = np.zeros(A.shape[0], A.dtype)
    coef[graph.n_features:] = weights
    starts = np.flatnonzero(np.r_[True, row_layer[order][1:] != row_layer[order][:-1]]) if len(order) else []
    for g0, g1 in zip(starts, np.r_[starts[1:], len(order)]):  # one layer at a time
        group = order[g0:g1]
        if row_layer[group[0]] < graph.n_layers:
            coef[group] = influence[rows[group]]  # complete: every row above this layer is done
        for s in range(0, len(group), step):
            index = group[s:s + step]
            a = absolute(index)
            sums = a.sum(1)
            inv[index] = np.divide(1, sums, out=np.zeros_like(sums), where=sums > 0)
            err_share[index] = a[:, err].sum(1) * inv[index]
            influence += (coef[index] * inv[index]) @ a
    return influence, err_share


def graph_scores(graph: Graph) -> dict[str, float]:
    """Replacement and completeness scores of a graph (see the module docstring), from one
    influence_pass."""
    weights = logit_weights(graph)
    rows = row_nodes(graph)
    err = slice(graph.error_offset, graph.embedding_offset)
    emb = slice(graph.embedding_offset, graph.logit_offset)
    influence, err_share = influence_pass(graph, weights)
    token_inf, error_inf = influence[emb].sum(), influence[err].sum()
    replacement = token_inf / (token_inf + error_inf) if token_inf + error_inf > 0 else 0.0
    non_error = np.ones(graph.n_nodes)
    non_error[rows] = 1.0 - err_share
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
        new_share[rows] = norm @ share.astype(norm.dtype)
        new_share[src] = 1.0
        new_reach = reach.copy()
        new_reach[rows] |= ((norm > 0) & reach[None, :]).any(1)
        if np.allclose(new_share, share) and np.array_equal(new_reach, reach):
            break
        share, reach = new_share, new_reach
    return {"reachable": reach, "logit_share": share[graph.logit_offset:], "share": share}
