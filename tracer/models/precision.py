"""Full-precision norms for float64 exactness checks.

Gemma3RMSNorm computes in float32 (`x.float()`) even when the model runs in float64, so a
float64 run is only float32-exact at every norm (~1e-7 relative). Inside `float64_norms()`
the norm computes in its input's dtype instead, which makes the real model and the local
replacement model agree to float64 precision. Nothing else changes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _rmsnorm_forward_same_dtype(self, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float64:
        return self._tracer_original_forward(x)
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    return out * (1.0 + self.weight.to(x.dtype))


@contextmanager
def float64_norms():
    from transformers.models.gemma3 import modeling_gemma3

    cls = modeling_gemma3.Gemma3RMSNorm
    original = cls.forward
    cls._tracer_original_forward = original
    cls.forward = _rmsnorm_forward_same_dtype
    try:
        yield
    finally:
        cls.forward = original
        del cls._tracer_original_forward
