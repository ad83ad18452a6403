"""Prove a saved graph is exact: re-run the model, check edges by perturbation, check the sum rule.

For a sample of sources (features, errors, text-token and image-soft-token embeddings) the
replacement model is run forward through the Hugging Face modules with that one source doubled
(tracer.attribution.frozen); the change of every checked target must equal the stored edge
A[target, source]. The sum rule is checked on every stored target row. Feature activations and
tokens must match what the graph recorded.

What can be checked depends on the graph: an attribution graph computed by this tracer is checked
fully, in its own precision (a float64 graph at float64 tolerances). A graph imported from viewer
JSON may be pruned: the edges it kept are checked, the sum rule only if it stores target values
and constants. Reference .pt graphs (edges in another tool's conventions, no values) and attention
graphs (no transcoder features) cannot be verified: `check_verifiable` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from tracer.attribution.frozen import Perturbation, frozen_forward, target_values
from tracer.attribution.record import compute_dtype_for
from tracer.attribution.replay import ReplayError, replay
from tracer.attribution.targets import resolve_directions
from tracer.errors import InputError
from tracer.graph.graph import ATTENTION_GRAPH, Graph
from tracer.graph.storage import EDGES_STORED_AS

# Relative tolerances by the precision the graph was computed in.
TOLERANCE = {"float64": 1e-10, "float32": 2e-3, "bfloat16": 5e-2, "float16": 5e-2}


class VerificationError(InputError):
    """The graph does not belong to this model / transcoder set / prompt, or is of a kind that
    cannot be verified."""


def check_verifiable(graph: Graph) -> None:
    """Raise VerificationError saying why, for a graph whose edges cannot be checked at all."""
    if graph.kind == ATTENTION_GRAPH:
        raise VerificationError(
            "an attention graph cannot be verified: its nodes are (layer, position) residual-stream states, not "
            "transcoder features, and verify checks feature edges (perturbation identity, sum rule); verify the "
            "attribution graph of the same prompt instead (python -m tracer attribute ... --verify)")
    if graph.info.get("imported_from") == "reference-pt":
        raise VerificationError(
            "a graph imported from a reference .pt cannot be verified: its edges follow the reference tool's "
            "conventions (dropped positions, its own token-edge scaling) and it stores no target values or "
            "constant terms")


def graph_dtype(graph: Graph) -> str:
    """The dtype of the model the graph was computed with (float64 graphs verify at float64 tolerances)."""
    name = str(graph.config.get("dtype") or graph.precision)
    return name if name in TOLERANCE else graph.precision


def tolerance_for(graph: Graph, model_dtype: torch.dtype) -> float:
    """The tolerance of the precision the graph was computed in, or of the model's if that computes
    coarser. Graphs of bfloat16 models are computed in float32 (`compute_dtype`, recorded since
    that change; older ones at bfloat16's tolerance). Edges read from float16
    (`save_graph(half=True)`) get the half-precision tolerance."""
    computed = str(graph.config.get("compute_dtype") or graph_dtype(graph))
    model_name = str(compute_dtype_for(model_dtype)).replace("torch.", "")
    tol = max(TOLERANCE.get(computed, TOLERANCE[graph_dtype(graph)]), TOLERANCE.get(model_name, TOLERANCE["float32"]))
    if graph.info.get(EDGES_STORED_AS) == "float16":
        tol = max(tol, TOLERANCE["float16"])
    return tol


@dataclass
class VerifyReport:
    n_sources: int
    n_targets: int
    perturbation_max_abs: float
    perturbation_max_rel: float  # relative to the largest |edge| checked
    sum_rule_max_abs: float
    sum_rule_max_rel: float  # relative to max(1, |value|)
    activation_max_abs: float
    tolerance: float
    worst: dict = field(default_factory=dict)
    activation_max_rel: float = 0.0  # relative to max(1, |activation|)
    sum_rule_checked: bool = True  # False: the graph stores no values / constants (imported)
    only_stored_edges: bool = False  # pruned (imported) graph: only the edges it kept are compared
    precision: str = "float32"  # the dtype the graph was computed in
    activation_storage_rel: float = 0.0  # rounding of the stored activations (float32 files: ~6e-8)

    @property
    def ok(self) -> bool:
        return (self.perturbation_max_rel <= self.tolerance
                and (not self.sum_rule_checked or self.sum_rule_max_rel <= self.tolerance)
                and self.activation_max_rel <= max(self.tolerance * 10, self.activation_storage_rel))

    def format(self) -> str:
        kept = " (the edges the pruned graph kept)" if self.only_stored_edges else ""
        lines = [
            f"perturbation identity: {self.n_sources} sources x {self.n_targets} targets{kept}, "
            f"worst |Δ - A| = {self.perturbation_max_abs:.3e} ({self.perturbation_max_rel:.3e} of the largest edge)",
            f"sum rule: worst residual {self.sum_rule_max_abs:.3e} ({self.sum_rule_max_rel:.3e} relative)"
            if self.sum_rule_checked else
            "sum rule: not checkable (the graph stores no target values and constant terms, or was pruned)",
            f"feature activations: worst difference {self.activation_max_abs:.3e} "
            f"({self.activation_max_rel:.3e} relative)",
        ]
        if self.worst:
            lines.append(f"worst edge: {self.worst}")
        lines.append(f"{'PASS' if self.ok else 'FAIL'} (tolerance {self.tolerance:g} relative, {self.precision} graph)")
        return "\n".join(lines)


def target_directions(graph: Graph, unembedding: torch.Tensor, dtype) -> torch.Tensor:
    """(n_logits, d) directions of the graph's logit targets."""
    return torch.stack([t.direction for t in resolve_directions(graph.targets, unembedding, dtype)])


def sample_sources(graph: Graph, n: int, rng: np.random.Generator) -> list[int]:
    """Node indices spread over kinds: features, errors, text embeddings, each image's embeddings."""
    groups = [np.arange(graph.n_features), graph.error_offset + np.arange(graph.n_errors)]
    is_img = graph.is_image_position()
    emb = graph.embedding_offset + np.arange(graph.n_embeddings)
    groups += [emb[~is_img]] + [graph.embedding_offset + graph.image_positions[graph.image_grid[:, 0] == k]
                                for k in range(graph.n_images)]
    groups = [g for g in groups if len(g)]
    per = max(1, n // len(groups))
    picked: list[int] = []
    for g in groups:
        picked += rng.choice(g, size=min(per, len(g)), replace=False).tolist()
    return sorted(set(picked))


@torch.no_grad()
def verify_graph(graph: Graph, model, processor, transcoders, n_sources: int = 24, max_feature_targets: int = 300,
                 seed: int = 0, tolerance: float | None = None) -> VerifyReport:
    check_verifiable(graph)
    if n_sources < 1:
        raise VerificationError(f"n_sources must be at least 1, got {n_sources}")
    try:
        rep = replay(graph, model, processor, transcoders).replacement
    except ReplayError as err:
        raise VerificationError(str(err)) from err
    adapter = rep.adapter

    # feature activations must be those the graph recorded
    act_err = act_rel = 0.0
    for layer in range(graph.n_layers):
        mine = graph.features[:, 0] == layer
        if not mine.any():
            continue
        a = rep.active[layer]
        lookup = {(int(p), int(f)): float(v) for p, f, v in zip(a.positions.tolist(), a.features.tolist(),
                                                                a.activations.tolist())}
        for (p, f), v in zip(graph.features[mine, 1:].tolist(), graph.activations[mine].tolist()):
            if (p, f) not in lookup:
                raise VerificationError(f"feature {f} at layer {layer}, position {p} is in the graph but not active "
                                        "in this run: wrong transcoders?")
            diff = abs(lookup[(p, f)] - v)
            diff = diff if diff == diff else float("inf")  # a NaN never passes (max() would drop it)
            act_err = max(act_err, diff)
            act_rel = max(act_rel, diff / max(1.0, abs(v)) if math.isfinite(v) else float("inf"))

    tol = tolerance if tolerance is not None else tolerance_for(graph, adapter.dtype)
    residual = graph.sum_rule_residual()
    # only an imported graph without the terms skips the sum rule; a NaN or inf anywhere else fails it
    sum_checked = graph.info.get("sum_rule_checkable", True) is not False
    residual = np.where(np.isfinite(residual), residual, np.inf)
    sum_abs = float(np.abs(residual).max()) if len(residual) and sum_checked else 0.0
    sum_rel = (float((np.abs(residual) / np.maximum(1.0, np.abs(np.nan_to_num(graph.values, nan=0.0)))).max())
               if len(residual) and sum_checked else 0.0)
    # an imported graph may be pruned: a zero it stores can be an edge it dropped
    only_stored = bool(graph.info.get("imported_from"))

    rng = np.random.default_rng(seed)
    directions = target_directions(graph, adapter.unembedding, rep.dtype)
    feat_rows = np.arange(graph.n_features)
    if len(feat_rows) > max_feature_targets:
        feat_rows = np.sort(rng.choice(feat_rows, max_feature_targets, replace=False))
    feats = torch.as_tensor(graph.features[feat_rows])
    encoders = [transcoders[int(l)].encoder_rows(torch.tensor([int(f)]))[0] for l, _, f in feats.tolist()]
    rows = np.concatenate([graph.n_features + np.arange(graph.n_logits), feat_rows])
    base = target_values(rep, frozen_forward(rep), directions, feats, encoders).cpu().numpy()
    sources = sample_sources(graph, n_sources, rng)
    worst_abs, scale, worst = 0.0, 0.0, {}
    for node in sources:
        kind = graph.node_kind(node)
        if kind == "feature":
            l, p, f = (int(x) for x in graph.features[node])
            pert = Perturbation(features={(l, p, f): 2.0})
        elif kind == "error":
            l, p = (int(x) for x in graph.errors[node - graph.error_offset])
            pert = Perturbation(errors={(l, p): 2.0})
        else:
            pert = Perturbation(embeddings={int(node - graph.embedding_offset): 2.0})
        changed = target_values(rep, frozen_forward(rep, pert), directions, feats, encoders).cpu().numpy() - base
        stored = graph.adjacency[rows, node].astype(np.float64)
        diff = np.abs(changed - stored)
        diff = np.where(np.isfinite(diff), diff, np.inf)  # a NaN from the model is a failure, not a pass
        if only_stored:
            diff = np.where(stored != 0, diff, 0.0)
        scale = max(scale, float(np.abs(stored).max()))
        k = int(diff.argmax())
        if diff[k] > worst_abs:
            worst_abs = float(diff[k])
            target_node = int(rows[k]) if rows[k] < graph.n_features else graph.logit_offset + int(rows[k]) - graph.n_features
            worst = {"source": graph.node_label(node), "target": graph.node_label(target_node),
                     "stored": float(stored[k]), "perturbation": float(changed[k])}
    return VerifyReport(
        n_sources=len(sources), n_targets=len(rows), perturbation_max_abs=worst_abs,
        perturbation_max_rel=worst_abs / max(scale, 1e-30), sum_rule_max_abs=sum_abs, sum_rule_max_rel=sum_rel,
        activation_max_abs=act_err, tolerance=tol, worst=worst, activation_max_rel=act_rel,
        # float64 graphs written before activations were stored in float64 hold float32 ones
        activation_storage_rel=float(np.finfo(graph.activations.dtype).eps) if graph.activations.dtype != np.float64
        else 0.0,
        sum_rule_checked=sum_checked, only_stored_edges=only_stored, precision=graph_dtype(graph),
    )
