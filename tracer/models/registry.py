"""Which adapter serves which model: one adapter class per family, picked from the HF class of a
loaded model or from the `model_type` of a config before anything is loaded."""

from __future__ import annotations

from torch import nn

from tracer.errors import InputError
from tracer.models.base import VLMAdapter
from tracer.models.gemma3 import Gemma3Adapter
from tracer.models.gemma3_text import Gemma3TextAdapter
from tracer.models.llava import LlavaAdapter
from tracer.models.qwen2_5_vl import Qwen25VLAdapter

ADAPTERS: tuple[type[VLMAdapter], ...] = (Gemma3Adapter, Gemma3TextAdapter, LlavaAdapter, Qwen25VLAdapter)


class UnsupportedModelError(InputError, NotImplementedError):
    """A model of a family no adapter serves."""


def supported_families() -> str:
    return ", ".join(f"{a.architecture.family} ({'/'.join(a.architecture.model_classes)})" for a in ADAPTERS)


def adapter_class_for_config(config: dict) -> type[VLMAdapter]:
    """The adapter class for a config.json (as a dict), or a one-line UnsupportedModelError."""
    model_type = config.get("model_type")
    classes = config.get("architectures") or []
    for adapter in ADAPTERS:
        arch = adapter.architecture
        if model_type in arch.model_types or any(c in arch.model_classes for c in classes):
            return adapter
    what = model_type or (classes[0] if classes else "no model_type")
    raise UnsupportedModelError(f"unsupported model family {what!r}; supported: {supported_families()}")


def adapter_for_model(model: nn.Module) -> VLMAdapter:
    name = type(model).__name__
    for adapter in ADAPTERS:
        if name in adapter.architecture.model_classes:
            return adapter(model)
    raise UnsupportedModelError(f"no adapter for {name}; supported: {supported_families()}")


def architectures():
    return [a.architecture for a in ADAPTERS]
