"""LLaVA (`LlavaForConditionalGeneration`): a CLIP-style vision tower, an MLP projector (one soft
token per patch, the CLS token dropped) and a Llama-style decoder: a norm before attention and one
before the MLP, gain = weight, unscaled token embeddings."""

from __future__ import annotations

import torch

from tracer.models.base import Architecture, VisionMapsUnavailable, VisionReadout, VLMAdapter

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


    def vision_readout(self) -> VisionReadout:
        """One soft token per patch, read from hidden_states[vision_feature_layer] (CLS dropped)."""
        config = self.model.config
        if getattr(config, "vision_feature_select_strategy", "default") != "default":
            raise VisionMapsUnavailable("vision attention maps need vision_feature_select_strategy 'default'")
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise VisionMapsUnavailable("vision attention maps need a single vision_feature_layer")
        n_layers = int(config.vision_config.num_hidden_layers)
        P = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        n_tokens = P * P + 1  # CLS first
        pool = torch.zeros(P * P, n_tokens, dtype=torch.float64)
        pool[torch.arange(P * P), torch.arange(1, n_tokens)] = 1.0
        return VisionReadout(layers_read=layer % (n_layers + 1), from_final=False, pool=pool,
                             patch_tokens=torch.arange(1, n_tokens), patches_per_side=P, kernel=1,
                             tokens_per_side=P)


__all__ = ["LLAVA", "LlavaAdapter"]
