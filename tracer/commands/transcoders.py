"""`python -m tracer transcoders ...`: inspect and evaluate transcoder sets."""

from __future__ import annotations

import json
import sys

from tracer.commands.common import HelpFormatter, non_negative_int, positive_int


def register(sub) -> None:
    tc = sub.add_parser(
        "transcoders", help="inspect a transcoder set and report how well it replaces the model's MLPs",
        description="Transcoder sets in the published format (config.yaml + layer_{i}.safetensors), from a "
        "local folder or a Hugging Face repo ('org/name', 'org/name@rev', 'hf://org/name/subfolder'). With no "
        "arguments the shipped toy set and the shipped toy VLM are used.",
    )
    tc_sub = tc.add_subparsers(dest="transcoders_command", metavar="ACTION", required=True)

    rep = tc_sub.add_parser(
        "report", help="per-layer FVU, mean L0, dead features, next-token loss; toy answer accuracy",
        description="Evaluate a transcoder set on held-out prompts. Per layer: FVU (fraction of the MLP output's "
        "variance the transcoder does not explain), mean L0 (active features per position), the fraction of "
        "features that never fire, and the next-token loss of the model with that layer's MLP replaced by the "
        "transcoder (clean, replaced, MLP zero-ablated, and the fraction of the ablation gap recovered). For the "
        "toy VLM also the held-out answer accuracy per question type with ALL MLPs replaced by transcoders "
        "(errors not added back). Positions after the chat-template prefix count; at the prefix the real MLP "
        "output is kept, as in attribution.",
        formatter_class=HelpFormatter,
    )
    rep.add_argument("--model", default=None, help="model folder or hub id (default: the shipped toy VLM)")
    rep.add_argument("--transcoders", default=None, help="transcoder set folder or hub ref (default: the shipped toy set)")
    rep.add_argument("--data", action="append", default=None, metavar="SPEC",
                     help="held-out data source(s) as in train-plt (default: toy)")
    rep.add_argument("-n", "--examples", type=positive_int, default=600, help="held-out prompts for the per-layer table")
    rep.add_argument("--per-type", type=positive_int, default=500, help="toy examples per question type for the accuracy")
    rep.add_argument("--no-loss", action="store_true", help="skip the next-token loss columns (faster)")
    rep.add_argument("--lazy", action="store_true", help="read decoder rows lazily (for sets larger than memory)")
    rep.add_argument("--batch-size", type=positive_int, default=32, help="examples per forward pass")
    rep.add_argument("--seed", type=non_negative_int, default=0, help="which held-out examples")
    rep.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    rep.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="model dtype")
    rep.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    rep.add_argument("--markdown", action="store_true", help="print markdown tables")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.set_defaults(handler=_report)

    info = tc_sub.add_parser(
        "info", help="what a transcoder set contains and the memory each loading mode needs",
        description="Print a set's config, layers, widths, activation, dtype and skip connections without "
        "loading any matrix, with the memory that eager, lazy-decoder and lazy encoder+decoder loading need.",
        formatter_class=HelpFormatter,
    )
    info.add_argument("transcoders", nargs="?", default=None, help="folder or hub ref (default: the shipped toy set)")
    info.add_argument("--model", default=None, help="also check compatibility with this model")
    info.set_defaults(handler=_info)


def _report(args) -> int:
    import torch

    from tracer.models.loading import FAST_ATTENTION, load_vlm
    from tracer.transcoders.evaluation import evaluate_layers, format_report, is_toy_model, toy_accuracy
    from tracer.transcoders.loading import load_transcoder_set
    from tracer.transcoders.sources import make_source

    torch.set_num_threads(max(1, args.threads))
    model, processor = load_vlm(args.model, dtype=getattr(torch, args.dtype), device=args.device,
                                attn_implementation=FAST_ATTENTION)
    tset = load_transcoder_set(args.transcoders, lazy_decoder=args.lazy, device=args.device, dtype=torch.float32,
                               model=model if args.transcoders is None else None)
    tset.check_compatible(model, require_all_layers=False)  # a partial set gets its per-layer rows
    from tracer.models import get_adapter

    n_model_layers = get_adapter(model).n_layers
    complete = set(tset.layers) == set(range(n_model_layers))
    toy = is_toy_model(model, processor)
    if not toy and not args.data:
        print("error: this is not the toy model; give held-out data with --data (e.g. folder:PATH or hf:NAME)",
              file=sys.stderr)
        return 2
    source = make_source(args.data)
    items = source.heldout_items(args.examples, seed=args.seed)
    layers = evaluate_layers(model, processor, tset, items, batch_size=args.batch_size, losses=not args.no_loss,
                             progress=not args.no_progress)
    accuracy = clean = None
    if toy and not complete:
        print(f"note: the set covers layers {tset.layers} of {n_model_layers}; the accuracy with all MLPs "
              "replaced needs every layer, so it is left out", file=sys.stderr)
    if toy and complete:
        accuracy = toy_accuracy(model, processor, tset, args.per_type, args.seed, progress=not args.no_progress)
        clean = toy_accuracy(model, processor, None, args.per_type, args.seed, progress=not args.no_progress)
    if args.json:
        print(json.dumps({
            "transcoders": tset.source, "layers": {str(k): v.to_dict() for k, v in layers.items()},
            "accuracy_all_replaced": accuracy, "accuracy_clean": clean, "n_examples": len(items),
        }, indent=1))
        return 0
    print(f"transcoders: {tset.source} ({tset.n_layers} layers, width {tset.d_transcoder}, "
          f"{type(tset[tset.layers[0]].activation).__name__}"
          f"{'(' + str(tset.config['top_k']) + ')' if 'top_k' in tset.config else ''})")
    print(f"held-out prompts: {len(items)}"
          + (f"; toy accuracy on {args.per_type} per question type" if accuracy is not None else ""))
    print()
    print(format_report(layers, accuracy, clean, markdown=args.markdown))
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):  # decimal units, as in docs/transcoders.md
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _info(args) -> int:
    import torch

    from tracer.transcoders.activations import JumpReLU
    from tracer.transcoders.errors import TranscoderMismatchError
    from tracer.transcoders.loading import load_transcoder_set

    tset = load_transcoder_set(args.transcoders, lazy_decoder=True, lazy_encoder=True)
    print(f"source: {tset.source}")
    for key in ("model_name", "feature_input_hook", "feature_output_hook", "top_k", "num_model_layers"):
        if key in tset.config:
            print(f"{key}: {tset.config[key]}")
    first = tset[tset.layers[0]]
    print(f"layers: {len(tset)} ({tset.layers[0]}..{tset.layers[-1]}), d_model {tset.d_model}, "
          f"width {tset.d_transcoder}, activation {first.activation!r}, dtype {first.dtype}, "
          f"skip {'yes' if first.has_skip else 'no'}")
    size = torch.finfo(first.dtype).bits // 8
    mat = sum(t.d_transcoder * t.d_model for t in tset) * size
    small = sum(t.d_transcoder * (2 if isinstance(t.activation, JumpReLU) else 1) + t.d_model
                + (t.d_model ** 2 if t.has_skip else 0) for t in tset) * size
    print("memory to load (all layers):")
    print(f"  eager (encoder + decoder):     {_human(2 * mat + small)}")
    print(f"  lazy decoder (the default):    {_human(mat + small)}")
    print(f"  lazy encoder + decoder:        {_human(small)}  (+ one encoder chunk while encoding)")
    if args.model:
        from tracer.models.loading import load_vlm

        model, _ = load_vlm(args.model)
        tset.check_compatible(model, require_all_layers=False)  # a mismatch: printed by tracer.cli (exit 2)
        try:
            tset.check_compatible(model)
            print("compatible with the model: yes")
        except TranscoderMismatchError as exc:
            print(f"compatible with the model for the layers it has; attribution needs every layer: {exc}")
    return 0
