"""Attribution at full Gemma3-4B size on one GPU, with random weights (no download).

    python bench/gpu_gemma3_4b.py                 # the issue's setting (needs a GPU)
    python bench/gpu_gemma3_4b.py --scale tiny    # the same code path, tiny sizes, on a CPU
    python bench/gpu_gemma3_4b.py --scale graph-shape --save /tmp/gs   # the 4B graph's file, on a CPU

Builds `Gemma3ForConditionalGeneration` with google/gemma-3-4b-it's configuration (34 layers,
d_model 2560, 8 query / 4 KV heads of 256, vocabulary 262,208; SigLIP 27 layers at 896 px ->
256 image soft tokens) in bf16 with random weights, a word-level tokenizer with the real special
token ids and a real Gemma3Processor, and a random ReLU+TopK(48) transcoder set of width
163,840 per layer (the published set's shape, ~57 GB in bf16, kept in host memory and streamed
to the GPU one layer at a time). One 896 px image + about 24 text tokens, 7,500 feature nodes.
Reports the time and peak GPU memory of the attribution call, per phase.

    python bench/gpu_gemma3_4b.py --tf32 --offload --limit-gib 24 --save /tmp/g4b

runs, in one process, fp32 and TF32 matmuls, each with the edge rows on the GPU and in host
memory (--offload: attribute's --offload cpu), the process limited to 24 GiB of GPU memory
(torch.cuda.set_per_process_memory_fraction: a run that needs more fails with out-of-memory and
is reported as such), and writes the last graph to --save (time, file size, and the size with
--half-edges), as the command line would.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.transcoders.activations import TopK
from tracer.transcoders.per_layer import PerLayerTranscoder
from tracer.transcoders.transcoder_set import TranscoderSet

SCALES = {
    # d_model, layers, heads, kv, head_dim, d_mlp, vocab, vision (hidden, layers, heads, mlp), image, patch, tokens, width
    "gemma3-4b": dict(d=2560, layers=34, heads=8, kv=4, head_dim=256, d_mlp=10240, vocab=262208,
                      v_hidden=1152, v_layers=27, v_heads=16, v_mlp=4304, image=896, patch=14, tokens=256,
                      width=163840, k=48),
    # the 4B graph's shape (34 layers, 896 px image -> 256 soft tokens, 7,500 feature nodes) with tiny
    # widths: a CPU measures the graph file a 4B run writes (its nonzeros follow from layers and positions)
    "graph-shape": dict(d=64, layers=34, heads=4, kv=2, head_dim=16, d_mlp=128, vocab=300, v_hidden=32, v_layers=2,
                        v_heads=2, v_mlp=64, image=896, patch=14, tokens=256, width=512, k=16),
    "tiny": dict(d=64, layers=3, heads=4, kv=2, head_dim=16, d_mlp=128, vocab=300, v_hidden=32, v_layers=2,
                 v_heads=2, v_mlp=64, image=56, patch=14, tokens=4, width=512, k=8),
}
SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106, "\n": 107}


def build_processor(s: dict) -> Gemma3Processor:
    """A real Gemma3Processor over a word-level tokenizer with Gemma's special-token ids."""
    vocab_size = s["vocab"]
    special = dict(SPECIAL)
    big = vocab_size > 262144
    special["<start_of_image>"] = 255999 if big else vocab_size - 3
    special["<end_of_image>"] = 256000 if big else vocab_size - 2
    special["<image_soft_token>"] = 262144 if big else vocab_size - 1
    taken = set(special.values())
    vocab = dict(special)
    word = 0
    for i in range(vocab_size):
        if i not in taken:
            vocab[f"w{word}"] = i
            word += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens([k for k in special if k != "\n"])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r" +"), behavior="removed"),
    ])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": s["image"], "width": s["image"]}, do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=s["tokens"])


def build_model(s: dict, processor, device: str, dtype: torch.dtype) -> Gemma3ForConditionalGeneration:
    tok = processor.tokenizer
    text = Gemma3TextConfig(
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["d_mlp"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv"], head_dim=s["head_dim"],
        query_pre_attn_scalar=s["head_dim"], sliding_window=1024, rms_norm_eps=1e-6,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(s["layers"])],
        max_position_embeddings=131072, pad_token_id=0, bos_token_id=2, eos_token_id=[1, 106],
    )
    vision = SiglipVisionConfig(
        hidden_size=s["v_hidden"], intermediate_size=s["v_mlp"], num_hidden_layers=s["v_layers"],
        num_attention_heads=s["v_heads"], image_size=s["image"], patch_size=s["patch"], vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=s["tokens"],
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    config._attn_implementation = "eager"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # Gemma3 starts the image projection at zero: give it a random one
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.normal_(0, s["v_hidden"] ** -0.5)
    return model.eval()


def random_transcoders(s: dict, device: str, dtype: torch.dtype, host: bool) -> TranscoderSet:
    """Random TopK transcoders, generated on `device`, kept in host memory if `host`."""
    g = torch.Generator(device=device).manual_seed(0)
    layers = {}
    for layer in range(s["layers"]):
        W_dec = torch.randn(s["width"], s["d"], device=device, dtype=torch.float32, generator=g)
        W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).to(dtype)
        W_enc = (torch.randn(s["width"], s["d"], device=device, dtype=torch.float32, generator=g) * s["d"] ** -0.5
                 ).to(dtype)
        b_enc = torch.zeros(s["width"], device=device, dtype=dtype)
        b_dec = torch.zeros(s["d"], device=device, dtype=dtype)
        if host:
            W_enc, W_dec, b_enc, b_dec = W_enc.cpu(), W_dec.cpu(), b_enc.cpu(), b_dec.cpu()
        layers[layer] = PerLayerTranscoder(layer, W_enc, b_enc, W_dec, b_dec, TopK(s["k"]))
    return TranscoderSet(layers, config={"model_name": "random-gemma3-4b", "feature_input_hook": "mlp.hook_in",
                                         "feature_output_hook": "mlp.hook_out", "top_k": s["k"]},
                         source=f"random TopK({s['k']}) x {s['width']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="gemma3-4b")
    parser.add_argument("--max-feature-nodes", type=int, default=7500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=24)
    parser.add_argument("--tf32", action="store_true", help="also time a run with TF32 matmuls")
    parser.add_argument("--offload", action="store_true", help="also time runs with the edge rows in host memory")
    parser.add_argument("--limit-gib", type=float, default=None,
                        help="limit this process to this much GPU memory (e.g. 24, a 24 GB card)")
    parser.add_argument("--save", default=None, help="write the last run's graph into this folder, timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    s = SCALES[args.scale]
    device = args.device
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    t0 = time.perf_counter()
    processor = build_processor(s)
    model = build_model(s, processor, device, dtype)
    tset = random_transcoders(s, device, dtype, host=device != "cpu")
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (s["image"], s["image"], 3), dtype=np.uint8))
    words = " ".join(f"w{int(i)}" for i in rng.integers(100, 5000, args.text_tokens))
    prompt = f"<start_of_turn>user\n<start_of_image>{words}<end_of_turn>\n<start_of_turn>model\n"

    results = {"device": torch.cuda.get_device_name() if device != "cpu" else platform.processor() or "cpu",
               "scale": args.scale, "setup_s": round(setup_s, 1), "runs": []}
    if args.limit_gib and device != "cpu":
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.limit_gib / total))
        results["limit_gib"] = args.limit_gib
    modes = [(tf32, offload) for tf32 in ([False, True] if args.tf32 else [False])
             for offload in ([False, True] if args.offload else [False])]
    # a small warm-up so that the timed runs do not pay for kernel selection
    attribute_full(model, processor, tset, prompt, image, AttributionConfig(max_feature_nodes=64, progress=False,
                                                                             batch_size=64, chat=False))
    res = None
    for tf32, offload in modes:
        res = None  # the previous run's result holds GPU tensors: free them before measuring
        if device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            res = attribute_full(model, processor, tset, prompt, image, AttributionConfig(
                max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, chat=False, tf32=tf32,
                offload="cpu" if offload else None, progress=True))
        except torch.OutOfMemoryError as err:
            run = {"tf32": tf32, "offload": offload, "out_of_memory": str(err).splitlines()[0][:200]}
            results["runs"].append(run)
            print(json.dumps(run))
            continue
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else float("nan")
        g = res.graph
        run = {"tf32": tf32, "offload": offload, "seconds": round(elapsed, 2), "peak_gpu_gib": round(peak, 2),
               "positions": g.n_positions, "image_tokens": int(len(g.image_positions)),
               "active_features": int(g.info["n_active_features"]), "feature_nodes": g.n_features,
               "logit_targets": g.n_logits, "phases_s": g.info["timings_s"],
               "sum_rule_max_rel": float((np.abs(g.sum_rule_residual()) / np.maximum(1, np.abs(g.values))).max())}
        results["runs"].append(run)
        print(json.dumps(run))
    if args.save and res is not None:
        import os

        from tracer.graph.storage import save_graph

        os.makedirs(args.save, exist_ok=True)
        g = res.graph
        saved = {"adjacency_shape": list(g.adjacency.shape), "nonzero_share": round(float(np.count_nonzero(g.adjacency))
                                                                                 / g.adjacency.size, 4)}
        for half in (False, True):
            start = time.perf_counter()
            path = save_graph(g, os.path.join(args.save, "half" if half else "full"), half=half)
            saved["half" if half else "full"] = {"seconds": round(time.perf_counter() - start, 2),
                                                 "megabytes": round(os.path.getsize(path) / 1e6, 1)}
        results["graph_file"] = saved
        print(json.dumps(saved))
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
