"""Float64 that is float64 all the way: norms and attention softmaxes.

Hugging Face computes two things in float32 even when the model runs in float64: the RMSNorm
(`x.float()`) and the eager attention softmax (`softmax(..., dtype=float32)`), in the language
model and in the vision tower of every supported family (the sites are the families' declared
`rmsnorm_class` and `eager_attention_modules`, tracer.models.registry). A float64 run is then only
float32-exact at every norm and every pattern (~1e-7 relative), and a float64 graph cannot
verify at float64 precision. Inside `float64_compute()` both compute in their input's dtype
when that dtype is float64; float32 / bf16 inputs take the stock code path unchanged, so a
float32 model running in another thread at the same time is unaffected.

The library enters it by itself around every forward pass of a float64 model (`model_precision`,
used by record_forward, frozen_forward and the interventions); callers need not. RoPE's
cos/sin stay float32 as HF computes them: they only shape the patterns, which attribution
records and freezes, so they do not affect any edge, value or sum.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch


def _rmsnorm(original, gain_rule: str):
    """An RMSNorm forward that keeps float64 in float64 (gain 1 + weight or weight); other dtypes
    go to HF's own (bound here, not looked up at call time: a call still in flight when the patch
    is removed works)."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float64:
            return original(self, x)
        eps = getattr(self, "eps", getattr(self, "variance_epsilon", 1e-6))
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        weight = self.weight.to(x.dtype)
        return out * (1.0 + weight if gain_rule == "1+w" else weight)
    return forward


def _eager_attention(original):
    """An eager attention function that keeps float64 in float64 (any head grouping, optional
    Gemma softcap); everything else goes to HF's own function."""
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
        if query.dtype != torch.float64:
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            softcap=softcap, **kwargs)
        if scaling is None:
            scaling = module.head_dim ** -0.5
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = query @ key.transpose(-1, -2) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = torch.softmax(scores, dim=-1)  # in float64
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
        return (weights @ value).transpose(1, 2).contiguous(), weights
    return attention


def _patch_sites():
    """(owner, attribute, key, replacement factory) of everything that downcasts a float64 run."""
    import importlib

    from tracer.models.registry import architectures

    sites, seen = [], set()
    for arch in architectures():
        module_name, class_name = arch.rmsnorm_class
        owner = getattr(importlib.import_module(module_name), class_name)
        if (owner, "forward") not in seen:
            seen.add((owner, "forward"))
            sites.append((owner, "forward", f"{class_name}.forward",
                          lambda original, rule=arch.norm_gain: _rmsnorm(original, rule)))
        for module_name in arch.eager_attention_modules:
            owner = importlib.import_module(module_name)
            if (owner, "eager_attention_forward") not in seen:
                seen.add((owner, "eager_attention_forward"))
                sites.append((owner, "eager_attention_forward", f"{module_name}.eager_attention_forward",
                              _eager_attention))
    return sites


_lock = threading.Lock()
_depth = 0
_originals: dict = {}


@contextmanager
def float64_compute():
    """Norms and attention softmaxes in float64 for float64 inputs while inside (re-entrant and
    thread-safe: the patches stay while any thread is inside)."""
    global _depth
    with _lock:
        if _depth == 0:
            for owner, name, key, make in _patch_sites():
                _originals[key] = getattr(owner, name)
                setattr(owner, name, make(_originals[key]))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for owner, name, key, _ in _patch_sites():
                    setattr(owner, name, _originals.pop(key))


# the name the exactness tests have always used
float64_norms = float64_compute


def model_precision(model_or_dtype):
    """float64_compute() for a float64 model (an nn.Module, an adapter or a dtype), else nothing."""
    dtype = model_or_dtype if isinstance(model_or_dtype, torch.dtype) else getattr(model_or_dtype, "dtype", None)
    if dtype is None:
        dtype = next(model_or_dtype.parameters()).dtype
    return float64_compute() if dtype == torch.float64 else nullcontext()


HALF_DTYPES = (torch.bfloat16, torch.float16)


def _to_float32(value):
    """Floating tensors (inside tuples, lists and dicts too) cast to float32; the rest as it is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


@contextmanager
def language_model_in_float32(adapter):
    """For a bfloat16 / float16 model: its language model computes in float32 with its own
    (half-precision) weights; for other models nothing changes.

    Attribution linearises the forward pass; the transposed map runs in float32, so a forward
    that rounds every activation to bfloat16 cannot be matched by it: on the toy VLM the sum rule
    is off by up to 11% of a feature's value in bfloat16, and by 3e-6 with float32 activations.
    Inside this block each decoder layer, the final norm and the output head cast their weights
    up just for their own forward and take the originals back afterwards (at most one module's
    float32 copy exists at a time, no weight is rounded twice), and their inputs enter in
    float32. The sources (token embeddings, image soft tokens) are the model's own bfloat16
    values; the vision tower is untouched. Not for a model that another thread runs meanwhile.
    """
    if adapter.dtype not in HALF_DTYPES:
        yield
        return
    from tracer.models.base import resolve_path

    head = resolve_path(adapter.model, adapter.architecture.unembedding)
    modules = [adapter.layer(i) for i in range(adapter.n_layers)] + [adapter.final_norm, head]
    saved: dict[int, list] = {}

    def cast_up(module, args, kwargs):
        if id(module) not in saved:  # a module called twice in a row keeps its first originals
            params = [p for p in module.parameters() if p.dtype in HALF_DTYPES]
            saved[id(module)] = [(p, p.data) for p in params]
            for p in params:
                p.data = p.data.float()
        return _to_float32(args), _to_float32(kwargs)

    def restore(module, args, output):
        for p, data in saved.pop(id(module), []):
            p.data = data

    handles = []
    try:
        for m in dict.fromkeys(modules):  # the head may be tied to the embedding, never listed twice
            handles.append(m.register_forward_pre_hook(cast_up, with_kwargs=True, prepend=True))
            handles.append(m.register_forward_hook(restore))
        yield
    finally:
        for h in handles:
            h.remove()
        for pairs in saved.values():  # a forward that raised midway
            for p, data in pairs:
                p.data = data
        saved.clear()
