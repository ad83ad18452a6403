"""Re-pruning a graph to what a browser can draw, fast enough for a slider.

`tracer.graph.pruning.Pruner(graph)` keeps the per-graph quantities (node influence, row sums of
|A|) between calls and scores edges only on the submatrix of kept nodes, which is what makes a
slider step cheap on graphs with thousands of features. The app adds a display budget (about 1,000 nodes / 5,000 edges draws
and re-draws quickly in cytoscape; see docs/app.md): the most influential feature nodes first,
then the edges with the highest pruning score, then what is left disconnected is dropped.
Errors and embeddings count against the node budget too; logits always stay.
"""

from __future__ import annotations

import numpy as np

from tracer.graph import Graph
from tracer.graph.pruning import Pruned, Pruner

__all__ = ["BudgetView", "MAX_EDGES", "MAX_NODES", "Pruner", "prune_to_budget"]

MAX_NODES = 1000
MAX_EDGES = 5000


# The display view of a graph is tracer's pruning result with budgets applied.
BudgetView = Pruned


def prune_to_budget(graph: Graph, node_threshold: float, edge_threshold: float,
                    max_nodes: int | None = MAX_NODES, max_edges: int | None = MAX_EDGES) -> BudgetView:
    return Pruner(graph).prune(float(np.clip(node_threshold, 0, 1)), float(np.clip(edge_threshold, 0, 1)),
                               max_nodes, max_edges)
