"""Tiny random-weight VLMs of every supported family, with the toy world's vocabulary.

Each is a real Hugging Face model class with a real tokenizer (word level, the family's own
special tokens and chat format) and processor, saved with `save_pretrained` so that
`load_vlm(folder)` reads it like any model. They carry no knowledge: they exist to prove that the
engine is exact on every family's architecture (norm layout, projector, grids) and to exercise
the whole pipeline without downloads. The trained toy (tracer/data/toy-vlm) is the Gemma3 one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tracer.toy import world
from tracer.toy.model import ToyModelSpec

TINY_FAMILIES = ("gemma3", "llava", "qwen2_5_vl")
# text 64 wide, 2 layers; vision 32 wide, 2 layers; 64 px images -> 8x8 soft tokens
TINY_SPEC = ToyModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=16, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2)


@dataclass(frozen=True)
class ChatFormat:
    """A family's special tokens and chat template, for the word-level toy tokenizer."""

    special: tuple[str, ...]
    words: tuple[str, ...]  # ordinary words of the template (role names)
    bos: str | None
    eos: str
    pad: str
    template: str
    image_item: str  # what the template writes for an image content item


def _template(user_open: str, user_close: str, generation: str, image_item: str, bos: bool) -> str:
    return (
        ("{{ bos_token }}" if bos else "")
        + "{% for message in messages %}"
        + "{% if message['role'] == 'user' %}" + user_open + "{% else %}" + "{{ message['role'] }}: " + "{% endif %}"
        + "{% if message['content'] is string %}{{ message['content'] | trim }}"
        + "{% else %}{% for item in message['content'] %}"
        + "{% if item['type'] == 'image' %}" + image_item
        + "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
        + "{% endfor %}{% endif %}"
        + user_close
        + "{% endfor %}"
        + "{% if add_generation_prompt %}" + generation + "{% endif %}"
    )


LLAVA_CHAT = ChatFormat(
    special=("<pad>", "<s>", "</s>", "<unk>", "<image>"), words=("USER:", "ASSISTANT:"),
    bos="<s>", eos="</s>", pad="<pad>",
    template=_template("USER: ", " ", "ASSISTANT: ", "<image>\n", bos=True), image_item="<image>\n",
)
QWEN_CHAT = ChatFormat(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>", "<unk>"),
    words=("user", "assistant", "system"), bos=None, eos="<|im_end|>", pad="<|endoftext|>",
    template=_template("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n",
                       "<|vision_start|><|image_pad|><|vision_end|>", bos=False),
    image_item="<|vision_start|><|image_pad|><|vision_end|>",
)


def build_word_tokenizer(chat: ChatFormat) -> PreTrainedTokenizerFast:
    """The toy world's words with a family's special tokens and chat template."""
    from tracer.toy.model import EXTRA_WORDS

    words = list(dict.fromkeys(list(chat.special) + list(chat.words) + EXTRA_WORDS + world.vocabulary()))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens(list(chat.special))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n|\?"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
    ])
    if chat.bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{chat.bos} $A", pair=f"{chat.bos} $A $B", special_tokens=[(chat.bos, vocab[chat.bos])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=chat.bos, eos_token=chat.eos, pad_token=chat.pad, unk_token="<unk>",
        chat_template=chat.template, padding_side="right",
    )


def build_llava(seed: int = 0, spec: ToyModelSpec | None = None, vision_tower: str = "clip"):
    """(LlavaForConditionalGeneration, LlavaProcessor) of the given sizes: a Llama decoder and a
    vision tower reading 64 px images at spec.patch_size (8: an 8x8 grid of 64 soft tokens).

    vision_tower "clip": a CLIP tower read at its second-to-last layer with the CLS token dropped
    (LLaVA-1.5's layout). "siglip": a SigLIP tower (no CLS token) read at its last layer with every
    token kept (the layout of the SigLIP-based LLaVA models), the tower the Gemma3 toy trained, so
    that a LLaVA toy can start from it (`toy train --family llava --init-vision-from`)."""
    from transformers import (CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              SiglipImageProcessorPil)

    if vision_tower not in ("clip", "siglip"):
        raise ValueError(f"unknown LLaVA vision tower {vision_tower!r}; choose clip or siglip")
    spec = spec or TINY_SPEC
    siglip = vision_tower == "siglip"
    tok = build_word_tokenizer(LLAVA_CHAT)
    side = spec.image_size
    if siglip:
        image_processor = SiglipImageProcessorPil(size={"height": side, "width": side})
    else:
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    strategy = "full" if siglip else "default"
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=spec.patch_size,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=0 if siglip else 1,
                               image_token="<image>", chat_template=LLAVA_CHAT.template)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                  image_size=spec.image_size, patch_size=spec.patch_size)
    if siglip:
        vision.update(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                      vision_use_head=False)
    else:
        vision.update(model_type="clip_vision_model")
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                         num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                         head_dim=spec.head_dim, max_position_embeddings=512, rms_norm_eps=1e-6, **ids),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1 if siglip else -2,
        vision_feature_select_strategy=strategy, tie_word_embeddings=False, **ids,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor


def build_qwen2_5_vl(seed: int = 0, spec: ToyModelSpec | None = None):
    """(Qwen2_5_VLForConditionalGeneration, QwenVLProcessor) of the given sizes: a Qwen2 decoder
    with M-RoPE and a windowed ViT (one windowed block, then full attention) at patch
    spec.patch_size // 2 with a 2x2 merger: a 64 px image gives the same 8x8 grid of soft tokens as
    the other families, a 96x64 image an 8x12 grid."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tracer.models.qwen2_5_vl import QwenVLProcessor

    spec = spec or TINY_SPEC
    tok = build_word_tokenizer(QWEN_CHAT)
    merge = 2
    patch = spec.patch_size // merge
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        min_pixels=32 * 32, max_pixels=128 * 128, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})
    processor = QwenVLProcessor(image_processor, tok)
    tid = tok.convert_tokens_to_ids
    quarter = spec.head_dim // 2
    section = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]  # temporal, height, width: sums to head_dim/2
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                         num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                         num_key_value_heads=spec.num_kv_heads, max_position_embeddings=512, rms_norm_eps=1e-6,
                         # theta 100, not Qwen's 1e6: with head_dim 32 the row and column sections get the
                         # lowest frequencies, which at 1e6 barely turn over an 8x8 grid
                         rope_scaling={"type": "mrope", "mrope_section": section}, rope_theta=100.0,
                         bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden,
                           intermediate_size=spec.vision_intermediate, num_heads=spec.vision_heads,
                           out_hidden_size=spec.hidden_size, patch_size=patch, spatial_merge_size=merge,
                           temporal_patch_size=2, window_size=patch * merge * 2,
                           fullatt_block_indexes=list(range(1, spec.vision_layers))),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def build_gemma3(seed: int = 0, spec: ToyModelSpec | None = None):
    """The toy Gemma3 architecture (tracer.toy.model) at the given sizes."""
    from tracer.toy.model import build_model

    return build_model(seed=seed, spec=spec or TINY_SPEC)


BUILDERS = {"gemma3": build_gemma3, "llava": build_llava, "qwen2_5_vl": build_qwen2_5_vl}


def build_family_model(family: str, seed: int = 0, spec: ToyModelSpec | None = None, **options):
    """(model, processor): a freshly initialised VLM of `family` (TINY_SPEC sizes by default);
    options go to the family's builder (LLaVA: vision_tower)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    return BUILDERS[family](seed, spec, **options)


def _spread_norm_weights(model, seed: int) -> None:
    """Random norm gains (HF starts them at 1 or 0): a wrong gain rule must show in the tests."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
                module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=gen))


def write_tiny_model(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny random model of `family` (random norm gains too) and save it (model +
    processor) to `folder`."""
    model, processor = build_family_model(family, seed)
    _spread_norm_weights(model, seed)
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

