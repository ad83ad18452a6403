"""Load a VLM and its processor from a Hugging Face id or a local folder."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_model_ref(ref: str | Path | None) -> str:
    """None (or "toy") means the shipped toy VLM; anything else is a local folder or a hub id."""
    if ref is None or str(ref) == "toy":
        from tracer.toy.model import default_model_dir

        return str(default_model_dir())
    return str(ref)


def load_vlm(ref: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             attn_implementation: str = "eager"):
    """(model, processor) in eval mode. Eager attention so that patterns can be recorded."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_ref(ref)
    if Path(path).expanduser().exists():
        path = str(Path(path).expanduser())
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor
