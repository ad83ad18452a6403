"""Rebuild the local replacement model of a saved graph: same prompt, same image, same targets.

Used to verify a graph (tracer.attribution.verify), to ask which heads carry one of its edges
(tracer.attention.heads_for_edge) and by the app for any job on a graph it did not just compute.
"""

from __future__ import annotations

import torch

from tracer.attribution.attribute import AttributionResult
from tracer.attribution.record import record_forward
from tracer.attribution.replacement import LocalReplacement
from tracer.attribution.targets import resolve_directions
from tracer.errors import InputError
from tracer.graph.graph import Graph
from tracer.models.base import get_adapter, prepare_prompt


class ReplayError(InputError):
    """The graph does not belong to this model / processor (its prompt tokenises differently)."""


@torch.no_grad()
def replay(graph: Graph, model, processor, transcoders) -> AttributionResult:
    """The graph (as saved) with a fresh replacement model of its prompt and its targets."""
    adapter = get_adapter(model)
    prompt = prepare_prompt(processor, graph.prompt, list(graph.images) or None, chat=False,
                            image_token_id=adapter.image_token_id, tokens_per_image=adapter.tokens_per_image,
                            adapter=adapter)
    if prompt.input_ids != [int(i) for i in graph.input_ids]:
        raise ReplayError("the model's processor tokenises the graph's prompt differently: "
                          "is this the model the graph was computed with?")
    record = record_forward(adapter, prompt)
    first = min(int(graph.prefix_length), prompt.n_positions - 1)
    rep = LocalReplacement(adapter, record, transcoders, first_position=first, device=adapter.device)
    return AttributionResult(graph, rep, resolve_directions(graph.targets, adapter.unembedding, rep.dtype))
