"""`python -m tracer steer`: edit transcoder features (or ablate an image region) and compare answers."""

from __future__ import annotations

import json
import sys

from tracer.commands.common import HelpFormatter, add_model_arguments, add_prompt_arguments, image_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "steer", help="ablate / scale / set transcoder features and compare the answer before and after",
        description="Run an image + text prompt clean and with transcoder features edited, and print the top-k "
        "next-token probabilities before and after (and, with --generate, greedy generations with the image in "
        "the prompt). Each --feature is LAYER:FEATURE[:MODE[:VALUE]] with MODE ablate (default), scale (VALUE is "
        "the factor) or set (VALUE is the activation); the edit adds (new - old activation) x the feature's "
        "decoder row to that layer's MLP output. --ablate-region zero- or mean-ablates image soft tokens "
        "instead. Example: python -m tracer steer --prompt 'What color is the circle?' --image scene.png "
        "--feature 2:17 --feature 3:5:set:8 --positions last --generate 8",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    add_prompt_arguments(p)
    p.add_argument("--feature", action="append", default=[], metavar="L:F[:MODE[:VALUE]]",
                   help="feature to edit (repeatable): e.g. 2:17 (ablate), 2:17:scale:3, 2:17:set:5")
    p.add_argument("--positions", default="active",
                   help="where the edits apply: active (where the feature fires), last (last prompt position), "
                   "all, generated (last prompt position and every generated token), sequence positions "
                   "'40,41,-1', or image cells 'row,col;row,col' / 'image,row,col;...'")
    p.add_argument("--freeze-attention", action="store_true",
                   help="freeze attention patterns to the clean run's (next-token comparison only)")
    p.add_argument("--direct-only", action="store_true",
                   help="freeze attention, norms and every other MLP output: only the edited features' direct "
                   "effects remain (a logit then moves by exactly minus the features' attribution edges)")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also generate N tokens greedily before and after the edit (attention live)")
    p.add_argument("--ablate-region", default=None, metavar="CELLS",
                   help="instead of feature edits: ablate these image cells 'row,col;row,col' (or positions '40,41')")
    p.add_argument("--region-mode", choices=["zero", "mean"], default="zero",
                   help="region ablation: replace the soft tokens by zeros or by the image's mean soft token")
    p.add_argument("--top-k", type=int, default=10, help="tokens listed before and after")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=_steer)


def _steer(args) -> int:
    from tracer.interventions import (
        FeatureIntervention, ablate_region, intervene, parse_positions, steered_generate,
    )

    if not args.feature and not args.ablate_region:
        print("error: give at least one --feature or --ablate-region", file=sys.stderr)
        return 2
    image = image_from_args(args)
    try:
        positions = parse_positions(args.positions)
        features = [FeatureIntervention.parse(spec, positions) for spec in args.feature]
        region = parse_positions(args.ablate_region) if args.ablate_region else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if region is not None and isinstance(region, str):
        print("error: --ablate-region takes cells 'row,col;row,col' or positions '40,41'", file=sys.stderr)
        return 2
    chat = not args.no_chat
    session = _session(args, need_transcoders=bool(features))
    report: dict = {}
    try:
        if region is not None:
            r = ablate_region(session, args.prompt, image, region, mode=args.region_mode, top_k=args.top_k, chat=chat)
            print(f"region ablation ({args.region_mode}) of {len(r.positions)} soft tokens {r.cells}")
            print(r.format())
            report["region"] = r.to_dict()
        if features:
            r = intervene(session, args.prompt, image, features, freeze_attention=args.freeze_attention,
                          direct_only=args.direct_only, top_k=args.top_k, chat=chat)
            print("interventions: " + ", ".join(iv.label for iv in features) + f" at {args.positions}"
                  + (" (direct effects only)" if args.direct_only else
                     " (attention frozen)" if args.freeze_attention else ""))
            print(f"edited {len(r.applied)} (feature, position) activations")
            print(r.format())
            print(f"answer: {r.answer_before!r} -> {r.answer_after!r}")
            report["intervention"] = r.to_dict()
            if args.generate:
                before, after = steered_generate(session, args.prompt, image, features, max_new_tokens=args.generate,
                                                 chat=chat)
                print(f"generation before: {before!r}")
                print(f"generation after:  {after!r}")
                report["generation"] = {"before": before, "after": after}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _session(args, need_transcoders: bool):
    """A TracingSession; without transcoders (region ablation only) a model + processor bundle."""
    if need_transcoders:
        from tracer.session import TracingSession

        return TracingSession(args.model, args.transcoders, device=args.device, dtype=args.dtype)
    from tracer.interventions import Bundle
    from tracer.models.loading import load_vlm
    from tracer.session import default_device, parse_dtype

    model, processor = load_vlm(args.model, dtype=parse_dtype(args.dtype), device=args.device or default_device())
    return Bundle(model, processor)
