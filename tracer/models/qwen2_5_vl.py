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

from tracer.graph.graph import grids_text
from tracer.models.base import (Architecture, PromptError, VisionMapsUnavailable, VisionReadout, VisionTowerStates,
                                VLMAdapter)

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

# Vision-map runs keep each attention chunk's softmax through one attention function registered
# with transformers under CAPTURE; it appends to the list kept for the calling module, so runs on
# different models (e.g. two explorer jobs) never see each other's patterns.
CAPTURE = "vlm_circuits_capture"
_CAPTURED: dict[int, list] = {}


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    out, weights = qwen.eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kept = _CAPTURED.get(id(module))
    if kept is not None:
        kept.append(weights.detach()[0])  # (heads, L, L) of one window or image
    return out, weights


def _register_capture() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(CAPTURE, _capture_attention)


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
        # 1 marks an image soft token. Without this the model cannot build M-RoPE's (time, row, col)
        # positions and silently falls back to 1-d positions (HF's own processor returns it too).
        pad = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        ids = enc["input_ids"]
        out["mm_token_type_ids"] = (ids == pad).int() if torch.is_tensor(ids) else [[int(i == pad) for i in row]
                                                                                     for row in ids]
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

    # -- vision attention maps -----------------------------------------------------------------
    @property
    def _merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def vision_readout(self, grid: tuple[int, int] | None = None) -> VisionReadout:
        """The merger reads each m x m block of patches (m = spatial_merge_size), which the image
        processor lays out as consecutive tower tokens: soft token t of a (rows, cols) grid is
        made from tower tokens t*m*m .. t*m*m + m*m - 1 of the last block's output (through the
        merger's RMSNorm and MLP, which mix them; the maps weigh them equally)."""
        if grid is None:
            raise VisionMapsUnavailable("Qwen2.5-VL's grid depends on the image: vision_readout needs the grid")
        rows, cols = (int(x) for x in grid)
        m = self._merge
        unit = m * m
        n = rows * cols * unit
        pool = torch.zeros(rows * cols, n, dtype=torch.float64)
        for t in range(rows * cols):
            pool[t, t * unit:(t + 1) * unit] = 1.0 / unit
        # patch (r, c) of the (rows*m, cols*m) patch grid -> its tower token
        r = torch.arange(rows * m)[:, None]
        c = torch.arange(cols * m)[None, :]
        tokens = ((r // m) * cols + c // m) * unit + (r % m) * m + c % m
        depth = int(self.model.config.vision_config.depth)
        return VisionReadout(layers_read=depth, from_final=False, pool=pool, patch_tokens=tokens.flatten(),
                             patch_grid=(rows * m, cols * m), kernel=m, token_grid=(rows, cols))

    @torch.no_grad()
    def vision_tower_states(self, pixel_inputs: dict, pattern_layers) -> VisionTowerStates:
        """The Qwen2.5-VL ViT runs every image in one packed sequence, its tokens reordered into
        windows, attending within a window (most blocks) or within an image (full-attention
        blocks), and its eager attention returns no weights. Patterns are taken from an attention
        function registered for this run (each packed chunk's softmax), laid into one block-diagonal
        matrix per layer, and everything is put back into the processor's token order (the order
        the merger's output is restored to) and split per image."""
        from tracer.models.precision import model_precision

        tower = self.vision_tower
        grid_thw = pixel_inputs.get("image_grid_thw")
        if grid_thw is None:
            raise VisionMapsUnavailable("Qwen2.5-VL vision maps need the processor's image_grid_thw")
        if any(int(t) != 1 for t in grid_thw[:, 0].tolist()):
            raise VisionMapsUnavailable("vision attention maps are for still images (temporal grid 1), not video")
        sizes = [int(t * h * w) for t, h, w in grid_thw.tolist()]
        if len(set(sizes)) != 1 or len({tuple(g) for g in grid_thw[:, 1:].tolist()}) != 1:
            raise VisionMapsUnavailable("vision attention maps need images of one grid; these have "
                                        + grids_text(self.image_grids(pixel_inputs, len(sizes))))
        layers = list(tower.blocks)
        wanted = set(int(i) for i in pattern_layers)
        chunks: dict[int, list[torch.Tensor]] = {i: [] for i in wanted}
        window: dict[str, torch.Tensor] = {}
        hidden: dict[int, torch.Tensor] = {}

        def keep_window_order(original):
            def permute(input_tensor, window_index, seq_len):
                window.setdefault("index", window_index.detach())
                return original(input_tensor, window_index, seq_len=seq_len)
            return permute

        def keep_hidden(i):
            def hook(module, args, output):
                hidden[i + 1] = output.detach()
                if i == 0:
                    hidden[0] = args[0].detach()
            return hook

        _register_capture()
        for i in wanted:
            _CAPTURED[id(layers[i].attn)] = chunks[i]
        handles = [block.register_forward_hook(keep_hidden(i)) for i, block in enumerate(layers)]
        config = tower.config
        saved = config._attn_implementation
        config._attn_implementation = CAPTURE
        tower.permute_input_for_window_attn = keep_window_order(type(tower).permute_input_for_window_attn.__get__(tower))
        param = next(tower.parameters())
        try:
            with model_precision(param.dtype):
                tower(pixel_inputs["pixel_values"].to(param.device, param.dtype), grid_thw=grid_thw.to(param.device))
        finally:
            config._attn_implementation = saved
            del tower.permute_input_for_window_attn
            for i in wanted:
                _CAPTURED.pop(id(layers[i].attn), None)
            for h in handles:
                h.remove()
        unit = self._merge ** 2
        # packed position p holds processor token order[p]
        order = (window["index"][:, None] * unit + torch.arange(unit, device=window["index"].device)).flatten()
        back = torch.argsort(order)  # processor token j sits at packed position back[j]
        B, N = len(sizes), sizes[0]

        def per_image(x):  # (N_total, ...) packed -> (B, N, ...) in processor order
            return x[back].reshape(B, N, *x.shape[1:])

        patterns = {}
        for i in wanted:
            heads = chunks[i][0].shape[0]
            full = torch.zeros(heads, B * N, B * N, dtype=chunks[i][0].dtype, device=chunks[i][0].device)
            start = 0
            for w in chunks[i]:
                length = w.shape[-1]
                full[:, start:start + length, start:start + length] = w
                start += length
            full = full[:, back][:, :, back]
            patterns[i] = torch.stack([full[:, b * N:(b + 1) * N, b * N:(b + 1) * N] for b in range(B)])
        states = {i: per_image(h) for i, h in hidden.items()}
        return VisionTowerStates(patterns, states, states[len(layers)])


__all__ = ["QWEN2_5_VL", "Qwen25VLAdapter", "QwenVLProcessor"]
