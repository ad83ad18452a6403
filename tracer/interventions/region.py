"""Region ablation: replace the image soft tokens of a region and see the answer change.

The soft tokens (what the vision tower + projector hand to the language model at the image
positions) of the chosen cells are replaced before the first layer, either by zeros ("zero") or
by the mean of that image's soft tokens ("mean"). Everything downstream runs normally. This is
the check on a region circuit: if a graph says the answer comes from a region, ablating that
region should move the answer, and ablating an empty region of the same size should not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from tracer.attribution.record import compute_dtype_for, eager_attention
from tracer.interventions.common import (
    NextTokenComparison, as_bundle, image_cell_positions, model_inputs, prompt_inputs, top_tokens,
)
from tracer.models.base import PromptInputs

REGION_MODES = ("zero", "mean")


def region_positions(prompt: PromptInputs, region: Sequence) -> list[int]:
    """Sequence positions of a region given as image cells ((image, row, col) or (row, col)) or as
    sequence positions (ints, which must be image soft-token positions)."""
    region = list(region)
    if not region:
        raise ValueError("the region is empty")
    if isinstance(region[0], (tuple, list)):
        return image_cell_positions(prompt, region)
    positions = [int(p) for p in region]
    image = set(int(p) for p in prompt.image_positions)
    bad = [p for p in positions if p not in image]
    if bad:
        raise ValueError(f"positions {bad} are not image soft tokens of this prompt")
    return positions


@dataclass
class RegionAblationResult(NextTokenComparison):
    """Next-token distribution before / after ablating image soft tokens.

    positions: the ablated sequence positions; cells: their (image, row, col)."""

    mode: str = "zero"
    positions: list[int] = field(default_factory=list)
    cells: list[tuple[int, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update({"mode": self.mode, "positions": self.positions, "cells": [list(c) for c in self.cells]})
        return out


@torch.no_grad()
def ablate_region(session, prompt: str | PromptInputs, image, region: Sequence, mode: str = "zero",
                  top_k: int = 10, *, chat: bool = True) -> RegionAblationResult:
    """Zero- or mean-ablate the image soft tokens of `region` and compare the next token.

    region: image cells (image, row, col) / (row, col), or image soft-token sequence positions.
    mode: "zero" (replace by zeros) or "mean" (by the mean of that image's soft tokens).
    """
    if mode not in REGION_MODES:
        raise ValueError(f"mode must be one of {REGION_MODES}, got {mode!r}")
    bundle = as_bundle(session)
    ad = bundle.adapter
    pi = prompt_inputs(bundle, prompt, image, chat=chat)
    if not pi.image_positions:
        raise ValueError("the prompt has no image")
    positions = region_positions(pi, region)
    cell_of = {int(p): tuple(int(x) for x in g) for p, g in zip(pi.image_positions, pi.image_grid)}
    image_of = {p: c[0] for p, c in cell_of.items()}
    cdt = compute_dtype_for(ad.dtype)

    def replace(emb):
        if emb.shape[1] != pi.n_positions:
            return None
        emb = emb.clone()
        pos = torch.tensor(positions, device=emb.device)
        if mode == "zero":
            emb[:, pos] = 0
        else:
            for img in sorted({image_of[p] for p in positions}):
                own = torch.tensor([p for p, i in image_of.items() if i == img], device=emb.device)
                mine = torch.tensor([p for p in positions if image_of[p] == img], device=emb.device)
                mean = emb[:, own].to(cdt).mean(1, keepdim=True)
                emb[:, mine] = mean.to(emb.dtype).expand(-1, mine.numel(), -1)
        return emb

    inputs = model_inputs(bundle, pi)
    with eager_attention(ad):
        before = ad.model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].to(cdt)
        handle = ad.register_embedding_hook(replace, prepend=True)
        try:
            after = ad.model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].to(cdt)
        finally:
            handle.remove()
    tok = bundle.tokenizer
    return RegionAblationResult(
        prompt=pi, logits_before=before, logits_after=after, top_before=top_tokens(before, tok, top_k),
        top_after=top_tokens(after, tok, top_k), tokenizer=tok, mode=mode, positions=positions,
        cells=[cell_of[p] for p in positions],
    )
