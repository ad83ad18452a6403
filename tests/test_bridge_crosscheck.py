"""Independent cross-check of what `record_forward` records, against transformer-lens'
TransformerBridge (which wraps Gemma3ForConditionalGeneration with its own hook points).

The toy VLM runs in float64 on one image + text prompt (the exact tensors `prepare_prompt`
gives), once through our recorder and once through the bridge (`run_with_cache`, on a deep copy
of the model, since the bridge swaps its own components into the HF module tree). Compared:

    our ForwardRecord field            bridge hook
    ---------------------------------  ---------------------------------------------------------
    embeddings[text positions]         embed.hook_out (text embeddings, scaled by sqrt(d_model))
    embeddings[image positions]        vision_projector.hook_out (image soft tokens, not scaled)
    embeddings                         blocks.0.hook_resid_pre
    layers[l].pattern                  blocks.l.attn.hook_pattern (the bridge recomputes attention)
    layers[l].mlp_in                   blocks.l.mlp.hook_in  (== blocks.l.ln2.hook_out)
    layers[l].mlp_out                  blocks.l.mlp.hook_out (== blocks.l.ln2_post.hook_in; the
                                       bridge's blocks.l.hook_mlp_out is AFTER the post norm)
    layers[l].s_in / s_post_attn /     1 / blocks.l.{ln1, ln1_post, ln2, ln2_post}.hook_scale
      s_pre_mlp / s_post_mlp           (hook_scale = sqrt(mean(x^2) + eps), from the norm's input)
    s_final                            1 / ln_final.hook_scale
    final_hidden                       ln_final.hook_out[-1]
    logits                             bridge logits[-1]

Both sides run with norms and softmaxes in float64 (`float64_norms()`, and the bridge's own
softmax, float32 like HF's, made float64 too): stock HF computes
Gemma3RMSNorm and the eager softmax in float32 even in a float64 run, and our recorder switches
a float64 model to float64 by itself (tracer.models.precision; that stock HF downcasts is
tested in tests/test_float64_cli.py). The recorded scales are the float64 1/rms of the norm's
input, and the norms apply exactly those (like with like).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("transformer_lens")

from tracer.attribution.record import record_forward  # noqa: E402
from tracer.models.base import get_adapter, prepare_prompt  # noqa: E402
from tracer.models.loading import load_vlm, resolve_model_ref  # noqa: E402
from tracer.models.precision import float64_norms  # noqa: E402
from tracer.toy import world  # noqa: E402

NORMS = {"s_in": "ln1", "s_post_attn": "ln1_post", "s_pre_mlp": "ln2", "s_post_mlp": "ln2_post"}
HF_NORMS = {"ln1": "input_layernorm", "ln1_post": "post_attention_layernorm",
            "ln2": "pre_feedforward_layernorm", "ln2_post": "post_feedforward_layernorm"}


def assert_tight(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = 1e-13):
    """float64 on both sides; tol is relative to the largest |expected| (at least 1)."""
    assert actual.dtype == torch.float64 and expected.dtype == torch.float64, what
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    bound = tol * max(1.0, expected.abs().max().item())
    assert err <= bound, f"{what}: max |diff| {err:.3e} > {bound:.3e}"


def boot_bridge(model, processor):
    """TransformerBridge around a copy of our loaded float64 model. The processor and tokenizer are
    ours: transformer-lens must not load its own (a failing AutoProcessor load makes it pip-install
    torchvision, which would replace the CPU torch here)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers, source

    def attach_processor(bridge, *args, **kwargs):
        bridge.processor = processor

    def refuse_torchvision():
        raise AssertionError("transformer-lens tried to install torchvision")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source, "load_modality_processor", attach_processor)
        mp.setattr(helpers, "_ensure_torchvision", refuse_torchvision)
        bridge = TransformerBridge.boot_transformers(
            resolve_model_ref(None), hf_model=copy.deepcopy(model), tokenizer=copy.deepcopy(processor.tokenizer),
            dtype=torch.float64, device="cpu",
        )
    assert type(bridge.adapter).__name__ == "Gemma3MultimodalArchitectureAdapter"
    assert bridge.processor is processor
    return bridge


@pytest.fixture(scope="module")
def toy_bridge():
    model, processor = load_vlm(None, dtype=torch.float64)
    adapter = get_adapter(model)
    ex = world.make_example("heldout", 3, question_type="color")
    prompt = prepare_prompt(processor, ex.question, ex.image(), image_token_id=adapter.image_token_id,
                            tokens_per_image=adapter.tokens_per_image, adapter=adapter)
    assert len(prompt.image_positions) == adapter.tokens_per_image == 64
    assert int(prompt.inputs["token_type_ids"].sum()) == 64
    bridge = boot_bridge(model, processor)
    assert bridge.original_model is not model
    return adapter, prompt, bridge


@contextmanager
def bridge_float64_softmax():
    """The bridge recomputes attention with its own softmax, hard-wired to float32 like HF's: in
    float64 it must run in float64 too for like-with-like patterns."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._masked_softmax

    def masked_softmax(self, scores, dtype=None):
        return original(self, scores, None if scores.dtype == torch.float64 else dtype)

    AttentionBridge._masked_softmax = masked_softmax
    try:
        yield
    finally:
        AttentionBridge._masked_softmax = original


@pytest.fixture(scope="module")
def runs(toy_bridge):
    adapter, prompt, bridge = toy_bridge
    inputs = prompt.inputs
    with float64_norms(), bridge_float64_softmax():
        record = record_forward(adapter, prompt)
        logits, cache = bridge.run_with_cache(
            inputs["input_ids"], pixel_values=inputs["pixel_values"].to(torch.float64),
            token_type_ids=inputs["token_type_ids"], attention_mask=inputs["attention_mask"],
        )
    assert record.dtype == torch.float64 and logits.dtype == torch.float64
    assert logits.shape == (1, prompt.n_positions, adapter.vocab_size)
    return "float64_norms", adapter, prompt, bridge, record, logits[0], {k: v[0] for k, v in cache.items()}


def test_embeddings_match(runs):
    _, adapter, prompt, _, record, _, cache = runs
    img = torch.tensor(prompt.image_positions)
    txt = torch.tensor(sorted(set(range(prompt.n_positions)) - set(prompt.image_positions)))
    assert_tight(cache["embed.hook_out"][txt], record.embeddings[txt], "text embeddings")
    soft = cache["vision_projector.hook_out"].reshape(-1, adapter.d_model)
    assert_tight(soft, record.embeddings[img], "image soft tokens")
    assert_tight(cache["blocks.0.hook_resid_pre"], record.embeddings, "embeddings entering layer 0")


def test_attention_patterns_match(runs):
    _, adapter, prompt, _, record, _, cache = runs
    img = torch.tensor(prompt.image_positions)
    for layer in range(adapter.n_layers):
        ours = record.layers[layer].pattern
        assert ours.shape == (adapter.text_config.num_attention_heads, prompt.n_positions, prompt.n_positions)
        assert_tight(cache[f"blocks.{layer}.attn.hook_pattern"], ours, f"layer {layer} pattern")
        # token_type_ids reached both sides: bidirectional inside the image, causal elsewhere
        ahead = torch.triu(ours, diagonal=1)
        inside = ahead[:, img][:, :, img]
        assert inside.sum() > 1.0, f"layer {layer}: no bidirectional attention inside the image"
        assert ahead.sum() == pytest.approx(inside.sum().item(), abs=1e-12), f"layer {layer}: non-causal outside the image"


def test_mlp_inputs_and_outputs_match(runs):
    _, adapter, _, _, record, _, cache = runs
    for layer in range(adapter.n_layers):
        rec = record.layers[layer]
        assert_tight(cache[f"blocks.{layer}.mlp.hook_in"], rec.mlp_in, f"layer {layer} mlp_in")
        assert_tight(cache[f"blocks.{layer}.ln2.hook_out"], rec.mlp_in, f"layer {layer} mlp_in (ln2 out)")
        assert_tight(cache[f"blocks.{layer}.mlp.hook_out"], rec.mlp_out, f"layer {layer} mlp_out")
        # our mlp_out is the raw MLP output, what enters post_feedforward_layernorm
        assert_tight(cache[f"blocks.{layer}.ln2_post.hook_in"], rec.mlp_out, f"layer {layer} mlp_out (ln2_post in)")


def test_norm_scales_match(runs):
    _, adapter, _, _, record, _, cache = runs
    for layer in range(adapter.n_layers):
        for field, hook in NORMS.items():
            theirs = 1.0 / cache[f"blocks.{layer}.{hook}.hook_scale"][:, 0]
            assert_tight(theirs, getattr(record.layers[layer], field), f"layer {layer} {field}", tol=1e-14)
    assert_tight(1.0 / cache["ln_final.hook_scale"][:, 0], record.s_final, "s_final", tol=1e-14)


def test_norm_scales_are_the_ones_the_model_applies(runs):
    """Like with like: the norm's output is input x scale x (1 + w), with our float64 scale, to
    float64 precision."""
    regime, adapter, _, _, record, _, cache = runs
    for layer in range(adapter.n_layers):
        for field, hook in NORMS.items():
            x = cache[f"blocks.{layer}.{hook}.hook_in"]
            out = cache[f"blocks.{layer}.{hook}.hook_out"]
            hf_norm = getattr(adapter.layer(layer), HF_NORMS[hook])
            w = hf_norm.weight.detach()
            s = getattr(record.layers[layer], field)
            ours = x * s[:, None] * (1.0 + w)
            assert_tight(out, ours, f"layer {layer} {hook} output ({regime})", tol=1e-14)


def test_logits_and_final_hidden_match(runs):
    _, _, _, _, record, logits, cache = runs
    assert_tight(logits[-1], record.logits, "logits at the last position")
    assert_tight(cache["ln_final.hook_out"][-1], record.final_hidden, "final norm output")
    assert int(logits[-1].argmax()) == int(record.logits.argmax())
