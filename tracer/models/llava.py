"""LLaVA (`LlavaForConditionalGeneration`): a CLIP or SigLIP vision tower, an MLP projector (one
soft token per patch; a CLIP tower's CLS token dropped) and a Llama-style decoder: a norm before attention and one
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
    eager_attention_modules=("transformers.models.llama.modeling_llama", "transformers.models.clip.modeling_clip",
                             "transformers.models.siglip.modeling_siglip"),
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
)


class LlavaAdapter(VLMAdapter):
    architecture = LLAVA

    def _tower_layout(self) -> tuple[int, int]:
        """(patches per side, tokens the tower puts before the patches): CLIP towers lead with a
        CLS token, SigLIP towers have none."""
        vision = self.model.config.vision_config
        leading = 0 if getattr(vision, "model_type", "") == "siglip_vision_model" else 1
        return int(vision.image_size) // int(vision.patch_size), leading

    @property
    def tokens_per_image(self) -> int:
        # HF's "default" strategy drops the first token (the CLS of a CLIP tower); "full" keeps all
        P, leading = self._tower_layout()
        strategy = getattr(self.model.config, "vision_feature_select_strategy", "default")
        return P * P + leading - (1 if strategy == "default" else 0)

    def vision_readout(self, grid: tuple[int, int] | None = None) -> VisionReadout:
        """One soft token per patch, read from hidden_states[vision_feature_layer]: every tower
        token but the CLS one (CLIP with the "default" strategy), or every token (a SigLIP tower
        with "full")."""
        config = self.model.config
        P, leading = self._tower_layout()
        if self.tokens_per_image != P * P:
            raise VisionMapsUnavailable("vision attention maps need one soft token per patch (a CLIP tower with "
                                        "vision_feature_select_strategy 'default', or a SigLIP tower with 'full')")
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise VisionMapsUnavailable("vision attention maps need a single vision_feature_layer")
        n_layers = int(config.vision_config.num_hidden_layers)
        n_tokens = P * P + leading
        pool = torch.zeros(P * P, n_tokens, dtype=torch.float64)
        pool[torch.arange(P * P), torch.arange(leading, n_tokens)] = 1.0
        return VisionReadout(layers_read=layer % (n_layers + 1), from_final=False, pool=pool,
                             patch_tokens=torch.arange(leading, n_tokens), patch_grid=(P, P), kernel=1,
                             token_grid=(P, P))


__all__ = ["LLAVA", "LlavaAdapter"]
