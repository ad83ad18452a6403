"""One run of the UIUC vlm-circuit-tracing tool, in its own process and virtualenv (bench/.venv-uiuc).

    bench/.venv-uiuc/bin/python bench/worker_uiuc.py SPEC.json

Started by compare_uiuc.py; does not import `tracer` (that needs transformers 5). SPEC.json names
the model folder (the project's toy Gemma3 VLM), the transcoder folder (the project's per-layer
set), the image, the prompt text and its token ids (as our engine tokenised them), the excluded
prefix length and the attribution settings. The worker builds the tool's `ReplacementModel` (a
`HookedVLTransformer` of its TransformerLens fork) around the toy, times only the tool's
`attribute(...)` call (image + question, as its CLI runs it) `repeats` times, and writes
`result.json` (times, memory) and, when asked, `graph.npz` + `adjacency.npy` (the same layout as
bench/worker_circuit_tracer.py: the two tools share circuit-tracer's graph layout).

What has to be bridged to load the toy, and why (all here; no file of the tool is changed):

- Loading. The tool only knows the published Gemma3-4B/12B checkpoints by name (its
  TransformerLens fork hard-codes their architecture) and loads them with `from_pretrained`. The
  toy folder was written by transformers 5, which transformers 4.57 reads only in part (tokenizer
  class, SigLIP weight names, rope settings). So the worker builds the HF model itself from
  config.json (rope bases taken from `rope_parameters`), loads model.safetensors with the weight
  names mapped to transformers 4.57's layout (every weight must load), builds the same tokenizer
  (from tokenizer.json, with the BOS post-processor it already has) and a Gemma3Processor with the
  folder's image settings, registers a name for the toy with the fork ("tracer/gemma-3-toy-vlm":
  its code switches on "gemma" in the name) and gives it the toy's architecture, and then goes
  through the fork's own `HookedVLTransformer.from_pretrained` (no folding or centring, as the
  tool's loader does) and the tool's own `_configure_replacement_model`. Checked: same token ids,
  same pixel values.
- Forward (the tool's model differs from the HF model on this toy in two places; bridged unless
  spec["bridge"] is false):
  * `_deduplicate_attention_buffers` gives every layer the RoPE table of the last layer, but
    Gemma3's sliding layers use base 10,000 and its global layers 1,000,000; the worker puts each
    layer's own table back after configuring.
  * With an image the fork replaces the attention mask by causal + bidirectional-within-image and
    so drops the sliding window (64 positions in the toy; the prompt has 85). The worker re-applies
    the window with a permanent hook on `hook_attn_scores` of the sliding layers.
  With both, the tool's logits equal the HF model's to ~5e-6; without them (spec["bridge"] false,
  compare_uiuc.py --no-bridge) they differ by up to 15 (5.8 at the last position). Every run
  measures it when given the HF logits (result.json, "checks").
- Excluded positions: the tool drops features and error nodes at position 0 only; our engine
  drops the chat-template prefix (4 positions). With the bridge, the worker drops the tool's
  features at positions < prefix (the same filter on its sparse encoding) and zeroes its error
  vectors there, so that both explore the same active features.
- Transcoders: the project's set (W_enc, W_dec as (d_transcoder, d_model), b_enc, b_dec) loads
  with the tool's own `load_transcoder_set`; its `top_k` (ReLU, then the k largest per position,
  as ours) is set from config.yaml.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ct_worker_common import graph_summary, package_version, timed_calls, transcoder_paths, write_result
from process_memory import peak_mb, rss_mb  # bench/, next to this script (as ct_worker_common)

TOY_NAME = "tracer/gemma-3-toy-vlm"


def _map_weight_name(key: str) -> str:
    """transformers 5 names in the toy's model.safetensors -> transformers 4.57's Gemma3 layout."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key.startswith("vision_tower."):
        return "model.vision_tower.vision_model." + key[len("vision_tower."):]
    if key.startswith("multi_modal_projector."):
        return "model." + key
    return key


def build_hf(model_dir: str):
    """The toy as a transformers 4.57 Gemma3ForConditionalGeneration, its tokenizer and processor."""
    import torch
    from safetensors.torch import load_file
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              PreTrainedTokenizerFast)

    raw = json.load(open(os.path.join(model_dir, "config.json")))
    text = dict(raw["text_config"])
    rope = text.pop("rope_parameters", None) or {}
    if rope:  # transformers 5 keeps one rope setting per layer type
        text["rope_theta"] = float(rope["full_attention"]["rope_theta"])
        text["rope_local_base_freq"] = float(rope["sliding_attention"]["rope_theta"])
    config = Gemma3Config(text_config=text, vision_config=raw["vision_config"],
                          mm_tokens_per_image=raw["mm_tokens_per_image"], boi_token_index=raw["boi_token_index"],
                          eoi_token_index=raw["eoi_token_index"], image_token_index=raw["image_token_index"],
                          tie_word_embeddings=raw.get("tie_word_embeddings", True))
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "eager"
    hf = Gemma3ForConditionalGeneration(config).to(torch.float32).eval()
    state = {_map_weight_name(k): v.to(torch.float32)
             for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    res = hf.load_state_dict(state, strict=False)
    missing = [k for k in res.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or res.unexpected_keys:
        raise SystemExit(f"toy weights transformers 4.57 could not place: missing {missing[:8]}, "
                         f"unexpected {res.unexpected_keys[:8]}")
    hf.tie_weights()
    for p in hf.parameters():
        p.requires_grad = False

    tok_cfg = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(model_dir, "tokenizer.json"), name_or_path=model_dir, add_bos_token=True,
        bos_token=tok_cfg.get("bos_token", "<bos>"), eos_token=tok_cfg.get("eos_token", "<eos>"),
        pad_token=tok_cfg.get("pad_token", "<pad>"), unk_token=tok_cfg.get("unk_token", "<unk>"),
        padding_side="right",
        extra_special_tokens={"boi_token": tok_cfg.get("boi_token", "<start_of_image>"),
                              "eoi_token": tok_cfg.get("eoi_token", "<end_of_image>"),
                              "image_token": tok_cfg.get("image_token", "<image_soft_token>")},
    )
    proc_cfg = json.load(open(os.path.join(model_dir, "processor_config.json")))
    ip = proc_cfg["image_processor"]
    image_processor = Gemma3ImageProcessor(
        size=ip["size"], resample=ip.get("resample", 2), do_rescale=ip.get("do_rescale", True),
        rescale_factor=ip.get("rescale_factor", 1 / 255), do_normalize=ip.get("do_normalize", True),
        image_mean=ip.get("image_mean"), image_std=ip.get("image_std"), do_convert_rgb=ip.get("do_convert_rgb", True),
        do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=proc_cfg.get("image_seq_length", raw["mm_tokens_per_image"]))
    return hf, config, tokenizer, processor


def fork_config(config) -> dict:
    """The toy's architecture in the fork's config format (as the fork writes it for Gemma3-4B)."""
    t = config.text_config
    return {
        "d_model": t.hidden_size, "d_head": t.head_dim, "n_heads": t.num_attention_heads, "d_mlp": t.intermediate_size,
        "n_layers": t.num_hidden_layers, "n_ctx": t.max_position_embeddings, "eps": t.rms_norm_eps,
        "d_vocab": t.vocab_size, "act_fn": t.hidden_activation, "initializer_range": t.initializer_range,
        "normalization_type": "RMS", "rotary_base": float(t.rope_theta), "positional_embedding_type": "rotary",
        "use_attn_scale": True, "attn_scale": float(t.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": t.num_key_value_heads, "window_size": t.sliding_window, "use_local_attn": True,
        "attn_types": ["local" if lt == "sliding_attention" else "global" for lt in t.layer_types],
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True,
        "image_token_id": config.image_token_index, "use_qk_norm": True,
        "original_architecture": "Gemma3ForConditionalGeneration", "tokenizer_name": TOY_NAME,
    }


def main(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    out_dir = spec["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    import numpy as np
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.transcoder import single_layer_transcoder as slt
    from PIL import Image
    from transformer_lens import HookedVLTransformer
    from transformer_lens import loading_from_pretrained as tl_loading
    t_import = time.perf_counter() - t0

    bridge = bool(spec.get("bridge", True))
    prefix = int(spec["prefix_length"])
    t1 = time.perf_counter()
    # --- transcoders, with the tool's own loader -------------------------------------------------
    folder = spec["transcoders"]
    tc_cfg, paths = transcoder_paths(folder)
    transcoders = slt.load_transcoder_set(
        paths, scan=str(folder), feature_input_hook=tc_cfg["feature_input_hook"],
        feature_output_hook=tc_cfg["feature_output_hook"], device=torch.device("cpu"), dtype=torch.float32,
        lazy_encoder=bool(spec["lazy_encoder"]), lazy_decoder=bool(spec["lazy_decoder"]),
        top_k=tc_cfg.get("top_k"))
    # --- the model -------------------------------------------------------------------------------
    hf, config, tokenizer, processor = build_hf(spec["model"])
    if TOY_NAME not in tl_loading.OFFICIAL_MODEL_NAMES:
        tl_loading.OFFICIAL_MODEL_NAMES.append(TOY_NAME)
    arch = fork_config(config)
    known = tl_loading.convert_hf_model_config
    tl_loading.convert_hf_model_config = lambda name, **kw: dict(arch) if name == TOY_NAME else known(name, **kw)
    hf.vision_model = hf.vision_tower  # the fork reads the SigLIP tower under this name (as the tool's loader sets it)
    model = HookedVLTransformer.from_pretrained.__func__(
        ReplacementModel, TOY_NAME, hf_model=hf, processor=processor, fold_ln=False, center_writing_weights=False,
        center_unembed=False, dtype=torch.float32, device="cpu")
    model.set_use_hook_mlp_in(True)
    rope = [(b.attn.rotary_sin, b.attn.rotary_cos) for b in model.blocks]
    model._configure_replacement_model(transcoders)
    local_layers = [i for i, kind in enumerate(arch["attn_types"]) if kind == "local"]
    if bridge:
        for block, (sin, cos) in zip(model.blocks, rope):  # each layer's own RoPE table back
            block.attn.rotary_sin, block.attn.rotary_cos = sin, cos
        window = int(arch["window_size"])

        def sliding_window(scores, hook):
            q = torch.arange(scores.shape[-2], device=scores.device)
            k = torch.arange(scores.shape[-1], device=scores.device)
            return scores.masked_fill((q[:, None] - k[None, :]) >= window, float("-inf"))

        for i in local_layers:
            model.blocks[i].attn.hook_attn_scores.add_hook(sliding_window, is_permanent=True)

        # excluded prefix: no features and no error nodes at positions < prefix (the tool: position 0)
        plain_encode_sparse = slt.SingleLayerTranscoder.encode_sparse

        def encode_sparse(self, input_acts, zero_first_pos: bool = True):
            sparse, encoders = plain_encode_sparse(self, input_acts, zero_first_pos=zero_first_pos)
            idx, vals = sparse.indices(), sparse.values()
            keep = idx[0] >= prefix
            return (torch.sparse_coo_tensor(idx[:, keep], vals[keep], sparse.shape, is_coalesced=True,
                                            check_invariants=False),
                    encoders[keep])

        slt.SingleLayerTranscoder.encode_sparse = encode_sparse
        plain_setup = model.setup_attribution

        def setup_attribution(*args, **kwargs):
            ctx = plain_setup(*args, **kwargs)
            ctx.error_vectors[:, :prefix] = 0
            return ctx

        model.setup_attribution = setup_attribution
    t_load = time.perf_counter() - t1
    rss_loaded, peak_loaded = rss_mb(), peak_mb()

    # --- same inputs as ours ---------------------------------------------------------------------
    image = Image.open(spec["image"]).convert("RGB")
    text = spec["uiuc_prompt"]
    batch = processor(text=text, images=image, return_tensors="pt")
    ids = [int(i) for i in batch["input_ids"][0]]
    if ids != [int(i) for i in spec["input_ids"]]:
        raise SystemExit(f"the tool's processor gives other token ids: {ids} vs {spec['input_ids']}")
    checks = {}
    if spec.get("pixel_values"):
        ref = np.load(spec["pixel_values"])
        checks["pixel_values_max_abs_diff"] = float(np.abs(batch["pixel_values"].numpy() - ref).max())
        if checks["pixel_values_max_abs_diff"] > 1e-6:
            raise SystemExit(f"pixel values differ from ours by {checks['pixel_values_max_abs_diff']}")
    if spec.get("hf_logits"):  # the tool's forward against the HF model's (ours, transformers 5)
        ref = np.load(spec["hf_logits"])
        with torch.no_grad():
            logits = model.run_with_hooks([text], [[image]])[0].float().numpy()
            checks["logits_max_abs_diff_vs_hf"] = float(np.abs(logits - ref).max())
            checks["last_logits_max_abs_diff_vs_hf"] = float(np.abs(logits[-1] - ref[-1]).max())
            hf_logits = hf(**batch).logits[0].float().numpy()
            checks["hf_457_logits_max_abs_diff_vs_hf5"] = float(np.abs(hf_logits - ref).max())

    graph, times, cpu = timed_calls(lambda: attribute(
        text, model, max_n_logits=int(spec["max_n_logits"]), desired_logit_prob=float(spec["desired_logit_prob"]),
        batch_size=int(spec["batch_size"]), max_feature_nodes=spec["max_feature_nodes"], verbose=False,
        image_path=spec["image"]), spec["repeats"])
    peak_end = peak_mb()

    result = {
        "tool": "uiuc",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "circuit_tracer_vlm": package_version("circuit-tracer"),
                     "transformer_lens": package_version("transformer-lens"), "uiuc_commit": spec.get("uiuc_commit", "")},
        "threads": torch.get_num_threads(), "bridge": bridge, "checks": checks,
        "import_s": t_import, "load_s": t_load, "attribution_s": times, "attribution_cpu_s": cpu,
        "rss_after_load_mb": rss_loaded, "peak_after_load_mb": peak_loaded, "peak_rss_mb": peak_end,
        **graph_summary(graph, graph.logit_tokens.tolist()),
    }
    write_result(out_dir, result, graph if spec.get("save_graph") else None, model.cfg.n_layers)


if __name__ == "__main__":
    main(sys.argv[1])
