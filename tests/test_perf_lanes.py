"""The backward lanes' shortcuts give the same edges as the full computation (float64 toy VLM).

`LocalReplacement.backward` skips work that is exactly zero: positions past the targets' attention
span (causal attention, bidirectional inside an image), lanes that have not entered yet (lanes
ordered by entry layer work on a growing prefix), and for lanes that all enter at one layer with
one vector each, the full attention products (an outer product with one pattern column instead).
The reference is the same call with one extra lane injected at the top: that lane reaches every
position and breaks the entry-layer order, so none of the shortcuts applies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.graph.pruning import normalized_rows
from tracer.models import load_vlm
from tracer.models.precision import float64_norms
from tracer.toy import world
from tracer.transcoders.activations import TopK
from tracer.transcoders.per_layer import PerLayerTranscoder
from tracer.transcoders.transcoder_set import TranscoderSet


def _random_set(d_tc: int = 96, seed: int = 1) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for layer in range(4):
        tc = PerLayerTranscoder.init_random(layer, 128, d_tc, TopK(6), skip=True, generator=g, dtype=torch.float64)
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.15, generator=g)
            tc.b_enc.normal_(0, 0.1, generator=g)
            tc.W_skip.normal_(0, 0.03, generator=g)
        layers[layer] = tc
    return TranscoderSet(layers, config={"model_name": "toy", "feature_input_hook": "mlp.hook_in",
                                         "feature_output_hook": "mlp.hook_out"}, source="random-perf")


@pytest.fixture(scope="module")
def results():
    model, processor = load_vlm(None, dtype=torch.float64)
    tset = _random_set()
    ex = world.make_example("heldout", 3, question_type="color")
    out = {}
    with float64_norms():
        for name, question, image in (("text", "What color is the sky and what color is grass?", None),
                                      ("image", ex.question, ex.image())):
            out[name] = attribute_full(model, processor, tset, question, image,
                                       AttributionConfig(progress=False, max_feature_nodes=None, batch_size=64))
    return out


def _injections(rep, lanes_global: torch.Tensor) -> dict:
    """Injections of feature targets (global active indices), lane i = lanes_global[i]."""
    table = rep.active_table()
    layers = table[lanes_global, 0]
    out = {}
    for layer in torch.unique(layers).tolist():
        lanes = torch.nonzero(layers == layer).flatten()
        pos, feats = table[lanes_global[lanes], 1], table[lanes_global[lanes], 2]
        enc = rep.transcoders[layer].encoder_rows(feats)
        out[layer] = (lanes, pos, rep.feature_injection(layer, pos, enc))
    return out


def _reference(rep, n: int, injections: dict, head_mask=None):
    """The same lanes with one more lane at the top (zero vector): no shortcut applies."""
    top = (torch.tensor([n]), torch.zeros(1, rep.d_model, dtype=rep.dtype))
    if head_mask is not None:
        head_mask = torch.cat([head_mask, torch.ones_like(head_mask[:1])])
    rows, const = rep.backward(n + 1, top=top, injections=injections, head_mask=head_mask)
    return rows[:n], const[:n]


def _check(rep, lanes_global: torch.Tensor, head_mask=None):
    inj = _injections(rep, lanes_global)
    rows, const = rep.backward(len(lanes_global), injections=inj, head_mask=head_mask)
    ref_rows, ref_const = _reference(rep, len(lanes_global), inj, head_mask)
    scale = float(ref_rows.abs().max())
    assert scale > 0
    assert float((rows - ref_rows).abs().max()) <= 1e-12 * scale
    assert float((const - ref_const).abs().max()) <= 1e-12 * max(1.0, float(ref_const.abs().max()))


def test_one_layer_batch_takes_the_entering_shortcut_and_matches(results):
    rep = results["text"].replacement
    layer = 2
    cols = rep.feature_columns(layer)
    lanes = torch.arange(cols.start, cols.stop)[:30]  # the first positions
    assert rep._enter_once(_injections(rep, lanes)[layer], len(lanes))
    # positions well before the end, so the span shortcut cuts positions too
    assert int(rep._span()[int(rep.active_table()[lanes, 1].max())]) < rep.n_positions
    _check(rep, lanes)


def test_lanes_of_several_layers_ordered_by_layer_match(results):
    rep = results["text"].replacement
    picks = [torch.arange(rep.feature_columns(l).start, rep.feature_columns(l).stop)[:7] for l in (3, 2, 0)]
    _check(rep, torch.cat(picks))


def test_unordered_lanes_match(results):
    rep = results["text"].replacement
    picks = [torch.arange(rep.feature_columns(l).start, rep.feature_columns(l).stop)[:5] for l in (0, 3, 1)]
    _check(rep, torch.cat(picks))


def test_image_lanes_reach_later_image_positions(results):
    """Image tokens attend both ways inside the image: the span of an early image position runs to
    the end of the image, and the edges of a lane there must include later image positions."""
    result = results["image"]
    rep, g = result.replacement, result.graph
    table = rep.active_table()
    first_image = int(g.image_positions.min())
    at_image = torch.nonzero((table[:, 1] == first_image) & (table[:, 0] == 2)).flatten()
    assert len(at_image)
    assert int(rep._span()[first_image]) > int(g.image_positions.max())
    _check(rep, at_image)


def test_head_mask_matches(results):
    rep = results["text"].replacement
    cols = rep.feature_columns(3)
    lanes = torch.arange(cols.start, cols.stop)[:12]
    H = rep.weights[0].n_heads
    mask = torch.ones(len(lanes), rep.n_layers, H, dtype=rep.dtype)
    for i in range(len(lanes)):
        mask[i, i % rep.n_layers, i % H] = 0.0
    _check(rep, lanes, head_mask=mask)


def test_explore_all_graph_rows_are_the_lanes_rows(results):
    """With every feature explored the lanes write straight into the adjacency: row i is the lane of
    active feature i, its columns rep's columns then zeros for the logits."""
    result = results["text"]
    rep, g = result.replacement, result.graph
    assert g.n_features == rep.n_active
    sample = torch.arange(0, rep.n_active, max(1, rep.n_active // 25))
    inj = _injections(rep, sample)
    ref_rows, ref_const = _reference(rep, len(sample), inj)
    A = g.adjacency[sample.numpy()]
    assert np.allclose(A[:, :rep.n_columns], ref_rows.numpy(), rtol=0, atol=1e-12 * float(np.abs(A).max()))
    assert not A[:, rep.n_columns:].any()
    assert np.allclose(g.constants[sample.numpy()], ref_const.numpy(), rtol=0, atol=1e-12)


def test_normalized_rows_holds_one_copy(results):
    import tracemalloc

    g = results["image"].graph
    a = np.abs(g.adjacency)
    sums = a.sum(1, keepdims=True)
    expected = np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)
    del a
    tracemalloc.start()
    norm = normalized_rows(g)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(norm, expected)
    assert peak < 1.1 * g.adjacency.nbytes


def test_budgeted_graph_rows_are_the_lanes_rows():
    """With a feature budget the lanes run in sub-batches (one layer each, split by position) and
    the rows are gathered: every stored row still equals its lane's full computation."""
    model, processor = load_vlm(None, dtype=torch.float64)
    with float64_norms():
        result = attribute_full(model, processor, _random_set(), "What color is the sky and what color is grass?",
                                None, AttributionConfig(progress=False, max_feature_nodes=150, batch_size=128))
    rep, g = result.replacement, result.graph
    assert g.n_features == 150 < rep.n_active
    index = {tuple(f): i for i, f in enumerate(rep.active_table().tolist())}
    sel = torch.tensor([index[tuple(f)] for f in g.features.tolist()])
    ref_rows, ref_const = _reference(rep, len(sel), _injections(rep, sel))
    expected = torch.cat([ref_rows[:, sel], ref_rows[:, rep.n_active:]], 1).numpy()
    A = g.adjacency[:g.n_features, :expected.shape[1]]
    assert np.allclose(A, expected, rtol=0, atol=1e-12 * float(np.abs(expected).max()))
    assert np.allclose(g.constants[:g.n_features], ref_const.numpy(), rtol=0, atol=1e-12)
    assert np.abs(g.sum_rule_residual()).max() < 1e-10


def test_lane_runs_split_by_layer_then_position():
    from tracer.attribution.attribute import _lane_runs

    layers = torch.tensor([3] * 200 + [1] * 10 + [0] * 64)
    assert _lane_runs(layers, 4) == [(0, 66), (66, 133), (133, 200), (200, 210), (210, 274)]
    assert _lane_runs(layers, 1) == [(0, 200), (200, 210), (210, 274)]


def _scores_by_definition(g) -> dict:
    """The scores from the whole normalised matrix and node_influence (the module's definitions)."""
    from tracer.graph.pruning import logit_weights, node_influence, row_nodes

    norm = normalized_rows(g).astype(np.float64)
    weights = logit_weights(g)
    influence = node_influence(g, norm, weights)
    err = slice(g.error_offset, g.embedding_offset)
    emb = slice(g.embedding_offset, g.logit_offset)
    token, error = influence[emb].sum(), influence[err].sum()
    rows = row_nodes(g)
    non_error = np.ones(g.n_nodes)
    non_error[rows] = 1.0 - norm[:, err].sum(1)
    out = influence.copy()
    out[g.logit_offset:] += weights
    return {"replacement": token / (token + error), "completeness": (non_error * out)[rows].sum() / out[rows].sum()}


def test_graph_scores_in_one_pass_without_a_copy(results):
    """graph_scores walks the rows once, top layer first, a block at a time: the same scores as the
    definition, and no matrix-sized temporary."""
    import tracemalloc

    from tracer.graph.pruning import graph_scores

    assert results["image"].graph.adjacency.nbytes > 4 * (8 << 20)
    for g in (results["text"].graph, results["image"].graph):
        expected = _scores_by_definition(g)
        tracemalloc.start()
        got = graph_scores(g)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12)
        if g.adjacency.nbytes > 4 * (8 << 20):  # several 8 MB blocks (float64)
            assert peak < 0.5 * g.adjacency.nbytes  # the normalised matrix alone would be 1.0


def test_influence_ranking_grown_between_batches_equals_the_formula():
    """_Influence keeps M (explored x explored) between calls and adds only the new rows and
    columns; at every step its influence must equal the formula computed from scratch."""
    from tracer.attribution.attribute import _Influence

    torch.manual_seed(0)
    n_logits, n_active, n_cols, budget = 2, 60, 80, 40
    rows = torch.zeros(n_logits + budget, n_cols, dtype=torch.float64)
    rows[:n_logits] = torch.randn(n_logits, n_cols)
    weights = torch.tensor([0.7, 0.3], dtype=torch.float64)
    order = torch.randperm(n_active)
    # rows here are not layered, so the series needs many terms (a real M is nilpotent: n_layers + 1)
    influence = _Influence(rows, n_logits, weights, n_active, n_layers=400, n_explore=budget)
    explored = torch.empty(0, dtype=torch.long)
    for step in (5, 7, 1, 19, 8):  # batches of several sizes, as the last batch of a budget is
        picked = order[explored.numel():explored.numel() + step]
        at = n_logits + explored.numel()
        rows[at:at + step] = torch.randn(step, n_cols) * (torch.rand(step, n_cols) < 0.5)  # the new features' rows
        explored = torch.cat([explored, picked])
        got = influence(explored)
        N = rows.abs() / rows.abs().sum(1, keepdim=True).clamp_min(1e-300)
        u = weights @ N[:n_logits, :n_active]
        feats = N[n_logits:n_logits + explored.numel()]
        M = feats[:, explored]
        x, total = u[explored], u[explored].clone()
        for _ in range(400):
            x = x @ M
            total = total + x
        expected = u + total @ feats[:, :n_active]
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), step
