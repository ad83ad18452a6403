"""The local replacement model run forward through the Hugging Face modules themselves.

This is the second, independent implementation of docs/design.md §3: instead of the hand-written
transposed map of replacement.py it runs the real language model with hooks that freeze what
the replacement model freezes (norm scales, attention patterns) and replace each MLP by its
transcoder features + error + b_dec (+ live skip). Scaling one source and reading the targets
gives the perturbation identity (Δ target = ε · A[target, source]) that tests and
`python -m tracer verify` check edges against, and with nothing scaled it must reproduce the
real model's logits.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tracer.attribution.replacement import LocalReplacement
from tracer.models.precision import language_model_in_float32, model_precision

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


@contextmanager
def frozen_attention_patterns(adapter, patterns: Sequence[torch.Tensor]):
    """Inside the block every attention layer of the language model uses the given pattern
    (one (H, Q, K) tensor per layer, queries x keys, e.g. `record.layers[l].pattern`) instead of
    computing one: only the value/output path stays live. The vision tower is untouched, so a
    whole-model forward (pixel_values included) may run inside. The sequence (batch 1) must be
    the one the patterns belong to; the attention mask is ignored.
    """
    _register()
    top = adapter.model.config
    configs = adapter.attention_configs()
    saved = [getattr(c, "_attn_implementation", None) for c in configs]
    saved_top = top.__dict__.get("_attn_implementation_internal")
    for i, pattern in enumerate(patterns):
        _patterns[i] = pattern
    try:
        for c in configs:
            c._attn_implementation = _FROZEN_ATTENTION
        # not through the property: its setter would recurse into the vision tower's config
        top.__dict__["_attn_implementation_internal"] = _FROZEN_ATTENTION
        yield
    finally:
        top.__dict__["_attn_implementation_internal"] = saved_top
        for c, value in zip(configs, saved):
            c._attn_implementation = value
        _patterns.clear()


def frozen_norm_hook(scale: torch.Tensor, gain: torch.Tensor, dtype: torch.dtype):
    """A forward hook that turns an RMSNorm into a fixed diagonal scaling:
    out = x * scale[position] * gain, computed in `dtype`, cast back to the output dtype."""
    def hook(module, args, output):
        x = args[0]
        return (x.to(dtype) * scale.to(x.device, dtype)[None, :, None]
                * gain.to(x.device, dtype)).to(output.dtype)
    return hook


@contextmanager
def frozen_norms(adapter, record, dtype: torch.dtype | None = None, final: bool = True):
    """Inside the block every residual-stream norm of the language model (each role the family
    has, and the final norm unless final=False) multiplies by the scale (1/rms) recorded in
    `record` (a ForwardRecord) instead of computing it: each norm becomes a fixed diagonal scaling."""
    from tracer.attribution.record import NORM_SLOTS

    dtype = dtype or record.dtype
    with ExitStack() as stack:
        def freeze(norm, scale):
            hook = frozen_norm_hook(scale, adapter.norm_gain(norm), dtype)
            stack.callback(norm.register_forward_hook(hook).remove)

        for i in range(adapter.n_layers):
            for role, slot in NORM_SLOTS.items():
                norm = adapter.norm(i, role)
                if norm is not None:
                    freeze(norm, getattr(record.layers[i], slot))
        if final:
            freeze(adapter.final_norm, record.s_final)
        yield


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
    pert = perturbation or Perturbation()
    adapter, record = rep.adapter, rep.record
    dtype, device = rep.dtype, adapter.device  # float32 for a half-precision model (see below)
    P = rep.n_positions
    emb = record.embeddings.to(device, dtype).clone()
    for pos, scale in pert.embeddings.items():
        emb[pos] = emb[pos] * scale
    captured: dict = {"mlp_in": [None] * rep.n_layers}

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

    with ExitStack() as stack:
        stack.enter_context(model_precision(adapter))
        stack.enter_context(language_model_in_float32(adapter))
        stack.enter_context(frozen_norms(adapter, record, rep.dtype))
        for i in range(rep.n_layers):
            stack.callback(adapter.mlp(i).register_forward_hook(mlp_replacement(i)).remove)
        # registered after the frozen final norm's hook, so it reads the frozen output
        stack.callback(adapter.final_norm.register_forward_hook(final_hook).remove)
        stack.enter_context(frozen_attention_patterns(adapter, [lr.pattern for lr in record.layers]))
        adapter.language_model(inputs_embeds=emb.unsqueeze(0), use_cache=False)
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
