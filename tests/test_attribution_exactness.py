"""Exactness of attribution graphs on the toy VLM, in float64 (docs/design.md §3).

Edges come from the hand-written transposed map (tracer/attribution/replacement.py); they are
checked against the replacement model run *forward* through the Hugging Face modules with one
source scaled (tracer/attribution/frozen.py), against the sum rule, and the replacement model
must reproduce the real logits. Transcoders: tiny random TopK sets with a linear skip (the
circuit-tracer style of ground-truth test), and the shipped toy set when it is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.attribution.frozen import Perturbation, frozen_forward, target_values
from tracer.attribution.verify import sample_sources, target_directions
from tracer.graph import load_graph, save_graph
from tracer.graph.pruning import node_influence, prune
from tracer.models import load_vlm
from tracer.models.precision import float64_norms
from tracer.toy import world
from tracer.transcoders.activations import JumpReLU, TopK
from tracer.transcoders.transcoder_set import TranscoderSet, random_transcoder_set

TIGHT = 1e-10


def random_set(activation: str = "topk", d_tc: int = 192, seed: int = 0, skip: bool = True, n_layers: int = 4,
               d_model: int = 128) -> TranscoderSet:
    def make(g):
        return TopK(8) if activation == "topk" else JumpReLU(torch.rand(d_tc, generator=g, dtype=torch.float64) * 0.3)

    return random_transcoder_set(n_layers, d_model, d_tc, make, skip=skip, seed=seed,
                                 source=f"random-{activation}-{seed}")


@pytest.fixture(scope="module")
def toy64():
    return load_vlm(None, dtype=torch.float64)


def run(toy64, tset, question: str, image, **settings):
    model, processor = toy64
    settings.setdefault("max_feature_nodes", None)
    settings.setdefault("batch_size", 96)
    with float64_norms():
        return attribute_full(model, processor, tset, question, image, AttributionConfig(progress=False, **settings))


def perturbation_errors(result, tset, sources) -> float:
    """Max over sources and over every target of |Δ target - A[target, source]| (source doubled)."""
    graph, rep = result.graph, result.replacement
    directions = target_directions(graph, rep.adapter.unembedding, rep.dtype)
    feats = torch.as_tensor(graph.features)
    encoders = [tset[int(l)].encoder_rows(torch.tensor([int(f)]))[0] for l, _, f in feats.tolist()]
    rows = np.concatenate([graph.n_features + np.arange(graph.n_logits), np.arange(graph.n_features)])
    worst = 0.0
    with float64_norms():
        base = target_values(rep, frozen_forward(rep), directions, feats, encoders).numpy()
        for node in sources:
            kind = graph.node_kind(node)
            if kind == "feature":
                pert = Perturbation(features={tuple(int(x) for x in graph.features[node]): 2.0})
            elif kind == "error":
                pert = Perturbation(errors={tuple(int(x) for x in graph.errors[node - graph.error_offset]): 2.0})
            else:
                pert = Perturbation(embeddings={int(node - graph.embedding_offset): 2.0})
            changed = target_values(rep, frozen_forward(rep, pert), directions, feats, encoders).numpy() - base
            worst = max(worst, float(np.abs(changed - graph.adjacency[rows, node]).max()))
    return worst


@pytest.fixture(scope="module")
def color_graph(toy64):
    tset = random_set("topk")
    ex = world.make_example("heldout", 3, question_type="color")
    return run(toy64, tset, ex.question, ex.image()), tset, ex


def test_graph_structure_and_image_nodes(color_graph):
    result, _, ex = color_graph
    g = result.graph
    assert g.n_positions == 85 and len(g.image_positions) == 64
    assert g.image_grid.tolist() == [[0, r, c] for r in range(8) for c in range(8)]
    assert g.prefix_length == 4  # <bos><start_of_turn>user\n
    assert g.features[:, 1].min() >= 4 and g.errors[:, 1].min() >= 4
    assert g.n_features == result.replacement.n_active  # everything explored
    assert np.all(g.unexplored == 0)
    assert g.images[0].shape == (64, 64, 3)
    assert np.array_equal(g.images[0], np.asarray(ex.image()))
    # edges only run from lower to higher layers; a feature's own layer is not a source
    layers = g.node_layers()
    rows_layer = np.concatenate([g.features[:, 0], np.full(g.n_logits, g.n_layers)])
    nz_r, nz_c = np.nonzero(g.adjacency)
    assert np.all(layers[nz_c] < rows_layer[nz_r])


def test_sum_rule_closes_for_every_target(color_graph):
    g = color_graph[0].graph
    assert np.abs(g.sum_rule_residual()).max() < TIGHT


def test_perturbation_identity_for_every_kind_of_source(color_graph):
    result, tset, _ = color_graph
    g = result.graph
    rng = np.random.default_rng(1)
    sources = sample_sources(g, 16, rng)
    kinds = {g.node_kind(s) for s in sources}
    is_img = g.is_image_position()
    assert kinds == {"feature", "error", "embedding"}
    assert any(is_img[s - g.embedding_offset] for s in sources if g.node_kind(s) == "embedding")
    assert any(not is_img[s - g.embedding_offset] for s in sources if g.node_kind(s) == "embedding")
    assert perturbation_errors(result, tset, sources) < TIGHT


def test_replacement_model_reproduces_the_real_logits(color_graph, toy64):
    result, _, _ = color_graph
    model, _ = toy64
    rep = result.replacement
    with float64_norms():
        out = frozen_forward(rep)
    logits = out.final_hidden @ model.lm_head.weight.T
    assert torch.allclose(logits, rep.record.logits, atol=TIGHT, rtol=0)


def test_attention_inside_the_image_is_bidirectional(color_graph):
    """A later image soft token feeds a feature at an earlier image position (Gemma3 attends
    both ways inside an image), and never a later text position into an earlier one."""
    g = color_graph[0].graph
    img = set(g.image_positions.tolist())
    feat_pos = g.features[:, 1]
    emb_cols = g.embedding_offset + np.arange(g.n_positions)
    sub = g.adjacency[: g.n_features][:, emb_cols]
    r, c = np.nonzero(sub)
    later = c > feat_pos[r]
    assert later.any()
    assert all(feat_pos[i] in img and j in img for i, j in zip(r[later], c[later]))


def test_a_float64_model_is_float64_exact_without_the_caller_asking(toy64):
    """Gemma3RMSNorm and the eager softmax compute in float32 even in a float64 run (docs/design.md §6);
    the library switches them to float64 by itself for a float64 model (tracer.models.precision)."""
    model, processor = toy64
    ex = world.make_example("heldout", 4, question_type="shape")
    res = attribute_full(model, processor, random_set("topk", seed=3), ex.question, ex.image(),
                         AttributionConfig(progress=False, max_feature_nodes=200))
    residual = np.abs(res.graph.sum_rule_residual()) / np.maximum(1, np.abs(res.graph.values))
    assert residual.max() < TIGHT


def test_jumprelu_without_skip_and_a_text_only_prompt(toy64):
    tset = random_set("jumprelu", seed=2, skip=False)
    result = run(toy64, tset, "What color is grass?", None)
    g = result.graph
    assert len(g.image_positions) == 0 and g.n_positions == 14
    assert g.targets[0].label == "green"
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    assert perturbation_errors(result, tset, sample_sources(g, 9, np.random.default_rng(0))) < TIGHT


def test_partial_exploration_keeps_the_sum_rule_and_most_influential_features(toy64, color_graph):
    full, tset, ex = color_graph
    partial = run(toy64, tset, ex.question, ex.image(), max_feature_nodes=150, batch_size=40).graph
    assert partial.n_features == 150
    assert np.abs(partial.sum_rule_residual()).max() < TIGHT
    assert np.abs(partial.unexplored).max() > 0
    # edges of explored features equal those of the full graph
    g = full.graph
    index = {tuple(f): i for i, f in enumerate(g.features.tolist())}
    rows_full = [index[tuple(f)] for f in partial.features.tolist()]
    cols_full = rows_full + list(range(g.error_offset, g.logit_offset))
    cols_part = list(range(partial.n_features)) + list(range(partial.error_offset, partial.logit_offset))
    assert np.allclose(partial.adjacency[: partial.n_features][:, cols_part],
                       g.adjacency[rows_full][:, cols_full], atol=TIGHT, rtol=0)
    # influence-ordered: the explored features carry far more influence (in the full graph)
    # than an equal number of random ones would
    infl = node_influence(g)[: g.n_features]
    assert infl[rows_full].sum() > 0.6 * infl.sum()


def test_chosen_and_contrast_targets(toy64):
    tset = random_set("topk", seed=4)
    ex = world.make_example("heldout", 5, question_type="color")
    other = "blue" if ex.answer != "blue" else "red"
    res = run(toy64, tset, ex.question, ex.image(), targets=[ex.answer, other, f"{ex.answer} - {other}"],
              max_feature_nodes=100)
    g = res.graph
    assert [t.label for t in g.targets] == [ex.answer, other, f"{ex.answer} - {other}"]
    assert g.targets[2].kind == "direction" and g.targets[2].token_id == -1
    rows = g.adjacency[g.n_features:]
    # (W_U[a] - mean) - (W_U[b] - mean) = W_U[a] - W_U[b]: the contrast row is the difference of the token rows
    assert np.allclose(rows[2], rows[0] - rows[1], atol=1e-9)
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    assert g.values[-1] == pytest.approx(float(res.replacement.record.logits[g.targets[0].token_id]
                                               - res.replacement.record.logits[g.targets[1].token_id]), abs=1e-9)


def test_pruning_keeps_the_requested_share_of_influence(color_graph):
    g = color_graph[0].graph
    infl = node_influence(g)
    for share in (0.5, 0.8, 0.95):
        kept = prune(g, node_threshold=share, edge_threshold=1.0).node_mask
        assert infl[: g.n_features][kept[: g.n_features]].sum() >= share * infl[: g.n_features].sum() - 1e-12


def test_graph_file_round_trip_is_lossless(color_graph, tmp_path):
    g = color_graph[0].graph
    path = save_graph(g, tmp_path / "color")
    h = load_graph(path)
    assert h.adjacency.dtype == np.float64
    for name in ("input_ids", "features", "activations", "errors", "adjacency", "values", "constants", "unexplored",
                 "image_positions", "image_grid", "feature_position_activations", "top_logit_ids",
                 "top_logit_values", "bottom_logit_ids", "bottom_logit_values"):
        assert np.array_equal(getattr(g, name), getattr(h, name)), name
    assert np.array_equal(g.images[0], h.images[0])
    assert [t.to_dict() for t in g.targets] == [t.to_dict() for t in h.targets]
    assert (h.prompt, h.tokens, h.scores, h.vocab, h.prefix_length) == (g.prompt, g.tokens, g.scores, g.vocab,
                                                                        g.prefix_length)
