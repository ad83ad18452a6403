"""One circuit-tracer 0.5.0 run, in its own process and virtualenv (bench/.venv-ct).

    bench/.venv-ct/bin/python bench/worker_circuit_tracer.py SPEC.json

Started by compare_circuit_tracer.py; does not import `tracer` (that needs transformers 5).
SPEC.json names the model folder, the transcoder folder, the token ids, the excluded prefix
length and the attribution settings; the worker writes `result.json` (times, memory) and,
when asked, `graph.npz` (the adjacency and its node lists) into spec["out_dir"].

What is bridged here, and why (see docs/benchmarks.md):

- circuit-tracer has no `mlp.hook_out` (raw MLP output) for Gemma3: its `hook_mlp_out` is the
  output of post_feedforward_layernorm. We add `mlp.hook_out` -> `<layers[i]>.mlp` output to
  its nnsight mapping table (a dictionary entry; no circuit-tracer code is changed).
- The toy model folder was written by transformers 5, whose tokenizer_config.json names a
  tokenizer class that transformers 4.57 lacks; we build the same tokenizer from
  tokenizer.json and hand circuit-tracer the loaded HF model (as its own `from_config` does).
  transformers 4.57 does not recognise the vision tower's weight names of that file (the tower
  is left randomly initialised): irrelevant for a text-only prompt; every language-model
  weight must load, which is checked.
- circuit-tracer zeroes positions 0 (0-3 for gemma-3 "-it" names); we set its
  `zero_positions` to our excluded chat-template prefix so both drop the same positions.
- Transcoder sets load through its own `load_transcoder_set` (config.yaml is read here since
  it only reads config.yaml from the hub); `top_k` is ignored there, so the benchmark hands
  both tools a ReLU or JumpReLU set.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ct_worker_common import graph_summary, package_version, timed_calls, transcoder_paths, write_result
from process_memory import peak_mb, rss_mb  # bench/, next to this script (as ct_worker_common)


def main(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    out_dir = spec["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    import dataclasses

    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from circuit_tracer.utils import tl_nnsight_mapping
    from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedTokenizerFast
    t_import = time.perf_counter() - t0

    # --- bridge: the raw MLP output (mlp.hook_out) for Gemma3 ---------------------------------
    for arch in ("Gemma3ForConditionalGeneration", "Gemma3ForCausalLM"):
        mapping = tl_nnsight_mapping._REGISTRY[arch]
        hooks = dict(mapping.feature_hook_mapping)
        hooks.setdefault("mlp.hook_out", (mapping.pre_logit_location + ".layers[{layer}].mlp", "output"))
        tl_nnsight_mapping._REGISTRY[arch] = dataclasses.replace(mapping, feature_hook_mapping=hooks)

    t1 = time.perf_counter()
    folder = spec["transcoders"]
    config, paths = transcoder_paths(folder)
    transcoders = load_transcoder_set(
        paths, scan=str(folder), feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"], device=torch.device("cpu"), dtype=torch.float32,
        lazy_encoder=bool(spec["lazy_encoder"]), lazy_decoder=bool(spec["lazy_decoder"]),
    )
    model_dir = spec["model"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(model_dir, "tokenizer.json"), bos_token="<bos>", eos_token="<eos>",
        pad_token="<pad>", unk_token="<unk>",
    )
    hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    hf_config._attn_implementation = "eager"
    hf_model, loading = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True, trust_remote_code=False)
    hf_model.eval()
    # transformers 4.57 names the SigLIP tower's weights differently from the transformers 5 file,
    # so the vision tower loads with fresh weights: harmless for a text-only prompt, but nothing
    # else may be missing.
    bad = [k for k in list(loading.get("missing_keys", [])) + list(loading.get("unexpected_keys", []))
           if "vision_tower" not in k]
    if bad:
        raise SystemExit(f"model weights that transformers {__import__('transformers').__version__} could not "
                         f"place: {bad[:10]}")
    model = NNSightReplacementModel(hf_model, tokenizer=tokenizer, dispatch=True)
    model._hf_config = hf_model.config
    model._configure_replacement_model(transcoders)
    model.zero_positions = slice(0, int(spec["prefix_length"]))
    t_load = time.perf_counter() - t1
    rss_loaded, peak_loaded = rss_mb(), peak_mb()

    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    graph, times, cpu = timed_calls(lambda: attribute(
        ids, model, max_n_logits=int(spec["max_n_logits"]), desired_logit_prob=float(spec["desired_logit_prob"]),
        batch_size=int(spec["batch_size"]), max_feature_nodes=spec["max_feature_nodes"], verbose=False,
    ), spec["repeats"])
    peak_end = peak_mb()

    result = {
        "tool": "circuit-tracer",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "circuit_tracer": package_version("circuit-tracer"), "nnsight": package_version("nnsight")},
        "threads": torch.get_num_threads(),
        "import_s": t_import, "load_s": t_load, "attribution_s": times, "attribution_cpu_s": cpu,
        "rss_after_load_mb": rss_loaded, "peak_after_load_mb": peak_loaded, "peak_rss_mb": peak_end,
        **graph_summary(graph, [t.vocab_idx for t in graph.logit_targets]),
    }
    write_result(out_dir, result, graph if spec.get("save_graph") else None, graph.cfg.n_layers)


if __name__ == "__main__":
    main(sys.argv[1])
