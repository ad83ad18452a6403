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

TINY_FAMILIES = ("gemma3", "llava", "qwen2_5_vl")


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
    template=_template("USER: ", " ", "ASSISTANT:", "<image>\n", bos=True), image_item="<image>\n",
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


def build_tiny_llava(seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor): Llama decoder 64 wide, 2 layers; CLIP
    tower 32 wide, 2 layers, 64 px images at patch 8 -> an 8x8 grid of 64 soft tokens."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = build_word_tokenizer(LLAVA_CHAT)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": world.IMAGE_SIZE},
                                            crop_size={"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>", chat_template=LLAVA_CHAT.template)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6, **ids),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=world.IMAGE_SIZE, patch_size=8),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False, **ids,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _spread_norm_weights(model, seed)
    return model.eval(), processor


def build_tiny_qwen2_5_vl(seed: int = 0):
    """(Qwen2_5_VLForConditionalGeneration, QwenVLProcessor): Qwen2 decoder 64 wide, 2 layers,
    M-RoPE; windowed ViT 32 wide, 2 blocks (one windowed, one full), patch 4, 2x2 merger: a 64 px
    image gives an 8x8 grid of 64 soft tokens, a 64x96 image an 8x12 grid."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tracer.models.qwen2_5_vl import QwenVLProcessor

    tok = build_word_tokenizer(QWEN_CHAT)
    patch, merge = 4, 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        min_pixels=32 * 32, max_pixels=128 * 128, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})
    processor = QwenVLProcessor(image_processor, tok)
    tid = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2,
                           window_size=patch * merge * 2, fullatt_block_indexes=[1]),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _spread_norm_weights(model, seed)
    return model.eval(), processor


def build_tiny_gemma3(seed: int = 0):
    """The toy Gemma3 architecture at half size with random weights."""
    from tracer.toy.model import ToyModelSpec, build_model

    spec = ToyModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2)
    model, processor = build_model(seed=seed, spec=spec)
    _spread_norm_weights(model, seed)
    return model.eval(), processor


BUILDERS = {"gemma3": build_tiny_gemma3, "llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl}


def _spread_norm_weights(model, seed: int) -> None:
    """Random norm gains (HF starts them at 1 or 0): a wrong gain rule must show in the tests."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
                module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=gen))


def write_tiny_model(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny random model of `family` and save it (model + processor) to `folder`."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    model, processor = BUILDERS[family](seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

