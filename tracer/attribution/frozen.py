"""The local replacement model run forward through the Hugging Face modules themselves.

This is the second, independent implementation of DESIGN.md §3: instead of the hand-written
transposed map of replacement.py it runs the real language model with hooks that freeze what
the replacement model freezes (norm scales, attention patterns) and replace each MLP by its
transcoder features + error + b_dec (+ live skip). Scaling one source and reading the targets
gives the perturbation identity (Δ target = ε · A[target, source]) that tests and
`python -m tracer verify` check edges against, and with nothing scaled it must reproduce the
real model's logits.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from tracer.attribution.replacement import LocalReplacement

_FROZEN_ATTENTION = "tracer_frozen_pattern"
_patterns: dict[int, torch.Tensor] = {}


def _frozen_attention(module, query, key, value, attention_mask, **kwargs):
    pattern = _patterns[module.layer_idx].to(value.dtype)  # (H, Q, K)
    n_rep = pattern.shape[0] // value.shape[1]
    value = value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value
    out = torch.matmul(pattern.unsqueeze(0), value)  # (B, H, Q, dh)
    return out.transpose(1, 2).contiguous(), pattern.unsqueeze(0)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_FROZEN_ATTENTION, _frozen_attention)


@dataclass
class Perturbation:
    """Scale factors on sources (1.0 = unchanged)."""

    embeddings: dict[int, float] = field(default_factory=dict)  # position -> scale
    features: dict[tuple[int, int, int], float] = field(default_factory=dict)  # (layer, pos, feature) -> scale
    errors: dict[tuple[int, int], float] = field(default_factory=dict)  # (layer, pos) -> scale


@dataclass
class FrozenOutput:
    final_hidden: torch.Tensor  # (d,) final-norm output at the last position
    mlp_inputs: list[torch.Tensor]  # (P, d) per layer
    residual: torch.Tensor  # (P, d) residual stream after the last layer


@torch.no_grad()
def frozen_forward(rep: LocalReplacement, perturbation: Perturbation | None = None) -> FrozenOutput:
    """One forward pass of the replacement model (frozen patterns and norms, transcoder MLPs)."""
    _register()
    pert = perturbation or Perturbation()
    adapter, record = rep.adapter, rep.record
    dtype, device = adapter.dtype, adapter.device
    P = rep.n_positions
    emb = record.embeddings.to(device, dtype).clone()
    for pos, scale in pert.embeddings.items():
        emb[pos] = emb[pos] * scale
    captured: dict = {"mlp_in": [None] * rep.n_layers}

    def frozen_norm(scale: torch.Tensor):
        def hook(module, args, output):
            x = args[0]
            return (x.to(rep.dtype) * scale.to(x.device, rep.dtype)[None, :, None]
                    * (1.0 + module.weight.to(rep.dtype))).to(output.dtype)
        return hook

    def mlp_replacement(layer: int):
        act = rep.active[layer]
        scales = torch.ones(act.n, dtype=rep.dtype, device=rep.device)
        for (l, p, f), s in pert.features.items():
            if l == layer:
                hit = (act.positions == p) & (act.features == f)
                if not bool(hit.any()):
                    raise KeyError(f"feature {f} is not active at layer {l}, position {p}")
                scales[hit] = s
        err_scale = torch.ones(P, dtype=rep.dtype, device=rep.device)
        for (l, p), s in pert.errors.items():
            if l == layer:
                err_scale[p] = s
        sources = act.padded_sources[act.positions, act.slots] * scales[:, None]
        out_fixed = torch.zeros(P, rep.d_model, dtype=rep.dtype, device=rep.device)
        if act.n:
            out_fixed.index_add_(0, act.positions, sources)
        out_fixed = out_fixed + rep.b_dec[layer] + rep.errors[layer] * err_scale[:, None]
        keep = rep.keep[:, None]
        recorded = record.layers[layer].mlp_out.to(rep.device, rep.dtype)

        def hook(module, args, output):
            x = args[0][0].to(rep.dtype)
            captured["mlp_in"][layer] = x
            out = out_fixed
            if rep.skip[layer] is not None:
                out = out + x @ rep.skip[layer].T
            out = torch.where(keep, out, recorded)
            return out.unsqueeze(0).to(output.dtype)
        return hook

    def final_hook(module, args, output):
        captured["final_hidden"] = output[0, -1].to(rep.dtype)
        captured["residual"] = args[0][0].to(rep.dtype)

    configs = {id(c): c for c in (adapter.model.config, adapter.text_config, adapter.language_model.config,
                                  adapter.layer(0).self_attn.config)}
    saved = {k: getattr(c, "_attn_implementation", None) for k, c in configs.items()}
    with ExitStack() as stack:
        for i in range(rep.n_layers):
            layer = adapter.layer(i)
            lr = record.layers[i]
            _patterns[i] = lr.pattern
            for norm, scale in ((layer.input_layernorm, lr.s_in), (layer.post_attention_layernorm, lr.s_post_attn),
                                (layer.pre_feedforward_layernorm, lr.s_pre_mlp),
                                (layer.post_feedforward_layernorm, lr.s_post_mlp)):
                stack.callback(norm.register_forward_hook(frozen_norm(scale)).remove)
            stack.callback(adapter.mlp(i).register_forward_hook(mlp_replacement(i)).remove)
        stack.callback(adapter.final_norm.register_forward_hook(frozen_norm(record.s_final)).remove)
        stack.callback(adapter.final_norm.register_forward_hook(final_hook).remove)
        for c in configs.values():
            c._attn_implementation = _FROZEN_ATTENTION
        try:
            adapter.language_model(inputs_embeds=emb.unsqueeze(0), use_cache=False)
        finally:
            for k, c in configs.items():
                c._attn_implementation = saved[k]
            _patterns.clear()
    return FrozenOutput(captured["final_hidden"], captured["mlp_in"], captured["residual"])


@torch.no_grad()
def target_values(rep: LocalReplacement, out: FrozenOutput, directions: torch.Tensor,
                  features: torch.Tensor, encoder_rows: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Values of logit-direction targets, then of feature targets W_enc[f] . mlp_in[l, p] for
    features (n, 3: layer, pos, feature) with their encoder rows (n, d), in one vector."""
    logit_vals = directions.to(rep.device, rep.dtype) @ out.final_hidden
    if len(features) == 0:
        return logit_vals
    enc = torch.stack(list(encoder_rows)) if isinstance(encoder_rows, (list, tuple)) else encoder_rows
    features = torch.as_tensor(features, device=rep.device)
    inputs = torch.stack(out.mlp_inputs)  # (L, P, d)
    x = inputs[features[:, 0], features[:, 1]]
    return torch.cat([logit_vals, (enc.to(rep.device, rep.dtype) * x).sum(-1)])
