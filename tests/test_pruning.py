"""Pruning and influence against brute force on the dense matrix (the definitions in
tracer/graph/pruning.py's docstring, written out the slow way)."""

from __future__ import annotations

import numpy as np
import pytest

from graph_factory import make_graph
from tracer.graph.pruning import cumulative_threshold, graph_scores, influence_from, node_influence, prune


def dense_normalized(g):
    A = np.abs(g.full_adjacency().astype(np.float64))
    s = A.sum(1, keepdims=True)
    return np.divide(A, s, out=np.zeros_like(A), where=s > 0)


def brute_influence(g):
    N = dense_normalized(g)
    w = np.zeros(g.n_nodes)
    p = np.array([t.probability for t in g.targets])
    w[g.logit_offset:] = p / p.sum()
    # w^T (N + N^2 + ...) = w^T ((I - N)^-1 - I): N is nilpotent (edges go up in layer)
    return w @ (np.linalg.inv(np.eye(g.n_nodes) - N) - np.eye(g.n_nodes)), w, N


def brute_prune(g, nt, et):
    infl, w, N = brute_influence(g)
    kinds = g.node_kinds()
    feat = kinds == "feature"
    keep = np.ones(g.n_nodes, bool)
    keep[feat] = infl[feat] >= cumulative_threshold(infl[feat], nt)
    scores = N * keep[None, :] * keep[:, None] * (infl + w)[:, None]
    edges = (scores >= cumulative_threshold(scores, et)) & (scores > 0)
    for _ in range(g.n_layers + 3):
        has_out, has_in = edges.any(0), edges.any(1)
        new = keep.copy()
        new[feat] &= has_out[feat] & has_in[feat]
        new[(kinds == "error") | (kinds == "embedding")] &= has_out[(kinds == "error") | (kinds == "embedding")]
        edges &= new[None, :] & new[:, None]
        if np.array_equal(new, keep):
            break
        keep = new
    return keep, edges


@pytest.mark.parametrize("seed", [0, 1])
def test_influence_equals_the_matrix_series(seed):
    g = make_graph(seed=seed, n_features=60, n_logits=3)
    assert np.allclose(node_influence(g), brute_influence(g)[0], atol=1e-12)


@pytest.mark.parametrize("nt,et", [(0.5, 0.9), (0.8, 0.98), (0.95, 0.99), (1.0, 1.0)])
def test_prune_equals_brute_force(nt, et):
    g = make_graph(seed=3, n_features=80, n_logits=2)
    keep, edges = brute_prune(g, nt, et)
    pr = prune(g, nt, et)
    assert np.array_equal(pr.node_mask, keep)
    rows = np.concatenate([np.arange(g.n_features), g.logit_offset + np.arange(g.n_logits)])
    assert np.array_equal(pr.edge_mask, edges[rows])
    assert not pr.truncated


def test_feature_budget_keeps_the_most_influential():
    g = make_graph(seed=4, n_features=120)
    pr = prune(g, 1.0, 1.0, max_feature_nodes=10)
    kept = np.flatnonzero(pr.node_mask[: g.n_features])
    infl = node_influence(g)[: g.n_features]
    assert len(kept) <= 10 and pr.nodes_cut
    assert set(kept) <= set(np.argsort(-infl)[:10])


def test_scores_and_region_share_by_brute_force():
    g = make_graph(seed=2, n_features=50)
    infl, w, N = brute_influence(g)
    err = slice(g.error_offset, g.embedding_offset)
    emb = slice(g.embedding_offset, g.logit_offset)
    assert graph_scores(g)["replacement"] == pytest.approx(infl[emb].sum() / (infl[emb].sum() + infl[err].sum()))
    region = g.embedding_offset + g.image_positions[:2]
    share = np.zeros(g.n_nodes)
    share[region] = 1.0
    for _ in range(g.n_layers + 3):  # share[v] = sum_s N[v, s] share[s], sources fixed
        new = N @ share
        new[region] = 1.0
        share = new
    assert np.allclose(influence_from(g, region)["logit_share"], share[g.logit_offset:], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_one_pass_influence_equals_the_sum_over_path_lengths(seed):
    """node_influence without a matrix to reuse takes influence_pass (one pass, top layer down, no
    normalised copy); it must equal the power series over the normalised matrix."""
    from tracer.graph.pruning import normalized_rows

    g = make_graph(seed=seed, n_features=150, n_logits=3)
    one_pass = node_influence(g)
    series = node_influence(g, normalized_rows(g))
    assert one_pass.max() > 0
    assert np.allclose(one_pass, series, rtol=1e-5, atol=1e-7 * one_pass.max())
