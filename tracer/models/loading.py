"""Load a VLM and its processor from a Hugging Face id or a local folder."""

from __future__ import annotations

from pathlib import Path

import torch

from tracer.errors import InputError


def resolve_model_ref(ref: str | Path | None) -> str:
    """None (or "toy") means the shipped toy VLM; anything else is a local folder or a hub id."""
    if ref is None or str(ref) == "toy":
        from tracer.toy.model import default_model_dir

        return str(default_model_dir())
    return str(ref)


class ModelLoadError(InputError):
    """A model reference that names no usable model (no such folder, not on the hub or offline)."""


def _looks_local(ref: str) -> bool:
    """Paths, not hub ids: hub ids are 'name' or 'org/name'."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


# Attention for work that reads no attention pattern (transcoder training and reports, feature
# examples): eager attention materialises every pattern in fp32, 32 GB for a batch of 32
# 896 px images in Gemma3-4B's vision tower.
FAST_ATTENTION = "sdpa"


def load_vlm(ref: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             attn_implementation: str = "eager"):
    """(model, processor) in eval mode. Eager attention by default, so that patterns can be
    recorded (attribution, interventions); FAST_ATTENTION where none is read."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_ref(ref)
    if Path(path).expanduser().exists():
        path = str(Path(path).expanduser())
    elif _looks_local(path):
        raise ModelLoadError(f"{path}: no such folder (and not a Hugging Face model id like 'google/gemma-3-4b-it')")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        processor = AutoProcessor.from_pretrained(path)
    except OSError as err:  # not on the hub, no network, HF_HUB_OFFLINE=1 without a cached copy, no weights
        raise ModelLoadError(f"cannot load model {path!r}: {err}") from err
    model.to(device).eval()
    return model, processor
