"""Which attention heads carry an attribution edge.

An attribution edge A[t, s] (docs/design.md §3) is the direct effect of source s on target t through
the frozen linear paths of the local replacement model: the residual stream, the frozen
attention value-output paths of every head, frozen norms and transcoder skips. Removing one
head (l, h) from that linear model (its output set to zero) changes the edge to A_without(l, h);
`heads_for_edge` computes that for every head that can lie on a path from s to t, in batched
lanes of the transposed map (LocalReplacement.backward with a per-lane head mask), and ranks the
heads by how much of the edge they carry, carried = A - A_without. Paths through several heads
make the carried parts overlap, so they need not add up to A; `without_attention` is what is
left with every candidate head removed (the part that stays at its position). For a source at
another position than the target it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tracer.attribution.attribute import AttributionResult
from tracer.graph.graph import EMBEDDING, ERROR, FEATURE, LOGIT, carrier_layers


@dataclass
class HeadEffect:
    layer: int
    head: int
    edge_without: float  # the edge with this head removed
    carried: float  # edge - edge_without

    def to_dict(self) -> dict:
        return {"layer": self.layer, "head": self.head, "edge_without": self.edge_without, "carried": self.carried}


@dataclass
class HeadsForEdge:
    target_node: int
    source_node: int
    edge: float  # the edge with every head in place (= graph.adjacency entry)
    without_attention: float  # with every candidate head removed
    heads: list[HeadEffect] = field(default_factory=list)  # ranked by |carried|, largest first

    def to_dict(self) -> dict:
        return {"target": self.target_node, "source": self.source_node, "edge": self.edge,
                "without_attention": self.without_attention, "heads": [h.to_dict() for h in self.heads]}

    def format(self, k: int = 10) -> str:
        lines = [f"edge {self.source_node} -> {self.target_node}: {self.edge:+.5g} "
                 f"(without any head: {self.without_attention:+.5g})"]
        for h in self.heads[:k]:
            lines.append(f"  L{h.layer} H{h.head}: carries {h.carried:+.5g} (edge without it {h.edge_without:+.5g})")
        return "\n".join(lines)


def _source_column(result: AttributionResult, node: int) -> tuple[int, int, int]:
    """(replacement column, layer above which heads can carry it, position) of a graph source node."""
    graph, rep = result.graph, result.replacement
    kind = graph.node_kind(node)
    if kind == FEATURE:
        layer, pos, feat = (int(x) for x in graph.features[node])
        table = rep.active_table().cpu().numpy()
        hit = np.flatnonzero((table[:, 0] == layer) & (table[:, 1] == pos) & (table[:, 2] == feat))
        if not len(hit):
            raise ValueError(f"feature node {node} is not active in this replacement model")
        return int(hit[0]), layer + 1, pos
    if kind == ERROR:
        layer, pos = (int(x) for x in graph.errors[node - graph.error_offset])
        kept = rep.kept_positions.cpu().tolist()
        return rep.error_columns(layer).start + kept.index(pos), layer + 1, pos
    if kind == EMBEDDING:
        pos = node - graph.embedding_offset
        return rep.embedding_columns.start + pos, 0, pos
    raise ValueError(f"node {node} is a logit node: it has no outgoing edges")


def _target_injection(result: AttributionResult, node: int):
    """(kind, layer through which heads can carry it, vector(s) for backward)."""
    graph, rep = result.graph, result.replacement
    kind = graph.node_kind(node)
    if kind == LOGIT:
        t = result.targets[node - graph.logit_offset]
        return LOGIT, rep.n_layers - 1, rep.logit_injection(t.direction[None])[0], None
    if kind == FEATURE:
        layer, pos, feat = (int(x) for x in graph.features[node])
        tc = rep.transcoders[layer]
        enc = tc.encoder_rows(torch.tensor([feat]))
        vec = rep.feature_injection(layer, torch.tensor([pos], device=rep.device), enc)[0]
        return FEATURE, layer, vec, (layer, pos)
    raise ValueError(f"node {node} ({kind}) is not a target: pick a feature or logit node")


@torch.no_grad()
def heads_for_edge(result: AttributionResult, target_node: int, source_node: int, batch_size: int = 64
                   ) -> HeadsForEdge:
    """Which heads carry the attribution edge source -> target of `result.graph` (node indices).

    Every head of the layers between the source (exclusive for features / errors: they write
    after their layer's attention) and the target (inclusive for features: they read after their
    layer's attention) is removed in turn from the frozen linear model; the edge is recomputed in
    one batched pass of the transposed map per `batch_size` heads.
    """
    rep = result.replacement
    column, _, _ = _source_column(result, source_node)
    kind, _, vec, where = _target_injection(result, target_node)
    H = rep.weights[0].n_heads
    candidates = [(l, h) for l in carrier_layers(result.graph, target_node, source_node) for h in range(H)]
    lanes_total = 2 + len(candidates)  # all heads; no candidate heads; one removed per lane
    values = torch.zeros(lanes_total, dtype=rep.dtype)
    for start in range(0, lanes_total, batch_size):
        stop = min(lanes_total, start + batch_size)
        n = stop - start
        mask = torch.ones(n, rep.n_layers, H, dtype=rep.dtype, device=rep.device)
        for i, lane in enumerate(range(start, stop)):
            if lane == 1:
                for l, h in candidates:
                    mask[i, l, h] = 0
            elif lane >= 2:
                l, h = candidates[lane - 2]
                mask[i, l, h] = 0
        lanes = torch.arange(n, device=rep.device)
        if kind == LOGIT:
            rows, _ = rep.backward(n, top=(lanes, vec[None].expand(n, -1)), head_mask=mask)
        else:
            layer, pos = where
            injections = {layer: (lanes, torch.full((n,), pos, device=rep.device), vec[None].expand(n, -1))}
            rows, _ = rep.backward(n, injections=injections, head_mask=mask)
        values[start:stop] = rows[:, column].cpu()
    edge = float(values[0])
    effects = [HeadEffect(l, h, float(values[2 + i]), edge - float(values[2 + i])) for i, (l, h) in enumerate(candidates)]
    effects.sort(key=lambda e: -abs(e.carried))
    return HeadsForEdge(target_node, source_node, edge, float(values[1]), effects)
