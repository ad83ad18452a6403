"""Traced circuits against the toy world's known truth, on every trained toy shipped (Gemma3,
LLaVA): the image soft tokens under the objects an answer depends on carry much more of the
answer's influence than the other image tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracer.graph import load_graph
from tracer.graph.formats import list_graph_files
from tracer.graph.pruning import node_influence
from tracer.toy import world
from tracer.toy.samples import ground_truth
from tracer.models.loading import resolve_model_ref
from tracer.toy.shipped import SHIPPED_TOYS, shipped_model_dir, shipped_transcoders_dir, shipped_transcoders_name

SAMPLES = Path(__file__).resolve().parent.parent / "app" / "sample_graphs"


def evidence_ratio(graph) -> float:
    """Mean influence of an evidence image token / mean influence of the other image tokens."""
    influence = node_influence(graph)[graph.embedding_offset: graph.logit_offset]
    evidence = set(graph.info["toy"]["evidence_positions"])
    image = graph.image_positions.tolist()
    inside = [influence[p] for p in image if p in evidence]
    outside = [influence[p] for p in image if p not in evidence]
    return float(np.mean(inside) / np.mean(outside))


@pytest.fixture(scope="module", params=list(SHIPPED_TOYS))  # every trained toy shipped, by its --model name
def session(request):
    from tracer.session import TracingSession

    return TracingSession(request.param, device="cpu")


def test_every_shipped_toy_is_a_model_of_its_family_with_its_transcoders():
    import json

    families = {}
    for name, (_, transcoders) in SHIPPED_TOYS.items():
        families[name] = json.loads((shipped_model_dir(name) / "config.json").read_text())["model_type"]
        assert (shipped_transcoders_dir(transcoders) / "config.yaml").is_file()
    assert families == {"toy": "gemma3", "toy-llava": "llava", "toy-qwen": "qwen2_5_vl"}


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
    others = [g for g in every if g.model in SHIPPED_TOYS and g.model != "toy"]  # one per other trained toy
    # the rest are real-model samples (tests/test_real_gemma.py checks them)
    assert {g.model for g in every} - set(SHIPPED_TOYS) <= {"gguf:gemma-3-270m"}
    assert sorted(g.info["toy"]["question_type"] for g in graphs) == sorted(world.QUESTION_TYPES)
    assert {g.model for g in others} == set(SHIPPED_TOYS) - {"toy"}
    for g in graphs + others:
        assert g.transcoders == shipped_transcoders_name(g.model)
        assert g.targets[0].label == g.info["toy"]["answer"]
        assert np.abs(g.sum_rule_residual()).max() / max(1.0, np.abs(g.values).max()) < 1e-4
        if g.info["toy"]["evidence_positions"]:
            assert evidence_ratio(g) > 3.0
    for name in SHIPPED_TOYS:  # the references stored in the graphs resolve to the shipped models
        assert Path(resolve_model_ref(name)) == shipped_model_dir(name)
