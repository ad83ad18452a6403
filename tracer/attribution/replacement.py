"""The local replacement model of one prompt, and its transposed linear map.

Built from a ForwardRecord and a transcoder set: attention patterns and norm scales frozen,
each MLP replaced by transcoder features + error + b_dec (+ the live linear skip). With those
freezes the residual stream is linear in its sources, so the gradient of any target with
respect to every source is one pass of the *transposed* map. Many targets ("lanes") go through
that pass together as a batch [lanes, positions, d_model]: the forward pass is never repeated
per lane (docs/design.md §4).

Per layer l, going down (G = d target / d residual after layer l, per lane):

    G_mlp  = G * s_post_mlp * g_post_mlp                  gradient at the raw MLP output
    edges  : feature (l,p,f) <- a_f * W_dec[f] . G_mlp[p];  error (l,p) <- err[l,p] . G_mlp[p]
    const  : b_dec . G_mlp (kept positions);  mlp_out . G_mlp (excluded positions)
    G_mid  = G + (G_mlp @ W_skip) * g_pre_mlp * s_pre_mlp     (skip at kept positions)
             + injected encoder rows of this layer's feature targets
    G_o    = G_mid * s_post_attn * g_post_attn
    G_v[k] = sum_q pattern[h, q, k] * (G_o @ W_O)_h[q]        (heads summed onto their KV head)
    G      = G_mid + (G_v @ W_V) * g_in * s_in
    finally: embedding (p) <- emb[p] . G[p]

(g = the norm's gain as the adapter defines it, e.g. 1 + weight for Gemma, weight for Llama/Qwen;
s = the recorded 1/rms of that norm's input at each position; a norm the family lacks has g = s = 1.)
Positions before `first_position` (BOS and the chat-template prefix) carry no feature or error
nodes: their whole MLP output is a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tracer.attribution.record import ForwardRecord
from tracer.models.base import VLMAdapter


@dataclass
class LayerWeights:
    W_O: torch.Tensor  # (d, H*dh)
    W_V: torch.Tensor  # (n_kv*dh, d)
    b_O: torch.Tensor | None
    b_V: torch.Tensor | None
    g_in: torch.Tensor
    g_post_attn: torch.Tensor
    g_pre_mlp: torch.Tensor
    g_post_mlp: torch.Tensor
    n_heads: int
    n_kv: int
    head_dim: int


@dataclass
class ActiveFeatures:
    """Active transcoder features of one layer at the kept positions."""

    positions: torch.Tensor  # (n,) long
    features: torch.Tensor  # (n,) long
    activations: torch.Tensor  # (n,) compute dtype
    slots: torch.Tensor  # (n,) rank of the feature among those at its position
    padded_sources: torch.Tensor  # (P, kmax, d): activation * decoder row, zeros where unused

    @property
    def n(self) -> int:
        return int(self.positions.numel())


@dataclass
class FoldedLayer:
    """A layer's frozen map, norm scales folded in (see LocalReplacement._fold)."""

    pattern_t: torch.Tensor  # (H, K, Q): pattern[h, q, k] * s_post_attn[q] * s_in[k], transposed
    W_O: torch.Tensor  # g_post_attn[:, None] * W_O
    W_V: torch.Tensor  # W_V * g_in[None, :]
    mlp_scale: torch.Tensor  # (P, 1, d): s_post_mlp[p] * g_post_mlp
    s_in: torch.Tensor
    s_post_attn: torch.Tensor
    skip: torch.Tensor | None  # g_post_mlp[:, None] * W_skip * g_pre_mlp[None, :]
    skip_scale: torch.Tensor | None  # (P, 1, 1): s_post_mlp[p] * s_pre_mlp[p] at kept positions, else 0


def encode_sparse_on(tc, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transcoder's sparse encoding of x, computed on `device`.

    A transcoder kept in host memory (too big for the GPU next to the model) is streamed: its
    encoder goes to the device for this one layer and is dropped afterwards. The activation
    function is the transcoder's own module, so activity is decided exactly as everywhere else.
    """
    if tc.lazy_encoder or tc.b_enc.device == torch.device(device):
        rows, feats, vals = tc.encode_sparse(x.to(tc.b_enc.device))
        return rows.to(device), feats.to(device), vals.to(device)
    W = tc.W_enc.detach().to(device, non_blocking=True)
    b = tc.b_enc.detach().to(device)
    pre = torch.nn.functional.linear(x.to(device, W.dtype), W, b)
    del W
    return tc.activation.sparse(pre)


def _gain(adapter: VLMAdapter, norm, d_model: int) -> torch.Tensor:
    """The norm's gain, ones for a role the family has no norm for."""
    gain = adapter.norm_gain(norm)
    return torch.ones(d_model) if gain is None else gain


class LocalReplacement:
    def __init__(self, adapter: VLMAdapter, record: ForwardRecord, transcoders, first_position: int,
                 device: torch.device | str | None = None, progress=None):
        self.adapter = adapter
        self.record = record
        self.transcoders = transcoders
        self.dtype = record.dtype
        self.device = torch.device(device) if device is not None else record.embeddings.device
        self.n_layers = adapter.n_layers
        self.n_positions = record.n_positions
        self.d_model = adapter.d_model
        self.first_position = int(first_position)
        P = self.n_positions
        self.keep = torch.zeros(P, dtype=torch.bool, device=self.device)
        self.keep[self.first_position:] = True
        self.kept_positions = torch.nonzero(self.keep).flatten()
        self.weights = [self._layer_weights(i) for i in range(self.n_layers)]
        self.g_final = _gain(adapter, adapter.final_norm, self.d_model).to(self.device, self.dtype)
        self.embeddings = record.embeddings.to(self.device)
        self.active: list[ActiveFeatures] = []
        self.writes: list[torch.Tensor] = []  # (P, kmax + 2, d) per layer, see _encode_layer
        self.errors: list[torch.Tensor] = []  # (P, d) per layer, zero at excluded positions
        self.folded: list[FoldedLayer] = []
        self.b_dec: list[torch.Tensor] = []
        self.skip: list[torch.Tensor | None] = []
        for layer in range(self.n_layers):
            self._encode_layer(layer)
            if progress is not None:
                progress.update(1)
        offsets = [0]
        for a in self.active:
            offsets.append(offsets[-1] + a.n)
        self.feature_offsets = offsets  # global index of layer l's first active feature
        self.n_active = offsets[-1]
        self.n_kept = int(self.kept_positions.numel())
        self.n_errors = self.n_layers * self.n_kept
        self.n_columns = self.n_active + self.n_errors + P

    # ------------------------------------------------------------------ construction
    def _layer_weights(self, i: int) -> LayerWeights:
        ad = self.adapter
        attn = ad.attention(i)
        to = dict(device=self.device, dtype=self.dtype)

        def gain(role):
            return _gain(ad, ad.norm(i, role), self.d_model).to(**to)

        o_proj = getattr(attn, ad.architecture.out_proj)
        v_proj = getattr(attn, ad.architecture.value_proj)
        return LayerWeights(
            W_O=o_proj.weight.detach().to(**to),
            W_V=v_proj.weight.detach().to(**to),
            b_O=None if o_proj.bias is None else o_proj.bias.detach().to(**to),
            b_V=None if v_proj.bias is None else v_proj.bias.detach().to(**to),
            g_in=gain("before_attention"),
            g_post_attn=gain("after_attention"),
            g_pre_mlp=gain("before_mlp"),
            g_post_mlp=gain("after_mlp"),
            n_heads=ad.n_heads,
            n_kv=ad.n_kv_heads,
            head_dim=int(attn.head_dim),
        )

    @torch.no_grad()
    def _encode_layer(self, layer: int) -> None:
        rec = self.record.layers[layer]
        tc = self.transcoders[layer]
        P, d = self.n_positions, self.d_model
        to = dict(device=self.device, dtype=self.dtype)
        x = rec.mlp_in[self.first_position:]
        rows, feats, vals = encode_sparse_on(tc, x, self.device)
        positions = rows.to(self.device) + self.first_position
        feats = feats.to(self.device)
        vals = vals.to(**to)
        order = torch.argsort(positions * tc.d_transcoder + feats)
        positions, feats, vals = positions[order], feats[order], vals[order]
        counts = torch.bincount(positions, minlength=P)
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.arange(positions.numel(), device=self.device) - starts[positions]
        kmax = int(counts.max().item()) if positions.numel() else 0
        dec = tc.decoder_rows(feats.cpu() if tc.lazy_decoder else feats.to(tc.b_enc.device)).to(**to)
        sources = dec * vals[:, None]
        b_dec = tc.b_dec.detach().to(**to)
        recon = torch.zeros(P, d, **to)
        if positions.numel():
            recon.index_add_(0, positions, sources)
        recon = recon + b_dec
        W_skip = tc.W_skip.detach().to(**to) if tc.W_skip is not None else None
        if W_skip is not None:
            recon = recon + rec.mlp_in.to(**to) @ W_skip.T
        mlp_out = rec.mlp_out.to(**to)
        # Everything this layer's MLP writes, per position, in one tensor so that the backward pass
        # gets feature edges, error edges and constant terms from a single batched product:
        # slots [0, kmax): activation x decoder row of each active feature; slot kmax: the error;
        # slot kmax+1: what is constant (b_dec at kept positions, the whole MLP output at excluded ones).
        k = max(kmax, 1)
        writes = torch.zeros(P, k + 2, d, **to)
        if positions.numel():
            writes[positions, slots] = sources
        writes[:, k] = (mlp_out - recon) * self.keep[:, None]
        writes[:, k + 1] = torch.where(self.keep[:, None], b_dec.expand(P, d), mlp_out)
        self.active.append(ActiveFeatures(positions, feats, vals, slots, writes[:, :k]))
        self.writes.append(writes)
        self.errors.append(writes[:, k])
        self.b_dec.append(b_dec)
        self.skip.append(W_skip)
        self.folded.append(self._fold(layer, W_skip))

    def _fold(self, layer: int, W_skip: torch.Tensor | None) -> "FoldedLayer":
        """The layer's frozen linear map with norm scales and gains folded into its matrices, so the
        backward pass does no per-position elementwise scaling of its [positions, lanes, d] gradient."""
        rec, w = self.record.layers[layer], self.weights[layer]
        to = dict(device=self.device, dtype=self.dtype)
        s_in, s_pa = rec.s_in.to(**to), rec.s_post_attn.to(**to)
        s_pre, s_pm = rec.s_pre_mlp.to(**to), rec.s_post_mlp.to(**to)
        pattern = rec.pattern.to(**to)  # (H, Q, K)
        folded_pattern = pattern * s_pa[None, :, None] * s_in[None, None, :]
        skip = skip_scale = None
        if W_skip is not None:
            skip = w.g_post_mlp[:, None] * W_skip * w.g_pre_mlp[None, :]
            # from the MLP input (inside the before-MLP norm) to its output (inside the after-MLP
            # norm); cut at excluded positions, whose MLP output is constant
            skip_scale = (s_pm * s_pre * self.keep.to(self.dtype))[:, None, None]
        return FoldedLayer(
            pattern_t=folded_pattern.transpose(1, 2).contiguous(),  # (H, K, Q)
            W_O=w.g_post_attn[:, None] * w.W_O,
            W_V=w.W_V * w.g_in[None, :],
            mlp_scale=(s_pm[:, None] * w.g_post_mlp[None, :])[:, None, :],  # (P, 1, d)
            s_in=s_in, s_post_attn=s_pa, skip=skip, skip_scale=skip_scale,
        )

    # ------------------------------------------------------------------ node indexing
    def feature_columns(self, layer: int) -> slice:
        return slice(self.feature_offsets[layer], self.feature_offsets[layer + 1])

    def error_columns(self, layer: int) -> slice:
        start = self.n_active + layer * self.n_kept
        return slice(start, start + self.n_kept)

    @property
    def embedding_columns(self) -> slice:
        return slice(self.n_active + self.n_errors, self.n_columns)

    def active_table(self) -> torch.Tensor:
        """(n_active, 3) long: layer, position, feature of every active feature (global order)."""
        parts = [torch.stack([torch.full_like(a.positions, l), a.positions, a.features], 1)
                 for l, a in enumerate(self.active)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)

    def active_values(self) -> torch.Tensor:
        return torch.cat([a.activations for a in self.active])

    # ------------------------------------------------------------------ targets
    def logit_injection(self, directions: torch.Tensor) -> torch.Tensor:
        """Gradient at the last residual position for logit-direction targets, (n, d)."""
        last = self.n_positions - 1
        return directions.to(self.device, self.dtype) * self.g_final * self.record.s_final[last].to(self.device)

    def feature_injection(self, layer: int, positions: torch.Tensor, encoder_rows: torch.Tensor) -> torch.Tensor:
        """Gradient at layer l's mid-residual (after attention, before the MLP) of the targets
        W_enc[f] . mlp_in[l, p], (n, d)."""
        w = self.weights[layer]
        s = self.record.layers[layer].s_pre_mlp.to(self.device)[positions]
        return encoder_rows.to(self.device, self.dtype) * w.g_pre_mlp * s[:, None]

    def feature_target_values(self, layer: int, positions: torch.Tensor, encoder_rows: torch.Tensor) -> torch.Tensor:
        x = self.record.layers[layer].mlp_in.to(self.device, self.dtype)[positions]
        return (encoder_rows.to(self.device, self.dtype) * x).sum(-1)

    # ------------------------------------------------------------------ the transposed map
    @torch.no_grad()
    def backward(self, n_lanes: int, top: tuple[torch.Tensor, torch.Tensor] | None = None,
                 injections: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
                 head_mask: torch.Tensor | None = None,
                 on_layer: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges of n_lanes targets to every source: (rows (n_lanes, n_columns), constants (n_lanes,)).

        top: (lane indices, vectors (n, d)) injected at the last position after the last layer
        (logit targets). injections[l]: (lane indices, positions, vectors) injected at layer l's
        MLP input (feature targets of layer l).
        head_mask: optional (n_lanes, n_layers, n_heads) factors on each attention head's output,
            per lane (0 removes the head from that lane's frozen linear model, 1 keeps it).
        on_layer: optional callback, called once per layer (top layer first) as
            on_layer(layer, G_mid, G_in): the gradients (n_lanes, P, d) of each lane's target with
            respect to the residual stream after layer `layer`'s attention block (where attention
            writes, before the MLP) and with respect to the residual entering the layer. The
            tensors are not modified afterwards; keep references, no copy needed.

        The gradient is kept position-major, G[p, lane, :], so that the per-position products
        (feature/error/constant edges, attention) need no transposed copies.
        """
        injections = injections or {}
        P, d = self.n_positions, self.d_model
        to = dict(device=self.device, dtype=self.dtype)
        G = torch.zeros(P, n_lanes, d, **to)
        if top is not None:
            lanes, vecs = top
            G[P - 1, lanes] = vecs.to(**to)
            start = self.n_layers - 1
        else:
            start = max(injections) if injections else -1
        rows = torch.zeros(n_lanes, self.n_columns, **to)
        const = torch.zeros(n_lanes, **to)
        first = self.first_position
        for layer in range(start, -1, -1):
            f = self.folded[layer]
            w = self.weights[layer]
            act = self.active[layer]
            G_mlp = G * f.mlp_scale  # gradient at the raw MLP output, (P, lanes, d)
            # feature edges, error edges and constants of this layer in one product
            per_slot = torch.bmm(G_mlp, self.writes[layer].transpose(1, 2))  # (P, lanes, kmax + 2)
            k = per_slot.shape[2] - 2
            if act.n:
                rows[:, self.feature_columns(layer)] = per_slot[act.positions, :, act.slots].T
            rows[:, self.error_columns(layer)] = per_slot[first:, :, k].T
            const += per_slot[:, :, k + 1].sum(0)
            G_mid = G
            if f.skip is not None:
                G_mid = G + (G @ f.skip) * f.skip_scale
            if layer in injections:
                lanes, pos, vecs = injections[layer]
                if G_mid is G:
                    G_mid = G.clone() if on_layer is not None else G  # G may have gone to on_layer above
                G_mid[pos, lanes] += vecs.to(**to)
            Z = (G_mid @ f.W_O).view(P, n_lanes, w.n_heads, w.head_dim)
            if head_mask is not None:
                Z = Z * head_mask[:, layer].to(**to)[None, :, :, None]
            if w.b_O is not None:
                const += (G_mid * f.s_post_attn[:, None, None]).sum(0) @ (w.g_post_attn * w.b_O)
            G_v = torch.einsum("hkq,qbhe->kbhe", f.pattern_t, Z)
            G_v = G_v.reshape(P, n_lanes, w.n_kv, w.n_heads // w.n_kv, w.head_dim).sum(3).reshape(P, n_lanes, -1)
            if w.b_V is not None:  # the pattern carries s_in[k]; the bias gradient must not
                const += (G_v / f.s_in[:, None, None]).sum(0) @ w.b_V
            G = G_mid + G_v @ f.W_V
            if on_layer is not None:
                on_layer(layer, G_mid.transpose(0, 1), G.transpose(0, 1))
        rows[:, self.embedding_columns] = torch.einsum("pbd,pd->bp", G, self.embeddings)
        return rows, const
