"""Model adapters: one file per VLM family over the Hugging Face modules."""

from tracer.models.base import PromptError, PromptInputs, VLMAdapter, get_adapter, prepare_prompt
from tracer.models.loading import load_vlm

__all__ = ["PromptError", "PromptInputs", "VLMAdapter", "get_adapter", "load_vlm", "prepare_prompt"]
