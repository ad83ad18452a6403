"""Supernode suggestions: on toy graphs whose right grouping is known from the scene, and on
hand-made graphs where two features are alike by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.graph_factory import make_graph
from tracer.graph.supernodes import (
    complete_linkage, feature_inflow, format_suggestions, suggest_supernodes, toy_regions,
)
from tracer.toy import world
from tracer.toy.samples import ground_truth

# Two objects far apart; the question is about one of them. No red object: "red" is the current
# toy VLM's fallback answer and red circuits draw little on the object (see the README, Ground truth).
OBJECTS = [("circle", "blue", 0, 0), ("cross", "green", 3, 2)]


@pytest.fixture(scope="module")
def session():
    from tracer.session import TracingSession

    return TracingSession(device="cpu")


def toy_graph(session, question: str, objects=OBJECTS):
    scene = world.SceneSpec(objects).build()
    shape = question.rstrip("?").split()[-1]
    target = scene.by_shape(shape)
    example = world.Example("color", question, target.color, scene, (target,), "heldout", 0)
    graph = session.attribute(question, scene.render(), max_feature_nodes=200, progress=False)
    assert graph.targets[0].label == example.answer
    graph.info["toy"] = ground_truth(example, graph.image_positions.tolist())
    return graph, scene, target


@pytest.mark.parametrize("question", ["What color is the cross?", "What color is the circle?"])
def test_image_groups_read_the_queried_object(session, question):
    graph, scene, target = toy_graph(session, question)
    regions = toy_regions(graph)
    assert regions == {o.name: scene.token_positions(o) for o in scene.objects}
    found = [s for s in suggest_supernodes(graph, top=None) if s.kind == "image cells"]
    named = [s for s in found if s.reason.endswith(f": the {target.name}")]
    assert named, [s.reason for s in found]
    other = next(o for o in scene.objects if o is not target)
    assert not any(s.reason.endswith(f": the {other.name}") for s in found)
    own = set(scene.token_positions(target))
    for s in named:
        # every member reads the object far beyond its area (>3x its share of the cells) and more
        # than the other object; the cell the group reads most lies under it
        inflow = feature_inflow(graph, np.array(s.members))[:, graph.image_positions]
        on_own = inflow[:, sorted(own)].sum(1) / inflow.sum(1)
        on_other = inflow[:, scene.token_positions(other)].sum(1) / inflow.sum(1)
        assert (on_own > 3 * len(own) / world.TOKEN_GRID ** 2).all() and (on_own > on_other).all()
        assert int(np.argmax(inflow.sum(0))) in own
        assert len(s.members) >= 2 and 0 < s.score <= 1
        assert all(graph.node_kind(m) == "feature" for m in s.members)


def test_feature_inflow_is_the_all_paths_share_of_input():
    from tracer.graph.pruning import normalized_rows

    graph = make_graph(seed=3)
    norm = normalized_rows(graph).astype(np.float64)
    full = np.zeros((graph.n_nodes, graph.n_nodes))
    full[: graph.n_features] = norm[: graph.n_features]
    full[graph.logit_offset:] = norm[graph.n_features:]
    paths = np.linalg.inv(np.eye(graph.n_nodes) - full) - np.eye(graph.n_nodes)
    feats = np.arange(graph.n_features)
    expected = paths[feats][:, graph.embedding_offset: graph.logit_offset]
    np.testing.assert_allclose(feature_inflow(graph, feats), expected, atol=1e-6)


def test_complete_linkage_keeps_every_pair_above_the_threshold():
    sim = np.array([[1, .9, .85, .1], [.9, 1, .5, .1], [.85, .5, 1, .1], [.1, .1, .1, 1]])
    assert complete_linkage(sim, 0.8) == [[0, 1], [2], [3]]  # 2 joins 0 but not 1
    assert complete_linkage(sim, 0.4) == [[0, 1, 2], [3]]


def _twin_graph():
    """A graph where feature 1 is feature 0 scaled: same input row and output column directions."""
    graph = make_graph(seed=1, n_features=12)
    a = graph.adjacency
    a[1] = 2.0 * a[0]
    a[:, 1] = 0.5 * a[:, 0]
    a[0, 1] = a[1, 0] = a[0, 0] = a[1, 1] = 0
    return graph


def test_features_with_alike_edges_are_suggested_together():
    graph = _twin_graph()
    found = suggest_supernodes(graph, top=None, node_threshold=1.0, threshold=0.99)
    io = [s for s in found if s.kind == "inputs/outputs"]
    assert any(set(s.members) == {0, 1} for s in io), [(s.members, s.reason) for s in found]
    assert all(len(s.members) >= 2 for s in found)
    s = next(s for s in io if set(s.members) == {0, 1})
    from tracer.graph.neuronpedia import node_ids

    ids = node_ids(graph)
    assert s.node_ids == [ids[m] for m in s.members]
    assert "alike inputs and outputs" in s.reason and s.label.startswith("shared in/out")


def test_decoder_directions_group_features_and_are_checked():
    graph = make_graph(seed=2, n_features=10)
    rng = np.random.default_rng(0)
    dec = rng.normal(size=(graph.n_features, 16))
    dec[3] = 3 * dec[5]
    found = suggest_supernodes(graph, top=None, node_threshold=1.0, threshold=0.99, decoders=dec)
    # (a suggestion with the same members for another reason carries this reason too)
    assert any("decoder cosine" in s.reason and set(s.members) == {3, 5} for s in found)
    assert not any(s.kind == "decoder" for s in suggest_supernodes(graph, top=None, node_threshold=1.0))
    with pytest.raises(ValueError, match="decoders have 4 rows"):
        suggest_supernodes(graph, node_threshold=1.0, decoders=dec[:4])


def test_cli_prints_suggestions_and_json(session, tmp_path, capsys):
    from tracer.cli import main
    from tracer.graph import save_graph

    graph, _, _ = toy_graph(session, "What color is the cross?")
    path = save_graph(graph, tmp_path / "cross")
    assert main(["supernodes", str(path), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert " 1. [" in text and "decoder directions not compared" in text
    assert main(["supernodes", str(path), "--top", "50", "--json", "--transcoders", "toy-plt"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == sorted(rows, key=lambda r: -r["score"]) and len(rows) <= 50
    assert any(r["kind"] == "image cells" and r["reason"].endswith("the green cross") for r in rows)
    # over every feature, the same feature at several positions writes the same direction
    assert main(["supernodes", str(path), "--top", "500", "--json", "--transcoders", "toy-plt",
                 "--node-threshold", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    decoder = [r for r in rows if "decoder cosine" in r["reason"]]
    assert any(len({(graph.features[m, 0], graph.features[m, 2]) for m in r["members"]}) == 1 for r in decoder)
    with pytest.raises(SystemExit) as refused:  # argparse: usage and one error line
        main(["supernodes", str(path), "--threshold", "0"])
    assert refused.value.code == 2 and "--threshold" in capsys.readouterr().err
    assert format_suggestions([], graph).startswith("no supernode suggestions")


def test_decoder_rows_are_the_transcoders_own(session):
    import torch

    from tracer.commands.supernodes import decoder_rows

    graph = make_graph(seed=4, n_layers=4, n_features=15)
    rows = decoder_rows(graph, "toy-plt")
    for (layer, _, feat), row in zip(graph.features.tolist(), rows):
        expected = session.transcoders[layer].decoder_rows(torch.tensor([feat]))[0].double().numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-6)
