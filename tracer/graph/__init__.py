"""The Graph type and its files (ours, and the formats other tools read)."""

from tracer.graph.errors import GraphFormatError
from tracer.graph.graph import Graph, Target
from tracer.graph.storage import SUFFIX, load_graph, read_metadata, save_graph

__all__ = ["Graph", "GraphFormatError", "SUFFIX", "Target", "load_graph", "read_metadata", "save_graph"]
