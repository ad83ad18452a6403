"""Attention graphs: how information moves between positions through attention heads.

Built on the local replacement model of one prompt (docs/design.md §3: attention patterns and norm
scales frozen to the clean run's, MLPs replaced by transcoder features + errors, so the residual
stream is linear in its sources). Per layer l, head h, key position k and query position q the
**contribution vector** of k to q along the value-output path is

    c[l, h, q, k] = s_post_attn[q] * g_post_attn  ⊙  W_O[:, h] ( pattern[l, h, q, k] * W_V[kv(h)] (s_in[k] * g_in ⊙ r_l[k]) )

with r_l the residual stream entering layer l, s the recorded 1/rms of each norm, g = 1 + the
norm's weight, kv(h) the key/value head that query head h reads (grouped-query attention).
Summed over heads and keys (plus attention biases, none in Gemma3) it is exactly the attention
block's output at q, the vector that layer adds to the residual stream (tested in float64).

**Edge weights** measure what a contribution does to the targets: c[l, h, q, k] · Gmid_l[q],
with Gmid_l the gradient of the target at the residual after layer l's attention block in the
frozen linear model (the transposed map of LocalReplacement.backward, so MLP paths count only
through the transcoders' linear skips, as for attribution edges). With several targets (salient
logits) the gradient is their weighted sum, weights = the targets' probabilities normalised to
sum to 1 (uniform for custom directions), the weights influence pruning uses. The residual
(same-position) edge into (l, q) is r_l[q] · Gmid_l[q].

**Nodes** are (layer, position): node (l, q) is the residual stream at q after layer l's
attention block (where attention writes; the MLP that follows does not move information
between positions and is not drawn). Edges run from (l - 1, k) (or the embedding at k for l = 0)
to (l, q): one per head and key through attention, plus the residual edge k = q.

`AttentionGraph.to_graph()` converts it to a `tracer.graph.Graph` the explorer draws and
`tracer.graph.pruning` prunes: node (l, q) is a "feature" node with features row
(l, q, -1); embeddings are the usual embedding nodes; logit nodes are the targets, each fed by
the last position's top node with the target's value as the weight. Graph edges are summed over
heads (the residual edge included in the k = q edge); the per-head breakdown of the strongest
edges goes into graph.info["attention"], and the full (L, H, P, P) array stays in the
AttentionGraph (save_npz / load_npz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tracer.attribution.record import record_forward
from tracer.attribution.replacement import LocalReplacement
from tracer.attribution.targets import ResolvedTarget, resolve_targets
from tracer.graph.graph import ATTENTION_GRAPH, Graph, Target
from tracer.graph.pruning import prune
from tracer.interventions.common import as_bundle, prompt_inputs
from tracer.models.base import PromptInputs

ATTENTION_GRAPH_KIND = ATTENTION_GRAPH


# ---------------------------------------------------------------------------------- the maths
def value_vectors(rep: LocalReplacement, layer: int, residual: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """(P, H, dh): each query head's value vector at every key position, from the residual
    entering `layer`, with the input norm frozen (grouped KV heads repeated per query head).
    bias=False leaves out b_V (head_contributions returns it in its separate bias term)."""
    w = rep.weights[layer]
    rec = rep.record.layers[layer]
    x = residual * (rec.s_in.to(rep.device, rep.dtype)[:, None] * w.g_in)
    v = x @ w.W_V.T
    if bias and w.b_V is not None:
        v = v + w.b_V
    v = v.view(-1, w.n_kv, w.head_dim)
    return v.repeat_interleave(w.n_heads // w.n_kv, dim=1)


def head_contributions(rep: LocalReplacement, layer: int, residual: torch.Tensor, query: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Contribution vectors into a query position: (c (H, K, d): head h, key k; bias (d,)).

    residual: (P, d) the residual stream entering `layer` (see `residual_stream`). The sum of c
    over heads and keys plus the bias term is the attention block's output at `query` (after the
    post-attention norm: what is added to the residual stream). query=None: every query at once,
    c (H, Q, K, d) and bias (Q, d) (memory H * P * P * d: for small models)."""
    w = rep.weights[layer]
    rec = rep.record.layers[layer]
    queries = torch.arange(rep.n_positions) if query is None else torch.tensor([int(query)])
    pattern = rec.pattern.to(rep.device, rep.dtype)[:, queries.to(rep.device)]  # (H, Q, K)
    V = value_vectors(rep, layer, residual, bias=False)  # (K, H, dh)
    z = pattern[..., None] * V.transpose(0, 1)[:, None]  # (H, Q, K, dh)
    W_O = w.W_O.view(rep.d_model, w.n_heads, w.head_dim)
    out = torch.einsum("hqke,dhe->hqkd", z, W_O)
    post = rec.s_post_attn.to(rep.device, rep.dtype)[queries.to(rep.device)][:, None] * w.g_post_attn  # (Q, d)
    out = out * post[None, :, None, :]
    bias = torch.stack([_bias_term(rep, layer, int(q)) for q in queries.tolist()])
    if query is None:
        return out, bias
    return out[:, 0], bias[0]


def _bias_term(rep: LocalReplacement, layer: int, query: int) -> torch.Tensor:
    """What the attention biases add at `query` (zero for Gemma3)."""
    w = rep.weights[layer]
    rec = rep.record.layers[layer]
    out = torch.zeros(rep.d_model, dtype=rep.dtype, device=rep.device)
    if w.b_V is not None:  # pattern rows sum to 1: each head adds its b_V through W_O
        pattern = rec.pattern.to(rep.device, rep.dtype)[:, query]  # (H, K)
        bv = w.b_V.view(w.n_kv, w.head_dim).repeat_interleave(w.n_heads // w.n_kv, 0)  # (H, dh)
        out = out + w.W_O @ (pattern.sum(1)[:, None] * bv).reshape(-1)
    if w.b_O is not None:
        out = out + w.b_O
    return out * (rec.s_post_attn.to(rep.device, rep.dtype)[query] * w.g_post_attn)


def attention_output(rep: LocalReplacement, layer: int, residual: torch.Tensor) -> torch.Tensor:
    """(P, d): the attention block's output at every position (frozen pattern and norms)."""
    w = rep.weights[layer]
    rec = rep.record.layers[layer]
    V = value_vectors(rep, layer, residual)  # (K, H, dh), biases included
    z = torch.einsum("hqk,khe->qhe", rec.pattern.to(rep.device, rep.dtype), V).reshape(rep.n_positions, -1)
    out = z @ w.W_O.T
    if w.b_O is not None:
        out = out + w.b_O
    return out * (rec.s_post_attn.to(rep.device, rep.dtype)[:, None] * w.g_post_attn)


def residual_stream(rep: LocalReplacement) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (r_in (P, d), r_mid (P, d)): the residual entering the layer and after its
    attention block, rebuilt from the recorded embeddings, frozen attention and the recorded MLP
    outputs (exactly the clean run's residual stream)."""
    out = []
    r = rep.embeddings.to(rep.device, rep.dtype)
    for layer in range(rep.n_layers):
        mid = r + attention_output(rep, layer, r)
        out.append((r, mid))
        rec = rep.record.layers[layer]
        w = rep.weights[layer]
        r = mid + rec.mlp_out.to(rep.device, rep.dtype) * (rec.s_post_mlp.to(rep.device, rep.dtype)[:, None] * w.g_post_mlp)
    out.append((r, r))
    return out


def target_weights(targets: list[ResolvedTarget]) -> np.ndarray:
    """The targets' probabilities normalised to sum to 1 (uniform when all are 0), as pruning weighs them."""
    p = np.array([max(t.target.probability, 0.0) for t in targets], dtype=np.float64)
    if p.sum() <= 0:
        p = np.ones(len(p))
    return p / p.sum()


def mid_gradients(rep: LocalReplacement, directions: torch.Tensor, weights: torch.Tensor | None = None
                  ) -> list[torch.Tensor]:
    """Per layer, (P, d): the gradient of the weighted sum of logit-direction targets with respect
    to the residual after that layer's attention block, in the frozen linear model."""
    n = directions.shape[0]
    w = torch.full((n,), 1.0 / n) if weights is None else torch.as_tensor(weights)
    w = w.to(rep.device, rep.dtype)
    grads: list[torch.Tensor | None] = [None] * rep.n_layers

    def keep(layer, G_mid, G_in):
        grads[layer] = torch.einsum("b,bpd->pd", w, G_mid)

    lanes = torch.arange(n, device=rep.device)
    rep.backward(n, top=(lanes, rep.logit_injection(directions)), on_layer=keep)
    return grads


def head_edge_weights(rep: LocalReplacement, layer: int, residual: torch.Tensor, grad_mid: torch.Tensor) -> torch.Tensor:
    """(H, Q, K): c[layer, h, q, k] · grad_mid[q] for every head, query and key, without forming
    the contribution vectors: pattern[h, q, k] * (V[k, h] · (W_O[:, h]^T (post[q] ⊙ grad_mid[q])))."""
    w = rep.weights[layer]
    rec = rep.record.layers[layer]
    V = value_vectors(rep, layer, residual, bias=False)  # (K, H, dh)
    post = rec.s_post_attn.to(rep.device, rep.dtype)[:, None] * w.g_post_attn
    U = ((grad_mid * post) @ w.W_O).view(rep.n_positions, w.n_heads, w.head_dim)  # (Q, H, dh)
    return rec.pattern.to(rep.device, rep.dtype) * torch.einsum("qhe,khe->hqk", U, V)


# ---------------------------------------------------------------------------------- the graph
@dataclass
class AttentionGraph:
    """Attention graph of one prompt (see the module docstring).

    head_edges[l, h, q, k]: weight of head h's contribution from key k to query q in layer l.
    residual_edges[l, q]: weight of the residual edge (l - 1, q) -> (l, q).
    node_values[l, q]: r_mid_l[q] · Gmid_l[q], the node's own effect on the (weighted) target.
    """

    prompt: str
    input_ids: np.ndarray
    tokens: list[str]
    n_layers: int
    n_heads: int
    head_edges: np.ndarray  # (L, H, P, P) float32 / float64
    residual_edges: np.ndarray  # (L, P)
    node_values: np.ndarray  # (L, P)
    targets: list[Target]
    target_weights: np.ndarray  # (T,)
    target_values: np.ndarray  # (T,) direction . final norm output
    image_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    image_grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    tokens_per_side: int = 0
    images: list[np.ndarray] = field(default_factory=list)
    prefix_length: int = 0
    image_grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) per image
    model: str = ""
    transcoders: str = ""
    info: dict = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return int(len(self.input_ids))

    @property
    def edges(self) -> np.ndarray:
        """(L, Q, K): edge weights summed over heads, the residual edge added on the diagonal."""
        e = self.head_edges.sum(1)
        idx = np.arange(self.n_positions)
        e[:, idx, idx] += self.residual_edges
        return e

    def heads_of_edge(self, layer: int, query: int, key: int) -> np.ndarray:
        """(H,) per-head weights of the edge (layer - 1, key) -> (layer, query)."""
        return self.head_edges[layer, :, query, key].copy()

    def node_influence(self) -> np.ndarray:
        """(L, P) influence of each node on the targets, computed layer by layer (the graph is
        strictly layered, so this equals tracer.graph.pruning.node_influence on `to_graph()`)."""
        E = np.abs(self.edges.astype(np.float64))
        sums = E.sum(-1, keepdims=True)
        N = np.divide(E, sums, out=np.zeros_like(E), where=sums > 0)
        infl = np.zeros((self.n_layers, self.n_positions))
        x = np.zeros(self.n_positions)
        x[-1] = 1.0  # every logit row's single source is the last position's top node
        for layer in range(self.n_layers - 1, -1, -1):
            infl[layer] = x
            x = x @ N[layer]
        return infl

    def to_graph(self, max_feature_nodes: int | None = None, head_edges_kept: int = 4000,
                 node_threshold: float = 0.8, edge_threshold: float = 0.98, residual_feature: int = -1) -> Graph:
        """A tracer.graph.Graph of this attention graph (mapping in the module docstring).

        max_feature_nodes: keep only this many (layer, position) nodes, the most influential
            (for big models: the dense graph has n_layers * n_positions nodes); the last
            position's top node is always kept.
        head_edges_kept: at most this many edges get their per-head breakdown in
            graph.info["attention"]: those kept by pruning at node_threshold / edge_threshold,
            strongest first.
        residual_feature: the feature index written for every node (default -1, which no
            transcoder feature has; circuit-tracer / Neuronpedia JSON node ids need an index >= 0,
            so pass e.g. 0 for that export and keep is_attention_graph() in mind when reading it).
        """
        L, P, T = self.n_layers, self.n_positions, len(self.targets)
        E = self.edges
        keep = np.ones((L, P), bool)
        if max_feature_nodes is not None and max_feature_nodes < L * P:
            infl = self.node_influence()
            infl[L - 1, P - 1] = np.inf
            order = np.argsort(-infl.ravel(), kind="stable")[:max(1, int(max_feature_nodes))]
            keep = np.zeros(L * P, bool)
            keep[order] = True
            keep = keep.reshape(L, P)
        node_of = -np.ones((L, P), np.int64)
        kept = np.argwhere(keep)  # layer-major, position ascending
        node_of[kept[:, 0], kept[:, 1]] = np.arange(len(kept))
        nF = len(kept)
        emb0 = nF  # no error nodes
        n_nodes = nF + P + T
        dtype = np.float64 if self.head_edges.dtype == np.float64 else np.float32
        adj = np.zeros((nF + T, n_nodes), dtype=dtype)
        for r, (layer, q) in enumerate(kept):
            row = E[layer, q]
            if layer == 0:
                adj[r, emb0:emb0 + P] = row
            else:
                src = node_of[layer - 1]
                ok = src >= 0
                adj[r, src[ok]] = row[ok]
        top = node_of[L - 1, P - 1]
        adj[nF:, top] = self.target_values
        features = np.concatenate([kept, np.full((nF, 1), int(residual_feature), np.int64)], 1).astype(np.int64)
        graph = Graph(
            prompt=self.prompt, input_ids=np.asarray(self.input_ids, np.int64), tokens=list(self.tokens),
            n_layers=L, features=features, activations=self.node_values[kept[:, 0], kept[:, 1]].astype(np.float32),
            errors=np.zeros((0, 2), np.int64), targets=list(self.targets), adjacency=adj,
            values=adj.astype(np.float64).sum(1), constants=np.zeros(nF + T), unexplored=np.zeros(nF + T),
            image_positions=np.asarray(self.image_positions, np.int64),
            image_grid=np.asarray(self.image_grid, np.int64).reshape(-1, 3), tokens_per_side=self.tokens_per_side,
            image_grids=list(self.image_grids),
            images=list(self.images), prefix_length=self.prefix_length, model=self.model,
            transcoders=self.transcoders, config={"kind": ATTENTION_GRAPH_KIND},
        )
        info = {"kind": ATTENTION_GRAPH_KIND, "n_heads": self.n_heads,
                "node_meaning": "feature row (layer, position, -1) = residual stream at position after "
                                "layer's attention block; embeddings = layer inputs",
                "edge_meaning": "sum over heads of contribution · gradient of the weighted targets, "
                                "residual edge included on the same position",
                "target_weights": [float(x) for x in self.target_weights]}
        info.update(self.info)
        info["attention"] = self._head_breakdown(graph, node_of, head_edges_kept, node_threshold, edge_threshold)
        graph.info = info
        return graph

    def _head_breakdown(self, graph: Graph, node_of: np.ndarray, limit: int, node_threshold: float,
                        edge_threshold: float) -> dict:
        """Per-head weights of the strongest pruned-graph edges (JSON-ready)."""
        out = {"n_heads": self.n_heads, "target": [], "source": [], "heads": [], "residual": []}
        if limit <= 0 or graph.n_features == 0:
            return out
        pr = prune(graph, node_threshold=node_threshold, edge_threshold=edge_threshold)
        rows, cols = np.nonzero(pr.edge_mask[: graph.n_features])
        weights = np.abs(graph.adjacency[rows, cols])
        order = np.argsort(-weights, kind="stable")[:limit]
        for r, c in zip(rows[order], cols[order]):
            layer, q, _ = graph.features[r]
            if c >= graph.embedding_offset:
                k = int(c - graph.embedding_offset)
            else:
                k = int(graph.features[c, 1])
            heads = self.head_edges[layer, :, q, k]
            out["target"].append(int(r))
            out["source"].append(int(c))
            out["heads"].append([float(x) for x in heads])
            out["residual"].append(float(self.residual_edges[layer, q]) if k == q else 0.0)
        return out

    # ------------------------------------------------------------------ files
    def save_npz(self, path: str | Path) -> Path:
        """Everything in one .npz (no pickle): arrays plus a JSON header."""
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prompt": self.prompt, "tokens": self.tokens, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "targets": [t.to_dict() for t in self.targets], "tokens_per_side": self.tokens_per_side,
                "image_grids": [list(g) for g in self.image_grids],
                "prefix_length": self.prefix_length, "model": self.model, "transcoders": self.transcoders,
                "info": self.info, "n_images": len(self.images)}
        arrays = {"input_ids": self.input_ids, "head_edges": self.head_edges, "residual_edges": self.residual_edges,
                  "node_values": self.node_values, "target_weights": self.target_weights,
                  "target_values": self.target_values, "image_positions": self.image_positions,
                  "image_grid": np.asarray(self.image_grid).reshape(-1, 3),
                  "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for i, im in enumerate(self.images):
            arrays[f"image_{i}"] = im
        np.savez_compressed(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load_npz(cls, path: str | Path) -> "AttentionGraph":
        import json

        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(
                prompt=meta["prompt"], input_ids=z["input_ids"], tokens=meta["tokens"], n_layers=meta["n_layers"],
                n_heads=meta["n_heads"], head_edges=z["head_edges"], residual_edges=z["residual_edges"],
                node_values=z["node_values"], targets=[Target.from_dict(t) for t in meta["targets"]],
                target_weights=z["target_weights"], target_values=z["target_values"],
                image_positions=z["image_positions"], image_grid=z["image_grid"],
                tokens_per_side=meta["tokens_per_side"], images=[z[f"image_{i}"] for i in range(meta["n_images"])],
                prefix_length=meta["prefix_length"], model=meta["model"], transcoders=meta["transcoders"],
                info=meta["info"], image_grids=[tuple(g) for g in meta.get("image_grids", [])],
            )


def is_attention_graph(graph: Graph) -> bool:
    """Whether a Graph came from AttentionGraph.to_graph (its feature nodes are positions)."""
    return graph.kind == ATTENTION_GRAPH


@torch.no_grad()
def attention_graph_from_replacement(rep: LocalReplacement, targets: list[ResolvedTarget],
                                     prompt: PromptInputs | None = None) -> AttentionGraph:
    """The attention graph of a local replacement model (e.g. AttributionResult.replacement) for
    the given targets (e.g. AttributionResult.targets)."""
    prompt = prompt or rep.record.prompt
    directions = torch.stack([t.direction for t in targets]).to(rep.device, rep.dtype)
    weights = target_weights(targets)
    grads = mid_gradients(rep, directions, torch.as_tensor(weights))
    stream = residual_stream(rep)
    L, P = rep.n_layers, rep.n_positions
    H = rep.weights[0].n_heads
    np_dtype = np.float64 if rep.dtype == torch.float64 else np.float32
    head_edges = np.zeros((L, H, P, P), np_dtype)
    residual_edges = np.zeros((L, P), np_dtype)
    node_values = np.zeros((L, P), np_dtype)
    for layer in range(L):
        r_in, r_mid = stream[layer]
        G = grads[layer]
        head_edges[layer] = head_edge_weights(rep, layer, r_in, G).cpu().numpy()
        residual_edges[layer] = (r_in * G).sum(-1).cpu().numpy()
        node_values[layer] = (r_mid * G).sum(-1).cpu().numpy()
    final = directions @ rep.record.final_hidden.to(rep.device, rep.dtype)
    return AttentionGraph(
        prompt=prompt.text, input_ids=np.asarray(prompt.input_ids, np.int64), tokens=list(prompt.tokens),
        n_layers=L, n_heads=H, head_edges=head_edges, residual_edges=residual_edges, node_values=node_values,
        targets=[t.target for t in targets], target_weights=weights, target_values=final.double().cpu().numpy(),
        image_positions=np.asarray(prompt.image_positions, np.int64),
        image_grid=np.asarray(prompt.image_grid, np.int64).reshape(-1, 3), tokens_per_side=prompt.tokens_per_side,
        image_grids=list(prompt.image_grids),
        images=[np.asarray(im.convert("RGB"), dtype=np.uint8) for im in prompt.images],
        prefix_length=prompt.prefix_length,
    )


@torch.no_grad()
def attention_graph(session, prompt: str | PromptInputs, image=None, targets: list[str] | None = None, *,
                    max_n_logits: int = 10, desired_logit_prob: float = 0.95, chat: bool = True,
                    exclude_prefix: bool = True) -> AttentionGraph:
    """The attention graph of the model's next token after prompt (+ image).

    targets: tokens / contrasts ("red - blue") as for attribution; default: the salient logits
    (most likely tokens up to desired_logit_prob, at most max_n_logits).
    exclude_prefix: as for attribution, BOS and the chat-template prefix carry no transcoder
    features (their MLP outputs are constants); it only affects skip paths in the gradients.
    """
    bundle = as_bundle(session)
    if bundle.transcoders is None:
        raise ValueError("the attention graph's gradients come from the local replacement model: give a transcoder set")
    ad = bundle.adapter
    pi = prompt_inputs(bundle, prompt, image, chat=chat)
    record = record_forward(ad, pi)
    first = min(pi.prefix_length if exclude_prefix else 0, pi.n_positions - 1)
    rep = LocalReplacement(ad, record, bundle.transcoders, first_position=first, device=ad.device)
    resolved = resolve_targets(targets, record.logits, ad.unembedding, bundle.tokenizer, max_n_logits,
                               desired_logit_prob, dtype=rep.dtype)
    ag = attention_graph_from_replacement(rep, resolved, pi)
    ag.model = str(getattr(session, "model_ref", "") or "")
    ag.transcoders = str(getattr(session, "transcoders_ref", "") or getattr(bundle.transcoders, "source", "") or "")
    ag.info["dtype"] = str(ad.dtype).replace("torch.", "")
    return ag
