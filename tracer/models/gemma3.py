"""Gemma3 VLM adapter: where things are inside `Gemma3ForConditionalGeneration`.

Everything model-specific that attribution, interventions and transcoder training need goes
through an adapter, so that another VLM family is one new file in this folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tracer.models.base import PromptInputs, VLMAdapter


@dataclass
class Gemma3Adapter(VLMAdapter):
    model: nn.Module

    family = "gemma3"

    # -- structure -------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    def layer(self, index: int) -> nn.Module:
        return self.language_model.layers[index]

    def mlp(self, index: int) -> nn.Module:
        """The MLP module: its input is `mlp.hook_in` (after pre_feedforward_layernorm), its output
        is `mlp.hook_out` (raw, before post_feedforward_layernorm)."""
        return self.layer(index).mlp

    @property
    def embed_tokens(self) -> nn.Module:
        return self.language_model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def unembedding(self) -> torch.Tensor:
        """W_U as (vocab, d_model)."""
        return self.model.lm_head.weight

    @property
    def image_token_id(self) -> int | None:
        return getattr(self.model.config, "image_token_id", None)

    @property
    def tokens_per_image(self) -> int:
        return int(getattr(self.model.config, "mm_tokens_per_image", 0) or 0)

    @property
    def final_logit_softcap(self) -> float | None:
        # Gemma3ForConditionalGeneration does not apply final_logit_softcapping in transformers 5.
        return None

    def embed_scale(self) -> float:
        return float(self.embed_tokens.embed_scale)

    # -- prompts ---------------------------------------------------------------------------
    def chat_prefix_length(self, input_ids: list[int], tokenizer) -> int:
        """Number of leading positions that belong to the chat template, not to the user's words:
        `<bos><start_of_turn>user\\n` (conventionally excluded from feature nodes)."""
        start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
        n = 0
        if n < len(input_ids) and input_ids[n] == tokenizer.bos_token_id:
            n += 1
        if n < len(input_ids) and input_ids[n] == start:
            n += 1
            # role word(s) up to and including the first newline
            while n < len(input_ids) and tokenizer.convert_ids_to_tokens(input_ids[n]) not in ("\n", "Ċ"):
                n += 1
            n += 1
        return min(n, len(input_ids))


def matches(model: nn.Module) -> bool:
    return type(model).__name__ in ("Gemma3ForConditionalGeneration",)


__all__ = ["Gemma3Adapter", "PromptInputs", "matches"]
