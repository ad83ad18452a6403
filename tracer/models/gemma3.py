"""Gemma3 (`Gemma3ForConditionalGeneration`): SigLIP tower, pooled projector, Gemma3 decoder with
four norms per layer whose gain is 1 + weight, and token embeddings scaled by sqrt(d_model)."""

from __future__ import annotations

import numpy as np
import torch

from tracer.models.base import Architecture, VisionReadout, VLMAdapter

GEMMA3 = Architecture(
    family="gemma3",
    model_classes=("Gemma3ForConditionalGeneration",),
    model_types=("gemma3",),
    language_model="model.language_model",
    norms={"before_attention": "input_layernorm", "after_attention": "post_attention_layernorm",
           "before_mlp": "pre_feedforward_layernorm", "after_mlp": "post_feedforward_layernorm"},
    norm_gain="1+w",
    rmsnorm_class=("transformers.models.gemma3.modeling_gemma3", "Gemma3RMSNorm"),
    eager_attention_modules=("transformers.models.gemma3.modeling_gemma3", "transformers.models.siglip.modeling_siglip"),
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
    uses_token_type_ids=True,
)


class Gemma3Adapter(VLMAdapter):
    architecture = GEMMA3

    @property
    def tokens_per_image(self) -> int:
        return int(getattr(self.model.config, "mm_tokens_per_image", 0) or 0)

    @property
    def final_logit_softcap(self) -> float | None:
        # Gemma3ForConditionalGeneration does not apply final_logit_softcapping in transformers 5.
        return None

    def vision_readout(self, grid: tuple[int, int] | None = None) -> VisionReadout:
        """The projector average-pools the final (post-layernorm) P x P patch grid k x k -> side x side."""
        projector = self.projector
        P, k, side = int(projector.patches_per_image), int(projector.kernel_size), int(projector.tokens_per_side)
        return VisionReadout(layers_read=int(self.model.config.vision_config.num_hidden_layers), from_final=True,
                             pool=_pooling_matrix(P, k, side), patch_tokens=torch.arange(P * P),
                             patch_grid=(P, P), kernel=k, token_grid=(side, side))

    def chat_prefix_length(self, input_ids: list[int], tokenizer) -> int:
        """`<bos><start_of_turn>user\\n` (conventionally excluded from feature nodes)."""
        start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
        n = 0
        if n < len(input_ids) and input_ids[n] == tokenizer.bos_token_id:
            n += 1
        if n < len(input_ids) and input_ids[n] == start:
            n += 1
            # role word(s) up to and including the first newline
            while n < len(input_ids) and tokenizer.convert_ids_to_tokens(input_ids[n]) not in ("\n", "Ċ"):
                n += 1
            n += 1
        return min(n, len(input_ids))


def _pooling_matrix(P: int, k: int, side: int) -> torch.Tensor:
    """(side*side, P*P) float64: row t averages the k x k patches of soft token t (AvgPool2d(k, k))."""
    token = (np.arange(P)[:, None] // k) * side + (np.arange(P)[None, :] // k)  # soft token of each patch
    token[(np.arange(P) >= side * k)[:, None] | (np.arange(P) >= side * k)[None, :]] = -1  # pooling drops a remainder
    M = np.zeros((side * side, P * P))
    flat = token.ravel()
    inside = flat >= 0
    M[flat[inside], np.flatnonzero(inside)] = 1.0 / (k * k)
    return torch.from_numpy(M)


__all__ = ["GEMMA3", "Gemma3Adapter"]
