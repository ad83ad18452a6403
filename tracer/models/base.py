"""What every VLM adapter provides, and prompt preparation shared by all of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from tracer.errors import InputError


class PromptError(InputError):
    """A prompt that cannot be run as given (e.g. an image marker without an image)."""


class VLMAdapter:
    """Interface; see gemma3.py for the reference implementation."""

    model: nn.Module
    family: str = ""

    n_layers: int
    d_model: int
    vocab_size: int

    def layer(self, index: int) -> nn.Module:
        raise NotImplementedError

    def mlp(self, index: int) -> nn.Module:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_inputs(self, inputs: dict) -> dict:
        """Processor outputs on the model's device, pixel values in the model's dtype."""
        out = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out


@dataclass
class PromptInputs:
    """A tokenised prompt, ready for the model, with the positions people care about."""

    inputs: dict[str, torch.Tensor]  # what the HF model's forward takes
    input_ids: list[int]
    tokens: list[str]  # one string per position
    text: str  # the prompt as the model saw it (chat template applied)
    image_positions: list[int] = field(default_factory=list)
    # (image index, row, column) of each image soft token, aligned with image_positions
    image_grid: list[tuple[int, int, int]] = field(default_factory=list)
    tokens_per_side: int = 0
    prefix_length: int = 0  # leading chat-template positions (excluded from feature nodes)
    images: list[Image.Image] = field(default_factory=list)

    @property
    def n_positions(self) -> int:
        return len(self.input_ids)


def image_marker(processor) -> str:
    return getattr(processor, "boi_token", None) or "<start_of_image>"


def format_prompt(processor, prompt: str, n_images: int, chat: bool = True) -> str:
    """Apply the chat template (unless the prompt is already formatted) and make sure there is
    exactly one image marker per image."""
    marker = image_marker(processor)
    n_markers = prompt.count(marker)
    if n_markers > n_images:
        raise PromptError(
            f"the prompt has {n_markers} image marker(s) {marker!r} but {n_images} image(s) were given"
        )
    if n_markers < n_images:
        if n_markers:
            raise PromptError(f"{n_images} images but only {n_markers} image markers {marker!r} in the prompt")
        prompt = marker * n_images + prompt  # the image goes before the question, as in training
    tokenizer = getattr(processor, "tokenizer", processor)
    already = prompt.lstrip().startswith(("<start_of_turn>", tokenizer.bos_token or "\0"))
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    if not chat or already or not template:
        return prompt
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": prompt}]}], add_generation_prompt=True, tokenize=False
    )
    return text


def load_image(image) -> Image.Image:
    """A PIL image (RGB) from a path or an image; raises a clear error for what cannot be decoded."""
    from tracer.images import open_image

    return open_image(image)


def prepare_prompt(processor, prompt: str, images=None, chat: bool = True, image_token_id: int | None = None,
                   tokens_per_image: int | None = None, adapter=None) -> PromptInputs:
    """Tokenise prompt (+ images) exactly as the model will see it."""
    images = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
    images = [load_image(im) for im in images]
    text = format_prompt(processor, prompt, len(images), chat=chat)
    tokenizer = getattr(processor, "tokenizer", processor)
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    if images:
        enc = processor(text=[text], images=[images], return_tensors="pt", add_special_tokens=not has_bos)
    else:
        enc = processor(text=[text], return_tensors="pt", add_special_tokens=not has_bos)
    enc = dict(enc)
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    ids = enc["input_ids"][0].tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    positions: list[int] = []
    grid: list[tuple[int, int, int]] = []
    side = 0
    if image_token_id is not None and images:
        positions = [i for i, t in enumerate(ids) if t == image_token_id]
        per_image = tokens_per_image or (len(positions) // len(images))
        side = int(round(math.sqrt(per_image)))
        for k, pos in enumerate(positions):
            idx, within = divmod(k, per_image)
            grid.append((idx, within // side, within % side))
    prefix = adapter.chat_prefix_length(ids, tokenizer) if adapter is not None else 0
    return PromptInputs(
        inputs=enc, input_ids=ids, tokens=tokens, text=text, image_positions=positions, image_grid=grid,
        tokens_per_side=side, prefix_length=prefix, images=images,
    )


def get_adapter(model: nn.Module | VLMAdapter) -> VLMAdapter:
    """The adapter for a loaded HF model (an adapter is returned as it is)."""
    from tracer.models import gemma3, gemma3_text

    if isinstance(model, VLMAdapter):
        return model
    if gemma3.matches(model):
        return gemma3.Gemma3Adapter(model)
    if gemma3_text.matches(model):
        return gemma3_text.Gemma3TextAdapter(model)
    raise NotImplementedError(
        f"no adapter for {type(model).__name__}; supported: Gemma3ForConditionalGeneration, Gemma3ForCausalLM"
    )
