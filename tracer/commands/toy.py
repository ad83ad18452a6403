"""`python -m tracer toy ...`: the shapes world and the toy VLM."""

from __future__ import annotations

import json
from pathlib import Path

from tracer.commands.common import (
    HelpFormatter, check_writable, non_negative_float, non_negative_int, positive_float, positive_int, share,
)
from tracer.errors import InputError
from tracer.toy import world
from tracer.toy.shipped import SHIPPED_TOYS

FAMILIES = ("gemma3", "llava", "qwen2_5_vl")  # tracer.toy.families.TINY_FAMILIES (not imported: --help stays light)


def question_mix(text: str) -> dict[str, int]:
    """argparse type of --question-mix: "color=3,exists=2" -> {"color": 3, "exists": 2}."""
    import argparse

    mix = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in world.QUESTION_TYPES or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: expected TYPE=WEIGHT with TYPE one of "
                                             f"{', '.join(world.QUESTION_TYPES)} and a whole number")
        mix[name] = int(weight)
    if not any(mix.get(q, 1) for q in world.QUESTION_TYPES):
        raise argparse.ArgumentTypeError("every question type has weight 0")
    return mix


def register(sub) -> None:
    toy = sub.add_parser(
        "toy", help="the shapes toy world and the toy VLM: train, evaluate, sample",
        description="The shapes toy world (64x64 scenes, 1-3 objects on a 4x4 grid, questions with a "
        "known answer region) and the small Gemma3 VLM trained on it.",
    )
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="ACTION", required=True)

    train = toy_sub.add_parser(
        "train", help="train the toy VLM from scratch (seeded, resumable)",
        description="Train a small VLM (Gemma3ForConditionalGeneration by default; LLaVA or Qwen2.5-VL with "
        "--family) on the shapes world and save it as a "
        "Hugging Face folder (config.json, model.safetensors, tokenizer and processor files). "
        "Re-running with the same --out resumes from the last checkpoint.",
        formatter_class=HelpFormatter,
    )
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--family", default="gemma3", choices=FAMILIES,
                       help="model family: the toy sizes in that family's HF class and chat format")
    train.add_argument("--steps", type=positive_int, default=12000, help="optimiser steps in all")
    train.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate")
    train.add_argument("--warmup", type=non_negative_int, default=500, help="linear warm-up steps before the cosine decay")
    train.add_argument("--aux-weight", type=non_negative_float, default=0.5,
                       help="weight of the per-image-token shape/colour probe loss")
    train.add_argument("--seed", type=non_negative_int, default=0, help="seed of the initial weights and the data order")
    train.add_argument("--eval-every", type=positive_int, default=1000,
                       help="steps between held-out evaluations (logged per question type)")
    train.add_argument("--init-vision-from", default=None, metavar="FOLDER",
                       help="start the vision tower from a trained VLM's (e.g. tracer/data/toy-vlm, whose SigLIP "
                            "tower a LLaVA toy can take); the projector and language model start fresh")
    train.add_argument("--init-from", default=None, metavar="FOLDER",
                       help="go on training a trained toy of the same --family (fine-tuning: the whole model "
                            "starts there, the learning-rate schedule and the probe start afresh)")
    train.add_argument("--question-mix", type=question_mix, default=None, metavar="TYPE=W,...",
                       help="how often each question type is drawn, e.g. color=3,exists=3 (types not named weigh "
                            "1; default: one of each in turn): more of the types a run still gets wrong")
    train.add_argument("--no-aux-position", action="store_true",
                       help="the auxiliary probe reads only each image token's shape and colour, not also which "
                            "half of the image it lies in (the recipe before the position probe)")
    train.add_argument("--init-language-from", default=None, metavar="FOLDER",
                       help="start the language model from a trained VLM's of the same decoder sizes, tokens "
                            "matched by their text (e.g. tracer/data/toy-vlm-llava, whose Llama decoder a "
                            "Qwen2.5-VL toy can take; Qwen2's q/k/v biases start at zero)")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    train.add_argument("--threads", type=positive_int, default=1,
                       help="torch CPU threads (use 1 when other work shares the cores)")
    train.add_argument("--workers", type=non_negative_int, default=0, help="data-loading worker processes")
    train.add_argument("--overwrite", action="store_true",
                       help="train from step 0 even if --out holds a finished model (replaced); without it such a "
                            "folder is refused. A folder with a checkpoint is always resumed")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    ev = toy_sub.add_parser(
        "eval", help="held-out answer accuracy per question type",
        description="Greedy next-token accuracy on held-out scenes (never seen in training), one row "
        "per question type.",
        formatter_class=HelpFormatter,
    )
    ev.add_argument("--model", default=None,
                    help=f"model folder or shipped toy ({', '.join(SHIPPED_TOYS)}; default: toy)")
    ev.add_argument("-n", "--per-type", type=positive_int, default=500, help="examples per question type")
    ev.add_argument("--seed", type=non_negative_int, default=0, help="which held-out examples")
    ev.add_argument("--bar", type=share, default=0.95,
                    help="accuracy a question type must reach to be marked ok (the shipped toys' bar)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(handler=_eval)

    sample = toy_sub.add_parser(
        "sample", help="write toy examples (images + questions + ground truth) to a folder",
        description="Write N examples as PNG images plus examples.jsonl with id, question, answer, the "
        "objects the answer depends on and the image soft-token positions under them (evidence_tokens). "
        "examples.jsonl is a batch file for `python -m tracer batch`, with its ground truth.",
        formatter_class=HelpFormatter,
    )
    sample.add_argument("--out", required=True, help="output folder")
    sample.add_argument("-n", type=positive_int, default=12, help="how many examples")
    sample.add_argument("--split", default="heldout", choices=["train", "heldout"],
                        help="which split (they never share a scene layout)")
    sample.add_argument("--type", dest="question_type", default=None, choices=world.QUESTION_TYPES,
                        help="only this question type")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="which examples of the split")
    sample.add_argument("--jsonl", default="examples.jsonl", metavar="NAME",
                        help="name of the batch file written in --out (the input of `python -m tracer batch`)")
    sample.set_defaults(handler=_sample)

    graphs = toy_sub.add_parser(
        "sample-graphs", help="compute the sample graphs the app opens offline",
        description="Pick held-out examples of every question type (plus a text-only one) that the model "
        "answers correctly, compute their attribution graphs with the toy VLM and its transcoders, and "
        "save them with their ground truth (answer, evidence objects, soft-token positions) in graph.info.",
        formatter_class=HelpFormatter,
    )
    graphs.add_argument("--out", default="app/sample_graphs", help="output folder")
    graphs.add_argument("--model", default=None, help="model (default: the shipped toy VLM)")
    graphs.add_argument("--transcoders", default=None, help="transcoders (default: the shipped toy set)")
    graphs.add_argument("--per-type", type=positive_int, default=1, help="graphs per question type")
    graphs.add_argument("--types", default=None,
                        help="comma-separated question types (default: all of " + ", ".join(world.QUESTION_TYPES) + ")")
    graphs.add_argument("--max-feature-nodes", type=positive_int, default=400,
                        help="features per graph (keeps the files small enough for git)")
    graphs.set_defaults(handler=_sample_graphs)

    tiny = toy_sub.add_parser(
        "tiny", help="write a tiny random-weight model of a supported family (gemma3, llava, qwen2_5_vl)",
        description="Write a tiny random-weight VLM of one family (real Hugging Face class, the toy world's "
        "vocabulary in the family's own chat format and special tokens, its processor) as a model folder "
        "that --model accepts: try every command on LLaVA or Qwen2.5-VL with no download. It knows nothing "
        "(random weights); train transcoders for it with `python -m tracer train-plt --model FOLDER`. "
        "Example: python -m tracer toy tiny --family llava --out runs/tiny-llava",
        formatter_class=HelpFormatter,
    )
    tiny.add_argument("--family", required=True, choices=FAMILIES, help="model family")
    tiny.add_argument("--out", required=True, help="output folder (created)")
    tiny.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random weights")
    tiny.add_argument("--overwrite", action="store_true", help="write over a model already in --out")
    tiny.set_defaults(handler=_tiny)

    gt = toy_sub.add_parser(
        "groundtruth", help="scoreboard: does the toy VLM answer from the ground-truth cells?",
        description="On held-out scenes of each question type: the share of the image influence on the "
        "ground-truth cells (attribution graphs), how often the answer flips when those cells' soft tokens "
        "are zero- or mean-ablated, the same for as many random cells elsewhere (control), and a "
        "counterfactual edit of the scene (the answer must follow; the edited graph's top image node must "
        "sit on the object). Rows per question type and per answer value, checked against the targets "
        "(flip >= 95% per answer value, control <= 2%, median share >= 60%). Exit status 0 even when "
        "targets fail. Example: python -m tracer toy groundtruth --n 50 --types color,shape",
        formatter_class=HelpFormatter,
    )
    gt.add_argument("--model", default=None, help="model (default: the shipped toy VLM)")
    gt.add_argument("--transcoders", default=None, help="transcoders (default: the shipped toy set)")
    gt.add_argument("-n", "--n", dest="n", type=positive_int, default=200, help="held-out scenes per question type")
    gt.add_argument("--types", default=None,
                    help="comma-separated question types (default: every type with an image: "
                         "color, shape, position, count, exists)")
    gt.add_argument("--max-feature-nodes", type=positive_int, default=200, help="features per attribution graph")
    gt.add_argument("--seed", type=non_negative_int, default=0, help="which held-out scenes, control cells and edits")
    gt.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    gt.add_argument("--out", default=None, help="also write everything (per-scene rows too) to this JSON file")
    gt.add_argument("--no-progress", action="store_true", help="no progress bar")
    gt.set_defaults(handler=_groundtruth)


def _train(args) -> int:
    check_writable(args.out, folder=True)
    from tracer.toy.train import TrainConfig, train

    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        aux_weight=args.aux_weight, seed=args.seed, eval_every=args.eval_every, device=args.device,
        threads=args.threads, num_workers=args.workers, family=args.family,
        init_vision_from=args.init_vision_from, init_language_from=args.init_language_from,
        init_from=args.init_from, aux_position=not args.no_aux_position, question_mix=args.question_mix,
    )
    out = train(args.out, cfg, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"saved the toy {args.family} VLM to {out}")
    return 0


def _eval(args) -> int:
    from tracer.models.loading import load_vlm
    from tracer.toy.evaluate import evaluate_model, format_table

    model, processor = load_vlm(args.model)
    acc = evaluate_model(model, processor, args.per_type, seed=args.seed)
    if args.json:
        print(json.dumps(acc, indent=1))
    else:
        print(format_table(acc, args.per_type, bar=args.bar))
    return 0


def _sample(args) -> int:
    check_writable(args.out, folder=True)
    from tracer.toy import world

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if Path(args.jsonl).name != args.jsonl or not args.jsonl.endswith(".jsonl"):
        raise InputError(f"--jsonl must be a file name ending in .jsonl (it is written in --out), got {args.jsonl!r}")
    with open(out / args.jsonl, "w") as f:
        for ex in world.examples(args.split, args.seed, 0, args.n, args.question_type):
            record = {"id": f"{args.split}-{ex.index:05d}", **ex.to_dict()}
            if ex.has_image:
                name = f"{args.split}_{ex.index:05d}.png"
                ex.image().save(out / name)
                record["image"] = name
            f.write(json.dumps(record) + "\n")
    print(f"wrote {args.n} examples to {out} ({out / args.jsonl})")
    return 0


def _tiny(args) -> int:
    if (Path(args.out) / "model.safetensors").exists() and not args.overwrite:
        raise InputError(f"{args.out} already holds a model (model.safetensors): choose another --out, or pass "
                         "--overwrite to replace it with random weights")
    check_writable(args.out, folder=True)
    from tracer.toy.families import write_tiny_model

    folder = write_tiny_model(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random-weight {args.family} model to {folder}")
    return 0


def _groundtruth(args) -> int:
    from tracer.toy.groundtruth import IMAGE_TYPES, format_table, run_groundtruth

    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else list(IMAGE_TYPES)
    bad = [t for t in types if t not in IMAGE_TYPES]
    if bad or not types:
        raise InputError(f"--types: {', '.join(bad) or 'none given'} not among the image question types "
                         f"({', '.join(IMAGE_TYPES)})")
    if args.n < 1 or args.max_feature_nodes < 1:
        raise InputError("--n and --max-feature-nodes must be >= 1")
    if args.out and Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a folder; give a file name")
    from tracer.session import TracingSession

    session = TracingSession(args.model, args.transcoders, device="cpu")
    result = run_groundtruth(session, args.n, types, args.max_feature_nodes, args.seed,
                             progress=not args.no_progress)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    else:
        print(format_table(result))
        print(f"{len(result['rows'])} scenes in {result['seconds']:.0f} s")
    return 0


def _sample_graphs(args) -> int:
    check_writable(args.out, folder=True)
    from tracer.session import TracingSession
    from tracer.toy.samples import make_sample_graphs

    types = None
    if args.types:
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        bad = [t for t in types if t not in world.QUESTION_TYPES]
        if bad or not types:
            raise InputError(f"--types: {', '.join(bad) or 'none given'} not among the question types "
                             f"({', '.join(world.QUESTION_TYPES)})")
    session = TracingSession(args.model, args.transcoders, device="cpu")
    for path in make_sample_graphs(session, args.out, args.per_type, args.max_feature_nodes, types=types):
        print(path)
    return 0
