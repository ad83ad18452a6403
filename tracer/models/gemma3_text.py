"""Text-only Gemma 3 (`Gemma3ForCausalLM`, model_type gemma3_text, e.g. Gemma 3 270M / 1B).

The same decoder layers as the VLM's language model, so its architecture is Gemma3's with the
language model at `model.model` and no vision path; the HF class is a causal LM whose tokenizer
stands in the processor's slot. The prompt path differs: the base model has no chat template
(raw text after <bos>), the instruction-tuned one uses Gemma's published turn format.
"""

from __future__ import annotations

from dataclasses import replace

from tracer.models.base import VLMAdapter
from tracer.models.gemma3 import GEMMA3, Gemma3Adapter

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


GEMMA3_TEXT = replace(
    GEMMA3, family="gemma3_text", model_classes=("Gemma3ForCausalLM",), model_types=("gemma3_text",),
    language_model="model", vision_tower=None, projector=None, uses_token_type_ids=False,
)


class Gemma3TextAdapter(Gemma3Adapter):
    architecture = GEMMA3_TEXT
    vision_readout = VLMAdapter.vision_readout  # no vision tower

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

    @classmethod
    def load_model(cls, path: str, **options):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, **options)

    @classmethod
    def load_processor(cls, path: str, **options):
        """The tokenizer stands in the processor's slot (a text model has no image processor)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, **options)


__all__ = ["GEMMA3_CHAT_TEMPLATE", "GEMMA3_TEXT", "Gemma3TextAdapter"]
