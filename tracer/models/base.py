"""What every VLM adapter provides, and prompt preparation shared by all of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from tracer.errors import InputError
from tracer.graph.graph import grid_cells, grids_text, square_side


class PromptError(InputError):
    """A prompt that cannot be run as given (e.g. an image marker without an image)."""


# The residual-stream norms of a decoder layer, by role. A family declares which attribute of its
# decoder layer plays each role; a role it lacks is the identity (Llama-style layers have no norm
# after attention or after the MLP).
NORM_ROLES = ("before_attention", "after_attention", "before_mlp", "after_mlp")


@dataclass(frozen=True)
class Architecture:
    """Where everything the engine needs sits inside one family's Hugging Face model, as data.

    Paths are dotted attribute paths from the HF model (`language_model`, `vision_tower`,
    `projector`, `unembedding`) or from one decoder layer (`norms`, `attention`, `mlp`). The engine
    (record, frozen replacement, backward lanes, verify, steering, attention graphs, training)
    reaches the model only through these; docs/adding_a_family.md lists what each one means.
    """

    family: str
    model_classes: tuple[str, ...]  # HF classes of this family
    model_types: tuple[str, ...]  # config.json "model_type" values
    language_model: str  # the decoder stack: has `layers`, the final norm and the token embedding
    norms: dict  # role (NORM_ROLES) -> attribute of a decoder layer, or None for the identity
    norm_gain: str  # "1+w" (Gemma: x * (1 + weight)) or "w" (Llama, Qwen: x * weight)
    rmsnorm_class: tuple[str, str]  # (transformers module, class) of its RMSNorm, for float64 runs
    eager_attention_modules: tuple[str, ...]  # transformers modules whose eager attention it uses
    layers: str = "layers"
    final_norm: str = "norm"
    embed_tokens: str = "embed_tokens"
    attention: str = "self_attn"
    value_proj: str = "v_proj"  # inside the attention module: W_V (+ bias)
    out_proj: str = "o_proj"  # W_O (+ bias)
    mlp: str = "mlp"
    unembedding: str = "lm_head"
    vision_tower: str | None = None
    projector: str | None = None  # projector / merger: its output is the image soft tokens
    uses_token_type_ids: bool = False  # whether the HF forward takes token_type_ids


class VisionMapsUnavailable(InputError):
    """Vision attention maps are not implemented for this family's vision tower."""


@dataclass
class VisionReadout:
    """How a family's projector reads its vision tower, so attention maps can be drawn in patch
    space: soft token t = sum_n pool[t, n] * tower token n of the hidden state it reads."""

    layers_read: int  # the projector reads the output of the first `layers_read` encoder layers
    from_final: bool  # it reads the tower's final output (post-layernorm), else hidden_states[layers_read]
    pool: torch.Tensor  # (T, N) float64 over the tower's N tokens
    patch_tokens: torch.Tensor  # (rows * cols of patches,) long: tower token of each patch, row-major
    patch_grid: tuple[int, int]  # (rows, cols) of patches
    kernel: int  # patches per soft token along each side
    token_grid: tuple[int, int]  # (rows, cols) of soft tokens, row-major in pool


@dataclass
class VisionTowerStates:
    """One run of the vision tower over images of one grid, in the tower's token order (the
    order `VisionReadout.pool` indexes): attention patterns of the asked layers, (B, heads, N, N),
    and hidden states (B, N, D), hidden[0] the embeddings and hidden[i] the output of layer i - 1."""

    patterns: dict[int, torch.Tensor]
    hidden: dict[int, torch.Tensor]
    final: torch.Tensor  # (B, N, D): the tower's final output


def resolve_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class VLMAdapter:
    """One family's view of a loaded HF model, driven by its `architecture` (data); subclasses
    add what is not data (chat prefix, image grids, processor loading). See gemma3.py."""

    architecture: Architecture

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def family(self) -> str:
        return self.architecture.family

    # -- structure -------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return resolve_path(self.model, self.architecture.language_model)

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.text_config.vocab_size)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.text_config, "num_key_value_heads", None) or self.n_heads)

    def layer(self, index: int) -> nn.Module:
        return resolve_path(self.language_model, self.architecture.layers)[index]

    def attention(self, index: int) -> nn.Module:
        return resolve_path(self.layer(index), self.architecture.attention)

    def mlp(self, index: int) -> nn.Module:
        """The MLP module: its input is the transcoder input (`mlp.hook_in`, after the before-MLP
        norm), its output what the transcoder replaces (`mlp.hook_out`, before any after-MLP norm)."""
        return resolve_path(self.layer(index), self.architecture.mlp)

    def norm(self, index: int, role: str) -> nn.Module | None:
        """The norm of layer `index` that plays `role` (NORM_ROLES), or None (identity)."""
        if role not in NORM_ROLES:
            raise ValueError(f"unknown norm role {role!r}; roles: {NORM_ROLES}")
        name = self.architecture.norms.get(role)
        return None if name is None else resolve_path(self.layer(index), name)

    def norm_gain(self, norm: nn.Module | None) -> torch.Tensor | None:
        """The per-channel gain g of a norm (out = x / rms(x) * g); None for an absent norm."""
        if norm is None:
            return None
        # at least float32: HF norms add 1 + w in float32, and 1 + w rounded to bfloat16 is off by up to 2^-9
        weight = norm.weight.detach()
        weight = weight.to(torch.promote_types(weight.dtype, torch.float32))
        return 1.0 + weight if self.architecture.norm_gain == "1+w" else weight

    @staticmethod
    def norm_eps(norm: nn.Module, default: float = 1e-6) -> float:
        return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", default)))

    @property
    def embed_tokens(self) -> nn.Module:
        return resolve_path(self.language_model, self.architecture.embed_tokens)

    @property
    def final_norm(self) -> nn.Module:
        return resolve_path(self.language_model, self.architecture.final_norm)

    @property
    def unembedding(self) -> torch.Tensor:
        """W_U as (vocab, d_model)."""
        return resolve_path(self.model, self.architecture.unembedding).weight

    @property
    def vision_tower(self) -> nn.Module | None:
        path = self.architecture.vision_tower
        return None if path is None else resolve_path(self.model, path)

    @property
    def projector(self) -> nn.Module | None:
        path = self.architecture.projector
        return None if path is None else resolve_path(self.model, path)

    @property
    def image_token_id(self) -> int | None:
        config = self.model.config
        found = getattr(config, "image_token_id", None)
        if found is None:
            found = getattr(config, "image_token_index", None)
        return None if found is None else int(found)

    @property
    def tokens_per_image(self) -> int:
        """Soft tokens per image when fixed by the config, else 0 (the grid depends on the image)."""
        return 0

    @property
    def final_logit_softcap(self) -> float | None:
        return None

    def embed_scale(self) -> float:
        """Factor the token embedding applies to its table rows (Gemma: sqrt(d_model))."""
        return float(getattr(self.embed_tokens, "embed_scale", 1.0))

    def vision_readout(self, grid: tuple[int, int] | None = None) -> VisionReadout:
        """The projector's view of the tower (tracer.attention.vision) for images whose soft tokens
        form `grid` (rows, cols); families without one refuse in one line."""
        raise VisionMapsUnavailable(f"vision attention maps are not available for {self.family} models yet")

    @torch.no_grad()
    def vision_tower_states(self, pixel_inputs: dict, pattern_layers) -> VisionTowerStates:
        """Run the tower on the processor's image inputs with eager attention, keeping the patterns
        of `pattern_layers` and every layer's hidden state. This default serves ViT towers that
        take a batch of images and return their attention weights (SigLIP, CLIP)."""
        from tracer.models.precision import model_precision

        tower = self.vision_tower
        encoder = getattr(tower, "encoder", None) or getattr(getattr(tower, "vision_model", None), "encoder", None)
        if encoder is None:
            raise VisionMapsUnavailable(f"{type(tower).__name__}: no encoder layers found")
        layers = list(encoder.layers)
        param = next(tower.parameters())
        pixel_values = pixel_inputs["pixel_values"].to(param.device, param.dtype)
        patterns: dict[int, torch.Tensor] = {}
        hidden: dict[int, torch.Tensor] = {}

        def keep_pattern(i):
            def hook(module, args, output):
                weights = output[1] if isinstance(output, tuple) else None
                if weights is None:
                    raise RuntimeError("the vision tower returned no attention weights (eager attention needed)")
                patterns[i] = weights.detach()
            return hook

        def keep_hidden(i):
            def hook(module, args, output):
                hidden[i + 1] = (output[0] if isinstance(output, tuple) else output).detach()
                if i == 0:
                    hidden[0] = args[0].detach()
            return hook

        handles = [layers[i].self_attn.register_forward_hook(keep_pattern(i)) for i in pattern_layers]
        handles += [layer.register_forward_hook(keep_hidden(i)) for i, layer in enumerate(layers)]
        config = tower.config
        saved = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            with model_precision(param.dtype):  # a float64 tower keeps its softmaxes in float64
                out = tower(pixel_values=pixel_values)
        finally:
            config._attn_implementation = saved
            for h in handles:
                h.remove()
        final = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return VisionTowerStates(patterns, hidden, final.detach())

    # -- hooks -----------------------------------------------------------------------------
    def register_embedding_hook(self, fn, prepend: bool = False):
        """Call fn(embeddings (B, P, d)) -> embeddings or None on what enters the first decoder
        layer (text embeddings scaled, image soft tokens in place): where every family's sources
        are, whatever path its forward took to build them. prepend: run before hooks registered
        earlier (for hooks that edit the embeddings). Returns the hook handle."""
        def pre_hook(module, args, kwargs):
            if args:
                out = fn(args[0])
                return None if out is None else ((out, *args[1:]), kwargs)
            out = fn(kwargs["hidden_states"])
            return None if out is None else (args, {**kwargs, "hidden_states": out})
        return self.layer(0).register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=prepend)

    def attention_configs(self) -> list:
        """The configs whose `_attn_implementation` the language model's attention reads (the
        vision tower's are not among them)."""
        found = (self.text_config, self.language_model.config,
                 *(self.attention(i).config for i in range(self.n_layers)))
        return list({id(c): c for c in found}.values())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_inputs(self, inputs: dict) -> dict:
        """Processor outputs on the model's device, pixel values in the model's dtype."""
        out = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        if not self.architecture.uses_token_type_ids:
            out.pop("token_type_ids", None)
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.dtype)
        return out

    # -- prompts ---------------------------------------------------------------------------
    def chat_prefix_length(self, input_ids: list[int], tokenizer) -> int:
        """Leading positions that belong to the chat template, not the user's words (excluded
        from feature nodes): BOS, then the user-turn header the template writes before the
        message, found by rendering the template around a sentinel."""
        n = 1 if input_ids and tokenizer.bos_token_id is not None and input_ids[0] == tokenizer.bos_token_id else 0
        header = chat_header_ids(tokenizer)
        if header and input_ids[n:n + len(header)] == header:
            n += len(header)
        return min(n, len(input_ids))

    @classmethod
    def load_model(cls, path: str, **options):
        """The HF model of this family from a folder or hub id (a VLM class by default)."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(path, **options)

    @classmethod
    def load_processor(cls, path: str, **options):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **options)


def chat_header_ids(tokenizer) -> list[int]:
    """Token ids the tokenizer's chat template writes before a user message (BOS excluded)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return []
    sentinel = "\u2063SENTINEL\u2063"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                             add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain message has no usable header
        return []
    head = text[:text.find(sentinel)] if sentinel in text else ""
    if tokenizer.bos_token and head.startswith(tokenizer.bos_token):
        head = head[len(tokenizer.bos_token):]
    return tokenizer(head, add_special_tokens=False)["input_ids"] if head else []


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
    tokens_per_side: int = 0  # side of a square grid all images share, else 0
    image_grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) of each image's soft tokens
    prefix_length: int = 0  # leading chat-template positions (excluded from feature nodes)
    images: list[Image.Image] = field(default_factory=list)

    @property
    def n_positions(self) -> int:
        return len(self.input_ids)


def end_of_turn_token(tokenizer) -> str:
    """The token that closes a turn in the tokenizer's chat format (Gemma `<end_of_turn>`, Qwen
    `<|im_end|>`), else its EOS."""
    vocab = tokenizer.get_vocab()
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
        if token in vocab:
            return token
    return tokenizer.eos_token or ""


def image_marker(processor) -> str:
    return getattr(processor, "boi_token", None) or getattr(processor, "image_token", None) or "<start_of_image>"


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


def image_grids(adapter, inputs: dict, n_images: int, tokens_per_image: int) -> list[tuple[int, int]]:
    """(rows, cols) of each image's soft-token grid: the adapter's image_grids(inputs, n_images)
    where the family's grid depends on the image, else a square of tokens_per_image tokens."""
    if adapter is not None and hasattr(adapter, "image_grids"):
        return [(int(r), int(c)) for r, c in adapter.image_grids(inputs, n_images)]
    side = math.isqrt(tokens_per_image)
    if side * side != tokens_per_image:
        raise PromptError(f"{tokens_per_image} soft tokens per image is not a square grid, and the adapter "
                          f"does not say the grid (image_grids)")
    return [(side, side)] * n_images


def prepare_prompt(processor, prompt: str, images=None, chat: bool = True, image_token_id: int | None = None,
                   tokens_per_image: int | None = None, adapter=None) -> PromptInputs:
    """Tokenise prompt (+ images) exactly as the model will see it."""
    images = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, not {type(prompt).__name__}")
    if not prompt.strip() and not images:
        raise PromptError("the prompt is empty and there is no image: give a question or text to trace")
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
    grids: list[tuple[int, int]] = []
    if image_token_id is not None and images:
        positions = [i for i, t in enumerate(ids) if t == image_token_id]
    if positions:
        grids = image_grids(adapter, enc, len(images), tokens_per_image or len(positions) // len(images))
        if sum(r * c for r, c in grids) != len(positions):
            raise PromptError(f"the image grids {grids_text(grids)} hold {sum(r * c for r, c in grids)} soft tokens, "
                              f"but the prompt has {len(positions)}")
    prefix = adapter.chat_prefix_length(ids, tokenizer) if adapter is not None else 0
    return PromptInputs(
        inputs=enc, input_ids=ids, tokens=tokens, text=text, image_positions=positions, image_grid=grid_cells(grids),
        tokens_per_side=square_side(grids), image_grids=grids, prefix_length=prefix, images=images,
    )


def get_adapter(model: nn.Module | VLMAdapter) -> VLMAdapter:
    """The adapter for a loaded HF model (an adapter is returned as it is)."""
    from tracer.models.registry import adapter_for_model

    if isinstance(model, VLMAdapter):
        return model
    return adapter_for_model(model)
