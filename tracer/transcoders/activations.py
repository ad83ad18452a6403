"""Transcoder activation functions: one module each, used identically everywhere.

Attribution, interventions, feature statistics and training all call these modules, so a
feature is "active" in exactly the same cases in every part of the tool. TopK is part of the
transcoder (it decides which features exist on a token), not an attribution-only step.

- ``ReLU()``: ``max(pre, 0)``.
- ``JumpReLU(threshold)``: ``pre * (pre > threshold)`` with one threshold per feature (the
  GemmaScope / circuit-tracer convention; stored as ``activation_function.threshold``).
- ``TopK(k)``: ReLU, then keep the k largest values of each row and zero the rest. Ties are
  broken exactly as ``torch.topk`` breaks them. A row with fewer than k positive
  pre-activations keeps only its positive ones.

Every module also offers ``sparse(pre) -> (rows, features, values)``: the non-zeros of
``forward(pre)`` for a 2-D ``pre``, without building the dense result where that can be
avoided (TopK).
"""

from __future__ import annotations

import torch
from torch import nn


class Activation(nn.Module):
    """Common interface."""

    kind: str = ""

    def sparse(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Non-zeros of ``self(pre)`` for a 2-D ``pre``: (rows, features, values), row-major."""
        acts = self(pre)
        rows, feats = torch.nonzero(acts, as_tuple=True)
        return rows, feats, acts[rows, feats]

    def config(self) -> dict:
        """What config.yaml says about this activation (beyond tensors stored per layer)."""
        return {}


class ReLU(Activation):
    kind = "relu"

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def extra_repr(self) -> str:
        return ""


class JumpReLU(Activation):
    """``pre * (pre > threshold)``; ``threshold`` has one entry per feature ([d_transcoder])."""

    kind = "jumprelu"

    def __init__(self, threshold: torch.Tensor):
        super().__init__()
        if not isinstance(threshold, torch.Tensor):
            threshold = torch.as_tensor(threshold)
        self.threshold = nn.Parameter(threshold.detach().clone(), requires_grad=False)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        threshold = self.threshold.to(device=pre.device, dtype=pre.dtype)
        return pre * (pre > threshold).to(pre.dtype)

    def extra_repr(self) -> str:
        return f"d_transcoder={self.threshold.shape[-1] if self.threshold.dim() else 1}"


class TopK(Activation):
    """ReLU, then keep the k largest values of each row (ties as torch.topk breaks them)."""

    kind = "topk"

    def __init__(self, k: int):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"TopK needs k >= 1, got {k}")
        self.k = int(k)

    def _topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(self.k, pre.shape[-1])
        return torch.topk(torch.relu(pre), k, dim=-1)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = self._topk(pre)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def sparse(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, indices = self._topk(pre)
        rows = torch.arange(pre.shape[0], device=pre.device).unsqueeze(1).expand_as(indices)
        keep = values != 0
        # row-major order with features ascending inside a row, like torch.nonzero on the dense result
        rows, feats, vals = rows[keep], indices[keep], values[keep]
        order = torch.argsort(rows * pre.shape[-1] + feats)
        return rows[order], feats[order], vals[order]

    def config(self) -> dict:
        return {"top_k": self.k}

    def extra_repr(self) -> str:
        return f"k={self.k}"


__all__ = ["Activation", "JumpReLU", "ReLU", "TopK"]
