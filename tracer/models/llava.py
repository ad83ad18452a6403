"""LLaVA (`LlavaForConditionalGeneration`): a CLIP-style vision tower, an MLP projector (one soft
token per patch, the CLS token dropped) and a Llama-style decoder: a norm before attention and one
before the MLP, gain = weight, unscaled token embeddings."""

from __future__ import annotations

from tracer.models.base import Architecture, VLMAdapter

LLAVA = Architecture(
    family="llava",
    model_classes=("LlavaForConditionalGeneration",),
    model_types=("llava",),
    language_model="model.language_model",
    norms={"before_attention": "input_layernorm", "after_attention": None,
           "before_mlp": "post_attention_layernorm", "after_mlp": None},
    norm_gain="w",
    rmsnorm_class=("transformers.models.llama.modeling_llama", "LlamaRMSNorm"),
    eager_attention_modules=("transformers.models.llama.modeling_llama", "transformers.models.clip.modeling_clip"),
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
)


class LlavaAdapter(VLMAdapter):
    architecture = LLAVA

    @property
    def tokens_per_image(self) -> int:
        vision = self.model.config.vision_config
        per_side = int(vision.image_size) // int(vision.patch_size)
        extra = 1 if getattr(self.model.config, "vision_feature_select_strategy", "default") == "full" else 0
        return per_side * per_side + extra


__all__ = ["LLAVA", "LlavaAdapter"]
