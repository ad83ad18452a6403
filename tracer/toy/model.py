"""The toy VLM: a real Gemma3ForConditionalGeneration, small, with a local tokenizer and processor.

Nothing here downloads anything. The tokenizer is a word-level `tokenizers` model with the Gemma
special tokens, wrapped in a `PreTrainedTokenizerFast`; the processor is a real `Gemma3Processor`
with `Gemma3ImageProcessorPil` (no torchvision). Saved with `save_pretrained`, the folder loads
with `AutoModelForImageTextToText` / `AutoProcessor` under `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from tracer.toy import world

SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
]
# Like the real instruct model's template (one BOS, image marker inside the user turn).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
EXTRA_WORDS = ["user", "model", "\n", "?", "the", "a", "is", "and", "of"]


@dataclass
class ToyModelSpec:
    """Sizes of the toy VLM (defaults are the shipped model's)."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    vision_hidden: int = 128
    vision_intermediate: int = 256
    vision_layers: int = 3
    vision_heads: int = 4
    patch_size: int = 8
    image_size: int = world.IMAGE_SIZE
    tokens_per_side: int = world.TOKEN_GRID


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = list(dict.fromkeys(SPECIAL_TOKENS + EXTRA_WORDS + world.vocabulary()))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens(SPECIAL_TOKENS)
    # Newlines and '?' are tokens of their own; spaces only separate words.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n|\?"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # words joined by spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "start_of_turn_token": "<start_of_turn>",
            "end_of_turn_token": "<end_of_turn>",
        },
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
    )


def build_processor(spec: ToyModelSpec | None = None, tokenizer: PreTrainedTokenizerFast | None = None) -> Gemma3Processor:
    spec = spec or ToyModelSpec()
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, do_pan_and_scan=False
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_tokenizer(),
        image_seq_length=spec.tokens_per_side**2,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, spec: ToyModelSpec | None = None) -> Gemma3Config:
    spec = spec or ToyModelSpec()
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        query_pre_attn_scalar=spec.head_dim,
        max_position_embeddings=512,
        sliding_window=64,
        # Gemma3 alternates local and global attention; keep both kinds in the toy model.
        layer_types=["sliding_attention" if (i % 2 == 0) else "full_attention" for i in range(spec.num_layers)],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")],
        tie_word_embeddings=True,
    )
    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=spec.tokens_per_side**2,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def build_model(seed: int = 0, spec: ToyModelSpec | None = None) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """A freshly initialised toy VLM and its processor."""
    spec = spec or ToyModelSpec()
    processor = build_processor(spec)
    config = build_config(processor.tokenizer, spec)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # Gemma3 starts the image projection at zero, which blocks every gradient into the vision
    # tower until the projection has grown; a scaled random start trains much faster.
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.mm_input_projection_weight.normal_(0.0, spec.vision_hidden**-0.5)
    return model, processor


def chat_prompt(question: str, with_image: bool) -> str:
    """The instruct-style prompt text (without BOS, which the tokenizer adds)."""
    image = "<start_of_image>" if with_image else ""
    return f"<start_of_turn>user\n{image}{question}<end_of_turn>\n<start_of_turn>model\n"
