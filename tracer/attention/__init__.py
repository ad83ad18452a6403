"""Attention: vision attention maps, attention graphs between positions, heads behind an edge.

    from tracer.attention import vision_attention_maps, attention_graph, heads_for_edge

    maps = vision_attention_maps(session, image)             # rollout + similarity per soft token
    overlay = upsample(maps.for_cell(0, 3, 4), image.size[::-1])
    ag = attention_graph(session, "What color is the circle?", image)
    graph = ag.to_graph()                                      # a tracer.graph.Graph for the explorer
    heads = heads_for_edge(attribution_result, target_node, source_node)

See docs/attention.md.
"""

from tracer.attention.graph import (
    ATTENTION_GRAPH_KIND, AttentionGraph, attention_graph, attention_graph_from_replacement, attention_output,
    head_contributions, head_edge_weights, is_attention_graph, mid_gradients, residual_stream, target_weights,
)
from tracer.attention.heads import HeadEffect, HeadsForEdge, carrier_layers, heads_for_edge
from tracer.attention.vision import VisionAttentionMaps, upsample, vision_attention_maps

__all__ = [
    "ATTENTION_GRAPH_KIND", "AttentionGraph", "HeadEffect", "HeadsForEdge", "VisionAttentionMaps", "attention_graph",
    "attention_graph_from_replacement", "attention_output", "head_contributions", "head_edge_weights",
    "carrier_layers", "heads_for_edge", "is_attention_graph", "mid_gradients", "residual_stream", "target_weights", "upsample",
    "vision_attention_maps",
]
