"""Attention graphs, heads behind attribution edges, and vision attention maps on the toy VLM.

Exactness runs in float64 under `float64_norms()`: the contribution vectors of every head and
key position into a query position add up to the attention block's output there (read from the
real model by a hook), edge weights are those vectors times the gradient of the target, and the
gradient is checked by pushing a vector into the frozen replacement model. Removing a head in
`heads_for_edge` is checked against the frozen model run forward with that head's pattern zeroed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from test_attribution_exactness import random_set
from tracer.attention import (
    AttentionGraph, VisionAttentionMaps, attention_graph, attention_graph_from_replacement, head_contributions,
    heads_for_edge, is_attention_graph, mid_gradients, residual_stream, upsample, vision_attention_maps,
)
from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.attribution.frozen import Perturbation, frozen_forward, target_values
from tracer.graph import load_graph, save_graph
from tracer.graph.pruning import node_influence, prune
from tracer.interventions import Bundle
from tracer.models import load_vlm
from tracer.models.precision import float64_norms
from tracer.toy import world

TIGHT = 1e-10


@pytest.fixture(scope="module")
def toy64():
    return load_vlm(None, dtype=torch.float64)


@pytest.fixture(scope="module")
def case(toy64):
    model, processor = toy64
    tset = random_set("topk", seed=1)
    ex = world.make_example("heldout", 3, question_type="color")
    other = "blue" if ex.answer != "blue" else "red"
    with float64_norms():
        res = attribute_full(model, processor, tset, ex.question, ex.image(),
                             AttributionConfig(progress=False, max_feature_nodes=64, batch_size=64,
                                               targets=[ex.answer, f"{ex.answer} - {other}"]))
    ag = attention_graph_from_replacement(res.replacement, res.targets)
    return res, ag, tset, ex


def _attention_outputs(model, rep) -> dict[int, torch.Tensor]:
    """The attention block outputs (after post_attention_layernorm) of the real model."""
    outs = {}
    handles = [rep.adapter.layer(l).post_attention_layernorm.register_forward_hook(
        lambda m, a, o, l=l: outs.__setitem__(l, o[0].detach())) for l in range(rep.n_layers)]
    try:
        with float64_norms(), torch.no_grad():
            model(**rep.record.prompt.inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return outs


def test_contributions_sum_to_the_attention_output_at_every_position(case, toy64):
    res, ag, _, _ = case
    rep = res.replacement
    outs = _attention_outputs(toy64[0], rep)
    stream = residual_stream(rep)
    directions = torch.stack([t.direction for t in res.targets])
    grads = mid_gradients(rep, directions, torch.as_tensor(ag.target_weights))
    # the rebuilt residual stream is the clean run's
    final = rep.g_final * rep.record.s_final[-1] * stream[-1][0][-1]
    assert torch.allclose(final, rep.record.final_hidden, atol=TIGHT, rtol=0)
    for layer in range(rep.n_layers):
        c, bias = head_contributions(rep, layer, stream[layer][0])  # (H, Q, K, d), every query
        assert torch.allclose(c.sum((0, 2)) + bias, outs[layer], atol=TIGHT, rtol=0), layer
        weights = torch.einsum("hqkd,qd->hqk", c, grads[layer]).numpy()
        assert np.abs(weights - ag.head_edges[layer]).max() < TIGHT
        one, one_bias = head_contributions(rep, layer, stream[layer][0], 40)
        assert torch.equal(one, c[:, 40]) and torch.equal(one_bias, bias[40])
    # causal attention outside the image, both ways inside it
    img = set(ag.image_positions.tolist())
    q_text = rep.n_positions - 1
    later = np.nonzero(np.abs(ag.head_edges).sum((0, 1)) > 0)
    for q, k in zip(*later):
        assert k <= q or (q in img and k in img)
    assert np.abs(ag.head_edges[:, :, q_text, :]).sum() > 0


def test_gradients_are_those_of_the_frozen_replacement_model(case):
    """Add a vector to one layer's attention output at one position (through o_proj) in the
    replacement model run forward: the weighted targets move by that change . Gmid."""
    res, ag, _, _ = case
    rep = res.replacement
    directions = torch.stack([t.direction for t in res.targets])
    weights = torch.as_tensor(ag.target_weights)
    grads = mid_gradients(rep, directions, weights)
    g = torch.Generator().manual_seed(0)
    with float64_norms():
        base = target_values(rep, frozen_forward(rep), directions, [], []) @ weights
        for layer, q in ((0, 30), (1, rep.n_positions - 3), (3, rep.n_positions - 1), (2, 50)):
            delta = torch.randn(rep.d_model, generator=g, dtype=torch.float64)
            handle = rep.adapter.layer(layer).self_attn.o_proj.register_forward_hook(
                lambda m, a, o: o + torch.nn.functional.pad(delta[None, None], (0, 0, q, o.shape[1] - q - 1)))
            try:
                moved = target_values(rep, frozen_forward(rep), directions, [], []) @ weights
            finally:
                handle.remove()
            w = rep.weights[layer]
            post = rep.record.layers[layer].s_post_attn[q] * w.g_post_attn
            assert float(moved - base) == pytest.approx(float((delta * post) @ grads[layer][q]), abs=TIGHT)


def test_graph_conversion_pruning_and_files(case, tmp_path):
    res, ag, _, _ = case
    g = ag.to_graph()
    g.validate()
    L, P = ag.n_layers, ag.n_positions
    assert is_attention_graph(g) and g.n_features == L * P and g.n_errors == 0 and g.n_logits == 2
    assert np.all(g.features[:, 2] == -1)
    # edges into (l, q): heads summed, the residual edge on the same position
    e = ag.edges
    q = P - 1
    row = g.adjacency[(L - 1) * P + q]
    assert np.allclose(row[(L - 2) * P: (L - 1) * P], e[L - 1, q])
    assert row[(L - 2) * P + q] == pytest.approx(ag.head_edges[L - 1, :, q, q].sum() + ag.residual_edges[L - 1, q])
    assert np.allclose(g.adjacency[L * P, g.embedding_offset: g.logit_offset], 0)
    assert np.allclose(g.adjacency[: P, g.embedding_offset: g.logit_offset], e[0])
    assert np.abs(g.sum_rule_residual()).max() < 1e-9
    # layered influence equals pruning.node_influence on the Graph
    assert np.allclose(node_influence(g)[: g.n_features], ag.node_influence().ravel(), atol=1e-12)
    pr = prune(g, node_threshold=0.8, edge_threshold=0.98)
    assert 0 < pr.n_nodes < g.n_nodes and pr.node_mask[(L - 1) * P + q]
    heads = g.info["attention"]
    assert heads["n_heads"] == ag.n_heads and len(heads["heads"]) == len(heads["target"]) > 0
    for t, s, hw, rw in zip(heads["target"], heads["source"], heads["heads"], heads["residual"]):
        assert sum(hw) + rw == pytest.approx(float(g.adjacency[t, s]), abs=1e-9)
    # a node budget keeps the most influential nodes (the top of the last position always)
    small = ag.to_graph(max_feature_nodes=40)
    small.validate()
    assert small.n_features == 40 and [L - 1, P - 1, -1] in small.features.tolist()
    # files
    h = load_graph(save_graph(g, tmp_path / "attn"))
    assert np.array_equal(h.adjacency, g.adjacency) and is_attention_graph(h)
    from tracer.graph.neuronpedia import export_neuronpedia

    assert export_neuronpedia(ag.to_graph(residual_feature=0), tmp_path / "np", slug="attn").exists()
    back = AttentionGraph.load_npz(ag.save_npz(tmp_path / "attn.heads.npz"))
    assert np.array_equal(back.head_edges, ag.head_edges) and back.tokens == ag.tokens
    assert [t.label for t in back.targets] == [t.label for t in ag.targets]


def test_heads_for_edge_matches_the_frozen_model_with_a_head_removed(case):
    res, _, _, ex = case
    graph, rep = res.graph, res.replacement
    pi = rep.record.prompt
    src = graph.embedding_offset + pi.image_positions[ex.evidence_tokens[0]]
    tgt = graph.logit_offset
    out = heads_for_edge(res, tgt, src)
    assert out.edge == pytest.approx(float(graph.adjacency[graph.n_features, src]), abs=TIGHT)
    assert out.without_attention == 0.0  # another position: no path without attention
    assert len(out.heads) == rep.n_layers * rep.weights[0].n_heads
    assert abs(out.heads[0].carried) >= abs(out.heads[-1].carried)
    directions = torch.stack([t.direction for t in res.targets])
    for effect in out.heads[:2]:
        rep2 = copy.copy(rep)
        rep2.record = copy.copy(rep.record)
        rep2.record.layers = [copy.copy(x) for x in rep.record.layers]
        pattern = rep2.record.layers[effect.layer].pattern.clone()
        pattern[effect.head] = 0
        rep2.record.layers[effect.layer].pattern = pattern
        with float64_norms():
            base = target_values(rep2, frozen_forward(rep2), directions, [], [])
            moved = target_values(rep2, frozen_forward(rep2, Perturbation(embeddings={int(src - graph.embedding_offset): 2.0})),
                                  directions, [], [])
        assert float(moved[0] - base[0]) == pytest.approx(effect.edge_without, abs=TIGHT)
    # a feature target fed by an embedding: only heads up to the feature's layer count
    feat = int(np.argmax(np.abs(graph.adjacency[graph.n_features, :graph.n_features])))
    layer = int(graph.features[feat, 0])
    row = graph.adjacency[feat]
    s = graph.embedding_offset + int(np.argmax(np.abs(row[graph.embedding_offset:graph.logit_offset])))
    out = heads_for_edge(res, feat, s)
    assert out.edge == pytest.approx(float(row[s]), abs=TIGHT)
    assert {h.layer for h in out.heads} == set(range(layer + 1))
    with pytest.raises(ValueError, match="not a target"):
        heads_for_edge(res, graph.embedding_offset, s)


def test_vision_maps_on_the_toy(toy_vlm):
    model, processor = toy_vlm
    ex = world.make_example("heldout", 3, question_type="color")
    maps = vision_attention_maps((model, processor), ex.image())
    assert maps.rollout.shape == (1, 64, 8, 8) and maps.kernel == 1 and maps.rollout_layers == [0, 1, 2]
    assert np.allclose(maps.rollout.sum((-1, -2)), 1.0, atol=1e-5)
    assert maps.rollout.min() >= 0
    # kernel 1: a soft token's pooled vector is its own patch, similarity 1 there
    for t in ex.evidence_tokens:
        r, c = divmod(t, 8)
        assert maps.for_cell(0, r, c, "similarity")[r, c] == pytest.approx(1.0, abs=1e-5)
        # the own patch keeps at least the identity share of the last layer's mixing
        assert maps.for_cell(0, r, c)[r, c] > 1.0 / 64
    pixels = upsample(maps.for_cell(0, 4, 0), (64, 64), mode="nearest")
    assert pixels.shape == (64, 64) and pixels[36, 3] == pytest.approx(maps.for_cell(0, 4, 0)[4, 0])
    # identity only: the map is the token's own patch
    ident = vision_attention_maps((model, processor), ex.image(), last_layers=1, identity_weight=1.0)
    assert ident.for_cell(0, 2, 5)[2, 5] == pytest.approx(1.0) and ident.rollout[0, 21].sum() == pytest.approx(1.0)


def test_vision_maps_pool_patches_into_soft_tokens(tmp_path):
    """A Gemma3 whose projector pools 2 x 2 patches (8 x 8 patches, 4 x 4 soft tokens)."""
    from tracer.toy.model import ToyModelSpec, build_model

    model, processor = build_model(seed=0, spec=ToyModelSpec(tokens_per_side=4, vision_layers=2))
    model.eval()
    model.config._attn_implementation = "eager"
    image = world.make_example("heldout", 0, question_type="color").image()
    ident = vision_attention_maps((model, processor), image, last_layers=1, identity_weight=1.0)
    assert ident.rollout.shape == (1, 16, 8, 8) and ident.kernel == 2
    expect = np.zeros((8, 8))
    expect[2:4, 4:6] = 0.25  # soft token (1, 2) averages patches rows 2-3, cols 4-5
    assert np.allclose(ident.for_cell(0, 1, 2), expect, atol=1e-6)
    # one layer, no identity: the mean of its 4 patches' head-averaged attention rows
    full = vision_attention_maps((model, processor), image, last_layers=1, identity_weight=0.0)
    got = {}
    layer = model.model.vision_tower.encoder.layers[-1].self_attn
    h = layer.register_forward_hook(lambda m, a, o: got.__setitem__("w", o[1].detach()))
    try:
        with torch.no_grad():
            model.model.vision_tower(pixel_values=processor.image_processor(images=[image], return_tensors="pt")["pixel_values"])
    finally:
        h.remove()
    A = got["w"][0].double().mean(0)  # (64, 64)
    patches = [2 * 8 + 4, 2 * 8 + 5, 3 * 8 + 4, 3 * 8 + 5]
    assert np.allclose(full.for_cell(0, 1, 2).ravel(), A[patches].mean(0).numpy(), atol=1e-6)
    path = full.save_npz(tmp_path / "maps.npz")
    back = VisionAttentionMaps.load_npz(path)
    assert np.array_equal(back.rollout, full.rollout) and back.kernel == 2 and back.tokens_per_side == 4


def ag_inputs(processor, model, ex):
    from tracer.interventions.common import prompt_inputs

    return prompt_inputs(Bundle(model, processor), ex.question, ex.image()).inputs


def test_attention_graph_api_and_cli(toy_vlm, tmp_path, capsys):
    from tracer.cli import main
    from tracer.transcoders import save_transcoder_set

    model, processor = toy_vlm
    tset = random_set("topk", seed=2).to(dtype=torch.float32)
    ex = world.make_example("heldout", 2, question_type="shape")
    ag = attention_graph(Bundle(model, processor, tset), ex.question, ex.image(), targets=[ex.answer])
    assert ag.head_edges.dtype == np.float32 and ag.targets[0].label == ex.answer
    with torch.no_grad():
        logits = model(**ag_inputs(processor, model, ex)).logits[0, -1].double()
    token = processor.tokenizer.convert_tokens_to_ids(ex.answer)
    assert ag.target_values[0] == pytest.approx(float(logits[token] - logits.mean()), abs=1e-3)
    folder = save_transcoder_set(tset, tmp_path / "tc", model_name="toy")
    image = tmp_path / "scene.png"
    ex.image().save(image)
    code = main(["attention", "--prompt", ex.question, "--image", str(image), "-t", str(folder),
                 "--out", str(tmp_path / "out" / "shape")])
    text = capsys.readouterr().out
    assert code == 0 and "attention graph" in text
    g = load_graph(tmp_path / "out" / "shape.graph.safetensors")
    assert is_attention_graph(g) and g.info["vision_maps_file"] == "shape.vision.npz"
    maps = VisionAttentionMaps.load_npz(tmp_path / "out" / "shape.vision.npz")
    assert maps.rollout.shape == (1, 64, 8, 8)
    assert AttentionGraph.load_npz(tmp_path / "out" / "shape.heads.npz").n_layers == 4
