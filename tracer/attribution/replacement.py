"""The local replacement model of one prompt, and its transposed linear map.

Built from a ForwardRecord and a transcoder set: attention patterns and norm scales frozen,
each MLP replaced by transcoder features + error + b_dec (+ the live linear skip). With those
freezes the residual stream is linear in its sources, so the gradient of any target with
respect to every source is one pass of the *transposed* map. Many targets ("lanes") go through
that pass together as a batch [lanes, positions, d_model]: the forward pass is never repeated
per lane (DESIGN.md §4).

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

(g = 1 + RMSNorm weight, s = the recorded 1/rms of that norm's input at each position.)
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


def _gain(norm) -> torch.Tensor:
    return 1.0 + norm.weight.detach()


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
        cfg = adapter.text_config
        self.g_final = _gain(adapter.final_norm).to(self.device, self.dtype)
        self.embeddings = record.embeddings.to(self.device)
        self.active: list[ActiveFeatures] = []
        self.errors: list[torch.Tensor] = []  # (P, d) per layer, zero at excluded positions
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
        del cfg

    # ------------------------------------------------------------------ construction
    def _layer_weights(self, i: int) -> LayerWeights:
        layer = self.adapter.layer(i)
        attn = layer.self_attn
        to = dict(device=self.device, dtype=self.dtype)
        return LayerWeights(
            W_O=attn.o_proj.weight.detach().to(**to),
            W_V=attn.v_proj.weight.detach().to(**to),
            b_O=None if attn.o_proj.bias is None else attn.o_proj.bias.detach().to(**to),
            b_V=None if attn.v_proj.bias is None else attn.v_proj.bias.detach().to(**to),
            g_in=_gain(layer.input_layernorm).to(**to),
            g_post_attn=_gain(layer.post_attention_layernorm).to(**to),
            g_pre_mlp=_gain(layer.pre_feedforward_layernorm).to(**to),
            g_post_mlp=_gain(layer.post_feedforward_layernorm).to(**to),
            n_heads=int(attn.config.num_attention_heads),
            n_kv=int(attn.config.num_key_value_heads),
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
        padded = torch.zeros(P, max(kmax, 1), d, **to)
        if positions.numel():
            padded[positions, slots] = sources
        b_dec = tc.b_dec.detach().to(**to)
        recon = torch.zeros(P, d, **to)
        if positions.numel():
            recon.index_add_(0, positions, sources)
        recon = recon + b_dec
        W_skip = tc.W_skip.detach().to(**to) if tc.W_skip is not None else None
        if W_skip is not None:
            recon = recon + rec.mlp_in.to(**to) @ W_skip.T
        error = (rec.mlp_out.to(**to) - recon) * self.keep[:, None]
        self.active.append(ActiveFeatures(positions, feats, vals, slots, padded))
        self.errors.append(error)
        self.b_dec.append(b_dec)
        self.skip.append(W_skip)

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
        """
        injections = injections or {}
        P, d = self.n_positions, self.d_model
        to = dict(device=self.device, dtype=self.dtype)
        G = torch.zeros(n_lanes, P, d, **to)
        if top is not None:
            lanes, vecs = top
            G[lanes, P - 1] = vecs.to(**to)
            start = self.n_layers - 1
        else:
            start = max(injections) if injections else -1
        rows = torch.zeros(n_lanes, self.n_columns, **to)
        const = torch.zeros(n_lanes, **to)
        keep = self.keep
        excl = ~keep
        for layer in range(start, -1, -1):
            rec = self.record.layers[layer]
            w = self.weights[layer]
            G_mlp = G * (rec.s_post_mlp.to(**to)[:, None] * w.g_post_mlp)
            act = self.active[layer]
            if act.n:
                # [P, lanes, d] @ [P, d, kmax] -> [P, lanes, kmax], read at each feature's (pos, slot)
                per_pos = torch.bmm(G_mlp.transpose(0, 1), act.padded_sources.transpose(1, 2))
                rows[:, self.feature_columns(layer)] = per_pos[act.positions, :, act.slots].T
            kept = self.kept_positions
            rows[:, self.error_columns(layer)] = torch.einsum("bpd,pd->bp", G_mlp[:, kept], self.errors[layer][kept])
            const += G_mlp[:, kept].sum(1) @ self.b_dec[layer]
            if bool(excl.any()):
                const += torch.einsum("bpd,pd->b", G_mlp[:, excl], rec.mlp_out.to(**to)[excl])
            s_pre = rec.s_pre_mlp.to(**to)[:, None] * w.g_pre_mlp
            G_mid = G
            if self.skip[layer] is not None:
                G_mid = G + ((G_mlp * keep[:, None]) @ self.skip[layer]) * s_pre
            if layer in injections:
                lanes, pos, vecs = injections[layer]
                if on_layer is not None and G_mid is G:
                    G_mid = G.clone()  # G went to on_layer of the layer above
                G_mid[lanes, pos] += vecs.to(**to)  # G is not used again, so aliasing is harmless
            G_o = G_mid * (rec.s_post_attn.to(**to)[:, None] * w.g_post_attn)
            if w.b_O is not None:
                const += G_o.sum(1) @ w.b_O
            G_z = (G_o @ w.W_O).view(n_lanes, P, w.n_heads, w.head_dim)
            if head_mask is not None:
                G_z = G_z * head_mask[:, layer].to(**to)[:, None, :, None]
            G_v = torch.einsum("hqk,bqhe->bkhe", rec.pattern.to(**to), G_z)
            G_v = G_v.view(n_lanes, P, w.n_kv, w.n_heads // w.n_kv, w.head_dim).sum(3).reshape(n_lanes, P, -1)
            if w.b_V is not None:
                const += G_v.sum(1) @ w.b_V
            G = G_mid + (G_v @ w.W_V) * (rec.s_in.to(**to)[:, None] * w.g_in)
            if on_layer is not None:
                on_layer(layer, G_mid, G)
        rows[:, self.embedding_columns] = torch.einsum("bpd,pd->bp", G, self.embeddings)
        return rows, const
