"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): a windowed-attention ViT whose merger folds
each 2x2 block of patches into one soft token, dynamic resolution (the grid of soft tokens depends
on the image), M-RoPE, and a Qwen2 decoder (norms before attention and before the MLP, gain =
weight, biases on q/k/v).

M-RoPE only shapes the attention patterns, which attribution records and freezes, so the frozen
language model may run on default positions. transformers' `Qwen2_5_VLProcessor` needs
torchvision (its video half); `QwenVLProcessor` below does the image half with the PIL image
processor: it expands each image marker into `<|vision_start|>` + one `<|image_pad|>` per soft
token + `<|vision_end|>`, as the official processor does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tracer.models.base import Architecture, PromptError, VLMAdapter

QWEN2_5_VL = Architecture(
    family="qwen2_5_vl",
    model_classes=("Qwen2_5_VLForConditionalGeneration",),
    model_types=("qwen2_5_vl",),
    language_model="model.language_model",
    norms={"before_attention": "input_layernorm", "after_attention": None,
           "before_mlp": "post_attention_layernorm", "after_mlp": None},
    norm_gain="w",
    rmsnorm_class=("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLRMSNorm"),
    eager_attention_modules=("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",),
    vision_tower="model.visual",
    projector="model.visual.merger",
)

VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
PROCESSOR_FILE = "vlm_circuits_processor.json"


class QwenVLProcessor:
    """Tokenizer + `Qwen2VLImageProcessorPil`, expanding image markers to the soft tokens."""

    boi_token = VISION_START  # the marker a prompt carries per image (image_marker reads it)
    image_token = IMAGE_PAD

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)

    @property
    def merge_size(self) -> int:
        return int(getattr(self.image_processor, "merge_size", 2))

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, text, images=None, return_tensors="pt", add_special_tokens=True, padding=False, **kwargs):
        """Like the HF processor: texts (one or a batch) with their images (a list per text, or a
        flat list), each marker expanded to that image's soft tokens."""
        texts = [text] if isinstance(text, str) else list(text)
        flat = [im for group in (images or []) for im in (group if isinstance(group, (list, tuple)) else [group])]
        texts = [t.replace(VISION_START + IMAGE_PAD + VISION_END, VISION_START) for t in texts]
        n_markers = sum(t.count(VISION_START) for t in texts)
        if n_markers != len(flat):
            raise PromptError(f"{len(flat)} image(s) but {n_markers} image marker(s) {VISION_START!r}")
        out = {}
        if flat:
            pixels = self.image_processor(images=flat, return_tensors="pt")
            grid = pixels["image_grid_thw"]
            counts = iter(int(torch.prod(g)) // self.merge_size ** 2 for g in grid)
            expanded = []
            for t in texts:
                parts = t.split(VISION_START)
                expanded.append(parts[0] + "".join(VISION_START + IMAGE_PAD * next(counts) + VISION_END + rest
                                                   for rest in parts[1:]))
            texts = expanded
            out.update(pixel_values=pixels["pixel_values"], image_grid_thw=grid)
        enc = self.tokenizer(texts, return_tensors=return_tensors, add_special_tokens=add_special_tokens,
                             padding=padding)
        out.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        (Path(folder) / PROCESSOR_FILE).write_text(json.dumps({"processor": "QwenVLProcessor"}))

    @classmethod
    def from_pretrained(cls, folder, **options) -> "QwenVLProcessor":
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(folder, **options)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, **options)
        return cls(image_processor, tokenizer)


class Qwen25VLAdapter(VLMAdapter):
    architecture = QWEN2_5_VL

    def image_grids(self, inputs: dict, n_images: int) -> list[tuple[int, int]]:
        """(rows, cols) of soft tokens of each image: the patch grid of `image_grid_thw`, merged."""
        merge = int(self.model.config.vision_config.spatial_merge_size)
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return []
        return [(int(h) // merge, int(w) // merge) for _, h, w in grid.tolist()][:n_images]

    @classmethod
    def load_processor(cls, path: str, **options):
        return QwenVLProcessor.from_pretrained(path, **options)


__all__ = ["QWEN2_5_VL", "Qwen25VLAdapter", "QwenVLProcessor"]
