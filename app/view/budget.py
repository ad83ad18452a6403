"""Re-pruning a graph to what a browser can draw, fast enough for a slider.

`Pruner(graph).prune(node_threshold, edge_threshold, max_nodes, max_edges)` computes the same
masks as `tracer.graph.pruning.prune` (a unit test checks they agree), but keeps the per-graph
quantities (node influence, row sums of |A|) between calls and scores edges only on the
submatrix of kept nodes, which is what makes a slider step cheap on graphs with thousands of
features. On top of that it enforces a display budget (about 1,000 nodes / 5,000 edges draws
and re-draws quickly in cytoscape; see docs/app.md): the most influential feature nodes first,
then the edges with the highest pruning score, then what is left disconnected is dropped.
Errors and embeddings count against the node budget too; logits always stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.graph import Graph
from tracer.graph.pruning import cumulative_threshold, logit_weights, node_influence

from app.view.keys import row_nodes

MAX_NODES = 1000
MAX_EDGES = 5000


@dataclass
class BudgetView:
    node_mask: np.ndarray  # (n_nodes,) bool
    edge_rows: np.ndarray  # kept edges: adjacency row (target) ...
    edge_cols: np.ndarray  # ... and column (source) of each
    shape: tuple[int, int]  # of graph.adjacency
    node_influence: np.ndarray  # (n_nodes,) influence in the full graph
    nodes_cut: bool  # the node budget removed nodes the thresholds keep
    edges_cut: bool  # the edge budget removed edges the thresholds keep

    @property
    def edge_mask(self) -> np.ndarray:
        """(n_rows, n_nodes) bool, rows as graph.adjacency"""
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
    """Influence pruning of one graph, with what does not depend on the thresholds cached."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.rows = row_nodes(graph)
        self.weights = logit_weights(graph)
        self.abs_sums = np.abs(graph.adjacency.astype(np.float64)).sum(1)
        self.influence = node_influence(graph)

    def prune(self, node_threshold: float, edge_threshold: float, max_nodes: int | None = None,
              max_edges: int | None = None) -> BudgetView:
        g = self.graph
        nf = g.n_features
        influence = self.influence
        # 1. Feature nodes: the fewest whose influence reaches the threshold, at most max_nodes.
        feat_inf = influence[:nf]
        keep_feat = feat_inf >= cumulative_threshold(feat_inf, node_threshold) if nf else feat_inf > 0
        nodes_cut = False
        if max_nodes is not None and keep_feat.sum() > max_nodes:
            nodes_cut = True
            order = np.argsort(-feat_inf)
            keep_feat = np.zeros_like(keep_feat)
            keep_feat[order[:max_nodes]] = True
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

        # 3. Drop what is disconnected, then enforce the node budget (errors and embeddings
        # count too; logits always stay) and the exact edge budget.
        kinds = g.node_kinds()[C]
        col_is_feature = kinds == "feature"
        col_needs_out = (kinds == "error") | (kinds == "embedding")
        n_iter = g.n_layers + 3
        node_ok = np.ones(len(C), bool)
        node_ok, edges = _drop_disconnected(node_ok, edges, row_cols, col_is_feature, col_needs_out, n_iter)
        if max_nodes is not None and node_ok.sum() > max_nodes:
            nodes_cut = True
            rank = influence[C].copy()
            rank[kinds == "logit"] = np.inf
            rank[~node_ok] = -np.inf
            trimmed = np.zeros_like(node_ok)
            trimmed[np.argsort(-rank, kind="stable")[:max_nodes]] = True
            node_ok, edges = _drop_disconnected(node_ok & trimmed, edges, row_cols, col_is_feature, col_needs_out, n_iter)
        if max_edges is not None and edges.sum() > max_edges:  # ties at the score cut
            edges_cut = True
            r, c = np.nonzero(edges)
            keep = np.argsort(-scores[r, c], kind="stable")[:max_edges]
            edges = np.zeros_like(edges)
            edges[r[keep], c[keep]] = True
            node_ok, edges = _drop_disconnected(node_ok, edges, row_cols, col_is_feature, col_needs_out, n_iter)

        node_mask = np.zeros(g.n_nodes, bool)
        node_mask[C[node_ok]] = True
        r, c = np.nonzero(edges)
        return BudgetView(node_mask, R[r], C[c], g.adjacency.shape, influence, nodes_cut, edges_cut)


def prune_to_budget(graph: Graph, node_threshold: float, edge_threshold: float,
                    max_nodes: int | None = MAX_NODES, max_edges: int | None = MAX_EDGES) -> BudgetView:
    return Pruner(graph).prune(float(np.clip(node_threshold, 0, 1)), float(np.clip(edge_threshold, 0, 1)),
                               max_nodes, max_edges)
