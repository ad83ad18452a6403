"""Traced circuits against the toy world's known truth: the image soft tokens under the objects
an answer depends on carry much more of the answer's influence than the other image tokens."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.graph import load_graph
from tracer.graph.formats import list_graph_files
from tracer.graph.pruning import node_influence
from tracer.toy import world
from tracer.toy.samples import ground_truth
from tracer.models.loading import resolve_model_ref
from tracer.toy.shipped import SHIPPED_TOYS, shipped_model_dir
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "app" / "sample_graphs"


def evidence_ratio(graph) -> float:
    """Mean influence of an evidence image token / mean influence of the other image tokens."""
    influence = node_influence(graph)[graph.embedding_offset: graph.logit_offset]
    evidence = set(graph.info["toy"]["evidence_positions"])
    image = graph.image_positions.tolist()
    inside = [influence[p] for p in image if p in evidence]
    outside = [influence[p] for p in image if p not in evidence]
    return float(np.mean(inside) / np.mean(outside))


# every trained toy shipped with the package (Gemma3, LLaVA, Qwen2.5-VL), by its --model name
TRAINED_TOYS = [name for name in SHIPPED_TOYS if (shipped_model_dir(name) / "config.json").exists()]


@pytest.fixture(scope="module", params=TRAINED_TOYS)
def session(request):
    from tracer.session import TracingSession

    return TracingSession(request.param, device="cpu")


def test_every_family_has_a_trained_toy():
    assert TRAINED_TOYS == list(SHIPPED_TOYS)


@pytest.mark.parametrize("qtype,index", [("color", 11), ("shape", 12), ("position", 13)])
def test_fresh_graphs_start_from_the_evidence_region(session, qtype, index):
    example = world.make_example("heldout", index, question_type=qtype)
    graph = session.attribute(example.question, example.image(), max_feature_nodes=400, progress=False)
    assert graph.targets[0].label == example.answer
    graph.info["toy"] = ground_truth(example, graph.image_positions.tolist())
    assert evidence_ratio(graph) > 3.0


def test_shipped_sample_graphs_cover_every_question_type_and_their_ground_truth():
    files = [f for f in list_graph_files(SAMPLES) if str(f.path).endswith(".graph.safetensors")]
    every = [load_graph(f.path) for f in files]
    graphs = [g for g in every if g.model == "toy"]
    # the others are real-model samples (tests/test_real_gemma.py checks them)
    assert {g.model for g in every} - {"toy"} <= {"gguf:gemma-3-270m"}
    assert sorted(g.info["toy"]["question_type"] for g in graphs) == sorted(world.QUESTION_TYPES)
    for g in graphs:
        assert g.model == "toy" and g.transcoders == "toy-plt"
        assert g.targets[0].label == g.info["toy"]["answer"]
        assert np.abs(g.sum_rule_residual()).max() / max(1.0, np.abs(g.values).max()) < 1e-4
        if g.info["toy"]["evidence_positions"]:
            assert evidence_ratio(g) > 3.0
    assert resolve_model_ref("toy")  # the reference stored in the graphs resolves to the shipped model
