"""One forward pass of the real model, recording what the local replacement model freezes.

For each layer: the scale (1/rms) of each residual-stream norm at every position (by role, as the
adapter declares them; a role the family lacks records ones), the attention
pattern, the MLP input (`mlp.hook_in`) and raw output (`mlp.hook_out`); plus the embeddings that
enter the first decoder layer (text embeddings as the model scales them, image soft tokens as the
projector made them) and the final norm's scale. With these frozen, the residual stream is a
linear function of the embeddings, the transcoder features and the error terms (docs/design.md §3).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from tracer.models.base import PromptInputs, VLMAdapter
from tracer.models.capture import record_mlps
from tracer.models.precision import language_model_in_float32, model_precision


@dataclass
class LayerRecord:
    s_in: torch.Tensor  # (P,) 1/rms of the input of the norm before attention
    s_post_attn: torch.Tensor  # (P,) the norm after attention (ones if the family has none)
    s_pre_mlp: torch.Tensor  # (P,) the norm before the MLP
    s_post_mlp: torch.Tensor  # (P,) the norm after the MLP (ones if the family has none)
    pattern: torch.Tensor  # (H, P, P) attention pattern, queries x keys
    mlp_in: torch.Tensor  # (P, d)
    mlp_out: torch.Tensor  # (P, d)


@dataclass
class ForwardRecord:
    prompt: PromptInputs
    embeddings: torch.Tensor  # (P, d) what enters layer 0
    layers: list[LayerRecord]
    s_final: torch.Tensor  # (P,)
    final_hidden: torch.Tensor  # (d,) output of the final norm at the last position
    logits: torch.Tensor  # (V,) logits at the last position, compute dtype
    dtype: torch.dtype  # compute dtype of the recorded tensors

    @property
    def n_positions(self) -> int:
        return int(self.embeddings.shape[0])


def rms_scale(x: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """1/sqrt(mean(x^2) + eps) per position, computed in `dtype`."""
    x = x.to(dtype)
    return torch.rsqrt(x.pow(2).mean(-1) + eps)


def compute_dtype_for(model_dtype: torch.dtype) -> torch.dtype:
    """Edges are accumulated in fp32, or fp64 when the model itself runs in fp64; a bf16 / fp16
    model's language model also computes in fp32 here (models.precision.language_model_in_float32)."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


# record slot of each norm role
NORM_SLOTS = {"before_attention": "s_in", "after_attention": "s_post_attn",
              "before_mlp": "s_pre_mlp", "after_mlp": "s_post_mlp"}


@torch.no_grad()
def record_forward(adapter: VLMAdapter, prompt: PromptInputs) -> ForwardRecord:
    model = adapter.model
    dtype = compute_dtype_for(adapter.dtype)
    n_layers = adapter.n_layers
    got: dict = {"layers": [dict() for _ in range(n_layers)]}
    eps = float(adapter.text_config.rms_norm_eps)

    def norm_hook(slot: str, layer: int | None):
        def hook(module, args, output):
            scale = rms_scale(args[0][0], adapter.norm_eps(module, eps), dtype)
            if layer is None:
                got[slot] = scale
                got["final_hidden"] = output[0, -1].to(dtype)
            else:
                got["layers"][layer][slot] = scale
        return hook

    def attn_hook(layer: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) else None
            if weights is None:
                raise RuntimeError("attention weights were not returned: load the model with attn_implementation='eager'")
            got["layers"][layer]["pattern"] = weights[0].to(dtype)
        return hook

    def embed_hook(embeddings):
        got["embeddings"] = embeddings[0].to(dtype)

    with ExitStack() as stack, eager_attention(adapter), language_model_in_float32(adapter):
        def add(handle):
            stack.callback(handle.remove)

        add(adapter.register_embedding_hook(embed_hook))
        for i in range(n_layers):
            for role, slot in NORM_SLOTS.items():
                norm = adapter.norm(i, role)
                if norm is not None:
                    add(norm.register_forward_hook(norm_hook(slot, i)))
            add(adapter.attention(i).register_forward_hook(attn_hook(i)))
        mlps = stack.enter_context(record_mlps(adapter, range(n_layers)))
        add(adapter.final_norm.register_forward_hook(norm_hook("s_final", None)))
        out = model(**adapter.model_inputs(prompt.inputs), use_cache=False, logits_to_keep=1)
    for i in range(n_layers):
        got["layers"][i].update(mlp_in=mlps.inputs[i][0].to(dtype), mlp_out=mlps.outputs[i][0].to(dtype))
    ones = torch.ones(got["embeddings"].shape[0], dtype=dtype, device=got["embeddings"].device)
    layers = [LayerRecord(**{**{slot: ones for slot in NORM_SLOTS.values()}, **d}) for d in got["layers"]]
    return ForwardRecord(
        prompt=prompt, embeddings=got["embeddings"], layers=layers, s_final=got["s_final"],
        final_hidden=got["final_hidden"], logits=out.logits[0, -1].to(dtype), dtype=dtype,
    )


class eager_attention:
    """Run with eager attention (the only implementation that returns patterns), then restore.
    A float64 model also runs its norms and softmaxes in float64 inside (models.precision)."""

    def __init__(self, adapter: VLMAdapter):
        self.configs = list({id(c): c for c in (adapter.model.config, *adapter.attention_configs())}.values())
        self.precision = model_precision(adapter)
        self.saved = []

    def __enter__(self):
        self.saved = [getattr(c, "_attn_implementation", None) for c in self.configs]
        for c in self.configs:
            c._attn_implementation = "eager"
        self.precision.__enter__()
        return self

    def __exit__(self, *exc):
        self.precision.__exit__(*exc)
        for c, value in zip(self.configs, self.saved):
            c._attn_implementation = value
        return False
