"""`python -m tracer features ...`: compute a feature-examples store (top-activating examples)."""

from __future__ import annotations

from tracer.commands.common import (HelpFormatter, check_writable, non_negative_int, positive_float, positive_int,
                                    share)


def register(sub) -> None:
    p = sub.add_parser(
        "features", help="compute every transcoder feature's top-activating examples over a data set",
        description="Run the model over a data set, encode each layer's MLP input with its transcoder "
        "(chat-template prefix positions excluded) and keep, for every feature, its top-activating inputs "
        "(one slot per input). Written in the published activation-stats format "
        "(circuit-tracer-activation-stats-v1: manifest.json, stats/layer_XX.safetensors, "
        "inputs/part-XXXXX.parquet) plus the input images under images/, so that the app can show "
        "thumbnails with the activating image cell marked. See docs/feature_examples.md.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=None, help="model folder or hub id (default: the shipped toy VLM)")
    p.add_argument("--transcoders", default=None, help="transcoder set folder or hub id (default: the shipped toy set)")
    p.add_argument("--data", default="toy", help="data set: 'toy' (toy scenes + questions, held-out split), "
                   "'toy:train', optionally ',type=color' to keep one question type; for a text-only model "
                   "'pydoc' (the Python reference manual's topics, the corpus of the shipped Gemma 3 270M "
                   "transcoders, one input per chunk of paragraphs, ',chars=400') or 'text:FILE' (any UTF-8 "
                   "text file cut into windows of ',window=64' tokens, each after <bos>)")
    p.add_argument("--n-examples", "--n_examples", dest="n_examples", type=positive_int, default=600,
                   help="how many examples (inputs) of the data set to scan")
    p.add_argument("--per-feature", "--per_feature", dest="per_feature", type=positive_int, default=8,
                   help="top examples kept per feature")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an older store (replaced atomically "
                   "when complete); a folder holding anything else is refused")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=32,
                   help="examples per forward pass")
    p.add_argument("--seed", type=non_negative_int, default=0, help="which examples of the toy world (toy data only)")
    p.add_argument("--start", type=non_negative_int, default=0, help="index of the first example")
    p.add_argument("--no-per-position", action="store_true",
                   help="do not store each example's activations at every position (smaller store)")
    p.add_argument("--min-fraction", type=share, default=0.0,
                   help="per-position activations below this share of the example's top value are dropped")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                   help="model dtype")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="shard the work over this many Ray workers, each with its own model copy (the store is "
                        "the same as one process writes); default: one process, no Ray")
    p.add_argument("--address", default=None,
                   help="run the workers on an existing Ray cluster ('auto' or host:port); implies Ray")
    p.add_argument("--cpus-per-worker", type=positive_float, default=1.0, help="CPU cores reserved per Ray worker")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import torch

    from tracer.features.compute import compute_feature_examples, parse_data_spec
    from tracer.models.loading import FAST_ATTENTION, load_vlm
    from tracer.transcoders import load_transcoder_set

    if args.threads:
        torch.set_num_threads(args.threads)
    from tracer.features.writer import check_replaceable_store

    check_writable(args.out, folder=True)
    check_replaceable_store(args.out)  # before any work: a folder of other files is never replaced
    # a DataSpecError is printed by tracer.cli (exit 2); ',seed=' / ',start=' in --data win over the flags
    spec = parse_data_spec(args.data, seed=args.seed, start=args.start)
    # the Ray workers parse the data spec again (toy data only: compute_feature_examples_ray says so)
    data = (f"toy:{spec.split},seed={spec.seed},start={spec.start}" + (f",type={spec.question_type}"
                                                                        if spec.question_type else "")
            if spec.name == "toy" else args.data)
    from tracer.toy.shipped import shipped_transcoders_name

    own_set = shipped_transcoders_name(args.model or "toy")  # a shipped toy brings its own set
    transcoders = args.transcoders or own_set
    names = {"model_name": args.model or "toy-vlm (shipped)",
             "transcoder_name": (f"{transcoders} (shipped)" if transcoders == own_set else transcoders)
             if transcoders else "toy-plt (shipped)"}
    if args.workers is not None or args.address is not None:
        from tracer.features.distributed import compute_feature_examples_ray

        out = compute_feature_examples_ray(
            args.out, model=args.model, transcoders=transcoders, data=data, n_inputs=args.n_examples,
            n_per_feature=args.per_feature, batch_size=args.batch_size, per_position=not args.no_per_position,
            min_fraction=args.min_fraction, device=args.device, dtype=args.dtype, workers=args.workers,
            address=args.address, cpus_per_worker=args.cpus_per_worker, progress=not args.no_progress, **names)
        return _report(out)
    dtype = getattr(torch, args.dtype)
    model, processor = load_vlm(args.model, dtype=dtype, device=args.device, attn_implementation=FAST_ATTENTION)
    tset = load_transcoder_set(transcoders, device=args.device, dtype=dtype, model=model)
    out = compute_feature_examples(
        args.out, model, processor, tset, data=spec, n_inputs=args.n_examples, n_per_feature=args.per_feature,
        batch_size=args.batch_size, per_position=not args.no_per_position, progress=not args.no_progress,
        min_fraction=args.min_fraction, **names,
    )
    return _report(out)


def _report(out) -> int:
    from tracer.features.store import ExampleStore

    store = ExampleStore(out)
    n = sum(len(store.features(layer)) for layer in store.layers)
    print(f"wrote {out}: {store.manifest['num_inputs']} inputs, {store.processor_tokens} tokens, "
          f"{n} features with examples over layers {store.layers}")
    return 0
