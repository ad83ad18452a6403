"""Text-only Gemma 3 (`Gemma3ForCausalLM`, model_type gemma3_text, e.g. Gemma 3 270M / 1B).

The same decoder layers as the VLM's language model, so everything but the structure comes
from the Gemma3 adapter: the language model is `model.model`, there is no vision tower and no
image token. The prompt path differs: the base model has no chat template (raw text after
<bos>), the instruction-tuned one uses Gemma's published turn format.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tracer.models.gemma3 import Gemma3Adapter

# Gemma's published turn format, for an instruction-tuned GGUF whose file carries no template:
# each turn is "<start_of_turn>{role}\n{text}<end_of_turn>\n" (role "model" for the assistant), and
# the answer follows "<start_of_turn>model\n". <bos> is added by the tokenizer, not the template.
GEMMA3_CHAT_TEMPLATE = (
    "{% macro text(content) %}{% if content is string %}{{ content | trim }}{% else %}"
    "{% for item in content %}{% if item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}"
    "{% endif %}{% endmacro %}"
    # a system message has no turn of its own: it opens the first user turn
    "{% set system = text(messages[0]['content']) + '\\n\\n' if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ system if loop.first else '' }}{{ text(message['content']) }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _embed_input_ids(module, args, kwargs):
    """The language model gets its token embeddings as `inputs_embeds` (what Gemma3TextModel would
    compute itself from input_ids, scale included): hooks that read or edit the embeddings
    entering the language model (attribution, region ablation, steering) then see them, as they
    do in the VLM, whose outer model always passes inputs_embeds."""
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids, args = args[0], args[1:]
    if ids is not None and kwargs.get("inputs_embeds") is None:
        kwargs["inputs_embeds"] = module.embed_tokens(ids)
        kwargs["input_ids"] = None
    return args, kwargs


@dataclass
class Gemma3TextAdapter(Gemma3Adapter):
    model: nn.Module

    family = "gemma3_text"

    def __post_init__(self):
        lm = self.language_model
        if not getattr(lm, "_tracer_embeds_hook", False):  # once per model, however many adapters
            lm.register_forward_pre_hook(_embed_input_ids, with_kwargs=True)
            lm._tracer_embeds_hook = True

    @property
    def language_model(self) -> nn.Module:
        return self.model.model

    @property
    def text_config(self):
        return self.model.config

    @property
    def image_token_id(self) -> int | None:
        return None

    @property
    def tokens_per_image(self) -> int:
        return 0

    @property
    def final_logit_softcap(self) -> float | None:
        # Gemma3ForCausalLM applies it when the config sets it (Gemma 3's configs leave it None)
        return getattr(self.model.config, "final_logit_softcapping", None)

    def model_inputs(self, inputs: dict) -> dict:
        # token_type_ids only tell the VLM which positions are image tokens
        return super().model_inputs({k: v for k, v in inputs.items() if k != "token_type_ids"})


def matches(model: nn.Module) -> bool:
    return type(model).__name__ == "Gemma3ForCausalLM"


__all__ = ["GEMMA3_CHAT_TEMPLATE", "Gemma3TextAdapter", "matches"]
