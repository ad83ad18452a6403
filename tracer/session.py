"""A model, its processor and its transcoder set, loaded together: the narrow API that the
command line and the app use to trace, verify and intervene."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tracer.errors import InputError
from tracer.models.base import get_adapter
from tracer.models.loading import check_device, hub_offline, load_vlm, resolve_model_ref

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; choose from {', '.join(sorted(DTYPES))}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TracingSession:
    def __init__(self, model: str | Path | None = None, transcoders: str | Path | None = None, *,
                 device: str | None = None, dtype: str | torch.dtype | None = None,
                 lazy_encoder: bool = False, lazy_decoder: bool = True, model_from_file: bool = False,
                 transcoders_from_file: bool = False):
        """*_from_file: that name was read from a file (a graph), not given by the user: it is
        loaded from a local folder or the local Hugging Face cache only, never from the hub."""
        from contextlib import nullcontext

        from tracer.toy.shipped import shipped_model_dir, shipped_transcoders_name
        from tracer.transcoders import load_transcoder_set

        model = None if model in (None, "toy") else model
        if transcoders is None and model is not None:
            transcoders = shipped_transcoders_name(model)  # a shipped toy brings its own set
        transcoders = None if transcoders in (None, "toy-plt") else transcoders
        self.dtype = parse_dtype(dtype)
        self.device = str(check_device(device)) if device else default_device()
        # a shipped toy is recorded by name (graphs stay portable), anything else as resolved
        self.model_ref = "toy" if model is None else str(model) if shipped_model_dir(model) else resolve_model_ref(model)
        self.model, self.processor = load_vlm(model, dtype=self.dtype, device=self.device, local_only=model_from_file)
        self.adapter = get_adapter(self.model)
        # Transcoders compute in the model's precision (float64 runs stay exact).
        tc_dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else None
        with hub_offline() if transcoders_from_file else nullcontext():
            self.transcoders = load_transcoder_set(transcoders, lazy_encoder=lazy_encoder,
                                                   lazy_decoder=lazy_decoder, device=self.device, dtype=tc_dtype,
                                                   model=self.adapter)
        self.transcoders_ref = str(transcoders) if transcoders is not None else "toy-plt"
        mismatch = self.transcoders.model_mismatch(self.model_ref, getattr(self.model.config, "_name_or_path", None))
        self.warnings = [mismatch] if mismatch else []
        for text in self.warnings:
            print(f"warning: {text}", file=sys.stderr)

    @classmethod
    def from_parts(cls, model, processor, transcoders, *, model_ref: str, transcoders_ref: str) -> "TracingSession":
        """A session over objects already in memory (a model you loaded or built yourself).

        model_ref / transcoders_ref are what graphs record as their model and transcoders."""
        self = cls.__new__(cls)
        self.model, self.processor, self.transcoders = model, processor, transcoders
        self.adapter = get_adapter(model)
        transcoders.check_compatible(self.adapter)
        first = next(model.parameters())
        self.device, self.dtype = str(first.device), first.dtype
        self.model_ref, self.transcoders_ref = model_ref, transcoders_ref
        return self

    def attribute(self, prompt: str, image=None, slug: str = "", **settings):
        from tracer.attribution.attribute import AttributionConfig, attribute

        cfg = AttributionConfig(**settings)
        return attribute(self.model, self.processor, self.transcoders, prompt, image, cfg,
                         model_ref=self.model_ref, transcoders_ref=self.transcoders_ref, slug=slug)

    def verify(self, graph, **kwargs):
        from tracer.attribution.verify import verify_graph

        return verify_graph(graph, self.model, self.processor, self.transcoders, **kwargs)
