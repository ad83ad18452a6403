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


@dataclass
class LaneMaps:
    """A layer's folded map in the layouts the batched backward multiplies with."""

    W_O: torch.Tensor  # (H, d, dh)
    W_V: torch.Tensor  # (n_kv, dh, d)


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
                 out: torch.Tensor | None = None,
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
        out: optional zero-filled (n_lanes, n_columns) tensor (a view is fine) the rows are written
            into, instead of a new one.

        The gradient is kept position-major, G[p, lane, :], so that the per-position products
        (feature/error/constant edges, attention) need no transposed copies. Two things are never
        computed because they are exactly zero: positions after the last target position
        (attention is causal), and, when lanes come ordered by the layer they enter at (top
        lanes first, then injection layers descending, as attribute() orders them), the lanes
        that have not entered yet at a layer: the gradient works on a growing prefix of lanes.
        """
        injections = injections or {}
        P, d = self.n_positions, self.d_model
        to = dict(device=self.device, dtype=self.dtype)
        # the gradient of targets up to position p is zero after span[p] (attention is causal,
        # bidirectional only within an image)
        targets = [pos for _, pos, _ in injections.values() if pos.numel()]
        P_eff = P if top is not None or not targets else int(self._span()[max(int(p.max()) for p in targets)])
        start = self.n_layers - 1 if top is not None else (max(injections) if injections else -1)
        live = self._live_lanes(n_lanes, top, injections, start)
        rows = torch.zeros(n_lanes, self.n_columns, **to) if out is None else out
        const = torch.zeros(n_lanes, **to)
        first = self.first_position
        n = live[start + 1] if start >= 0 else n_lanes
        G = torch.zeros(P_eff, n, d, **to)
        if top is not None:
            lanes, vecs = top
            G[P_eff - 1, lanes] = vecs.to(**to)
        for layer in range(start, -1, -1):
            f = self.folded[layer]
            w = self.weights[layer]
            act = self.active[layer]
            if n:
                # feature edges, error edges and constants of this layer in one product
                G_mlp = G * f.mlp_scale[:P_eff]  # gradient at the raw MLP output, (P_eff, n, d)
                per_slot = torch.bmm(G_mlp, self.writes[layer][:P_eff].transpose(1, 2))  # (P_eff, n, kmax + 2)
                del G_mlp
                k = per_slot.shape[2] - 2
                n_feat = self._features_before(layer, P_eff)
                if n_feat:
                    cols = self.feature_columns(layer)
                    rows[:n, cols.start:cols.start + n_feat] = \
                        per_slot[act.positions[:n_feat], :, act.slots[:n_feat]].T
                if P_eff > first:
                    err = self.error_columns(layer).start
                    rows[:n, err:err + P_eff - first] = per_slot[first:, :, k].T
                const[:n] += per_slot[:, :, k + 1].sum(0)
                del per_slot
            if n == 0 and on_layer is None and self._enter_once(injections.get(layer), live[layer]):
                # every lane enters here, each at one position: its gradient is a single row, so the
                # attention backward is an outer product with one pattern column (no full products)
                n = live[layer]
                G = self._entering_attention(layer, P_eff, injections[layer], head_mask, const)
                continue
            G_mid = G
            if f.skip is not None and n:
                G_mid = G + (G @ f.skip) * f.skip_scale[:P_eff]
            n_at = live[layer]
            if n_at > n:  # lanes entering at this layer
                G_mid = torch.cat([G_mid, torch.zeros(P_eff, n_at - n, d, **to)], 1)
            if layer in injections:
                lanes, pos, vecs = injections[layer]
                if G_mid is G and on_layer is not None:
                    G_mid = G.clone()  # G went to on_layer above
                G_mid[pos, lanes] += vecs.to(**to)
            n = n_at
            maps = self._lane_maps(layer)
            H, group, dh, n_kv = w.n_heads, w.n_heads // w.n_kv, w.head_dim, w.n_kv
            # head-major throughout, so that no product needs a transposed copy: Z[h] = G_mid @ W_O[h]
            # (queries, lanes, dh); each KV head sums its query heads' pattern[h]^T @ Z[h]; then each
            # KV head's share of W_V
            G_flat = G_mid.view(-1, d)
            Z = torch.empty(H, P_eff * n, dh, **to)
            for h in range(H):
                torch.mm(G_flat, maps.W_O[h], out=Z[h])
            if head_mask is not None:
                Z.view(H, P_eff, n, dh).mul_(head_mask[:n, layer].to(**to).T[:, None, :, None])
            if w.b_O is not None:
                const[:n] += (G_mid * f.s_post_attn[:P_eff, None, None]).sum(0) @ (w.g_post_attn * w.b_O)
            G_v = torch.empty(n_kv, P_eff, n * dh, **to)  # (n_kv, keys, lanes * dh)
            Z = Z.view(H, P_eff, n * dh)
            for h in range(H):
                pattern = f.pattern_t[h, :P_eff, :P_eff]  # (keys, queries), a view
                if h % group:
                    G_v[h // group].addmm_(pattern, Z[h])
                else:
                    torch.mm(pattern, Z[h], out=G_v[h // group])
            del Z
            if w.b_V is not None:  # the pattern carries s_in[k]; the bias gradient must not
                per_kv = (G_v.view(n_kv, P_eff, n, dh) / f.s_in[None, :P_eff, None, None]).sum(1)
                const[:n] += torch.einsum("jbe,je->b", per_kv, w.b_V.view(n_kv, dh))
            G = torch.addmm(G_flat, G_v[0].view(-1, dh), maps.W_V[0])
            for j in range(1, n_kv):
                G.addmm_(G_v[j].view(-1, dh), maps.W_V[j])
            G = G.view(P_eff, n, d)
            del G_v
            if on_layer is not None:
                on_layer(layer, self._full_lanes(G_mid, n_lanes), self._full_lanes(G, n_lanes))
        if n:
            emb = self.embedding_columns.start
            rows[:n, emb:emb + P_eff] = torch.einsum("pbd,pd->bp", G, self.embeddings[:P_eff])
        return rows, const

    def _lane_maps(self, layer: int) -> "LaneMaps":
        """The layer's frozen map laid out for the batched backward (built once, on first use)."""
        cache = self.__dict__.setdefault("_lane_maps_cache", {})
        if layer not in cache:
            f, w = self.folded[layer], self.weights[layer]
            H, dh, n_kv, d = w.n_heads, w.head_dim, w.n_kv, self.d_model
            # small (d x d) re-layouts only: nothing of the size of the writes or the patterns is copied
            cache[layer] = LaneMaps(W_O=f.W_O.view(d, H, dh).permute(1, 0, 2).contiguous(),  # (H, d, dh)
                                    W_V=f.W_V.view(n_kv, dh, d))
        return cache[layer]

    @staticmethod
    def _enter_once(injection, n_lanes: int) -> bool:
        """Does this injection give each of lanes 0..n_lanes-1 exactly one vector?"""
        if injection is None or injection[0].numel() != n_lanes or not n_lanes:
            return False
        return bool(torch.equal(torch.sort(injection[0]).values, torch.arange(n_lanes, device=injection[0].device)))

    def _entering_attention(self, layer: int, P_eff: int, injection, head_mask, const: torch.Tensor) -> torch.Tensor:
        """The residual gradient (P_eff, n, d) below layer `layer`'s attention for lanes that all
        enter at this layer, lane i with one vector at one position (see _enter_once)."""
        f, w = self.folded[layer], self.weights[layer]
        to = dict(device=self.device, dtype=self.dtype)
        lanes, pos, vecs = injection
        order = torch.argsort(lanes)
        pos, vecs = pos[order], vecs[order].to(**to)
        n, d = vecs.shape
        u = (vecs @ f.W_O).view(n, w.n_heads, w.head_dim)  # the head outputs' gradient at each lane's position
        if head_mask is not None:
            u = u * head_mask[:n, layer].to(**to)[:, :, None]
        if w.b_O is not None:
            const[:n] += (vecs * f.s_post_attn[pos, None]) @ (w.g_post_attn * w.b_O)
        column = f.pattern_t[:, :P_eff, pos].permute(1, 2, 0)  # (K, n, H): pattern[h, pos_i, k]
        G_v = column[..., None] * u[None]  # (K, n, H, dh)
        G_v = G_v.view(P_eff, n, w.n_kv, w.n_heads // w.n_kv, w.head_dim).sum(3).view(P_eff, n, -1)
        if w.b_V is not None:
            const[:n] += (G_v / f.s_in[:P_eff, None, None]).sum(0) @ w.b_V
        G = (G_v.view(-1, G_v.shape[-1]) @ f.W_V).view(P_eff, n, d)
        G[pos, torch.arange(n, device=self.device)] += vecs
        return G

    def _span(self) -> torch.Tensor:
        """(P,) long: span[p] = how many positions the gradient of a target at position p can reach,
        through any attention pattern of any layer (positions beyond it are exactly zero)."""
        if getattr(self, "_span_cache", None) is None:
            P = self.n_positions
            last = torch.arange(P)
            for rec in self.record.layers:
                nz = (rec.pattern != 0).any(0).cpu()  # (Q, K)
                k_max = torch.where(nz, torch.arange(P)[None, :], torch.zeros(1, dtype=torch.long)).max(1).values
                last = torch.maximum(last, k_max)
            last = torch.cummax(last, 0).values
            while True:  # positions within reach reach further in a lower layer
                wider = last[last]
                if torch.equal(wider, last):
                    break
                last = wider
            self._span_cache = last + 1
        return self._span_cache

    def _live_lanes(self, n_lanes: int, top, injections: dict, start: int) -> list[int]:
        """live[l]: how many lanes (a prefix) the gradient must carry from layer l's attention down;
        live[n_layers]: from the top. All lanes everywhere unless the lanes come ordered by the
        layer they enter at."""
        everywhere = [n_lanes] * (self.n_layers + 1)
        entry = torch.full((n_lanes,), -1, dtype=torch.long)
        if top is not None:
            entry[top[0].cpu()] = self.n_layers
        for layer, (lanes, _, _) in injections.items():
            lanes = lanes.cpu()
            entry[lanes] = torch.maximum(entry[lanes], torch.full_like(lanes, layer))
        if n_lanes > 1 and bool((entry[1:] > entry[:-1]).any()):
            return everywhere
        return [int((entry >= layer).sum()) for layer in range(self.n_layers + 1)]

    def _features_before(self, layer: int, P_eff: int) -> int:
        """How many of layer's active features (ordered by position) sit before position P_eff."""
        if P_eff >= self.n_positions:
            return self.active[layer].n
        return int(torch.searchsorted(self.active[layer].positions, P_eff))

    def _full_lanes(self, G: torch.Tensor, n_lanes: int) -> torch.Tensor:
        """(n_lanes, P, d) view of a (P_eff, n, d) gradient: zeros for lanes and positions not computed."""
        P_eff, n, d = G.shape
        if P_eff == self.n_positions and n == n_lanes:
            return G.transpose(0, 1)
        full = torch.zeros(n_lanes, self.n_positions, d, dtype=G.dtype, device=G.device)
        full[:n, :P_eff] = G.transpose(0, 1)
        return full
