"""`python -m tracer steer`: edit transcoder features (or ablate an image region) and compare answers."""

from __future__ import annotations

import json
import sys

from tracer.commands.common import (
    HelpFormatter, add_model_arguments, add_prompt_arguments, check_writable, image_from_args, non_negative_int,
    positive_int,
)


def register(sub) -> None:
    p = sub.add_parser(
        "steer", help="ablate / scale / set transcoder features and compare the answer before and after",
        description="Run an image + text prompt clean and with transcoder features edited, and print the top-k "
        "next-token probabilities before and after (and, with --generate, greedy generations with the image in "
        "the prompt). Each --feature is LAYER:FEATURE[:MODE[:VALUE]] with MODE ablate (default), scale (VALUE is "
        "the factor) or set (VALUE is the activation); the edit adds (new - old activation) x the feature's "
        "decoder row to that layer's MLP output. --ablate-region zero- or mean-ablates image soft tokens "
        "instead. Example: python -m tracer steer --prompt 'What color is the circle?' --image scene.png "
        "--feature 2:17 --feature 3:5:set:8 --positions last --generate 8. Which features are worth steering: "
        "python -m tracer steer --graph G.graph.safetensors --top-features 10 lists a graph's most influential "
        "features with the --feature spec of each.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    add_prompt_arguments(p, required=False)
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
    p.add_argument("--generate", type=non_negative_int, default=0, metavar="N",
                   help="also generate N tokens greedily before and after the edit (attention live)")
    p.add_argument("--ablate-region", default=None, metavar="CELLS",
                   help="instead of feature edits: ablate these image cells 'row,col;row,col' (one cell: 'row,col'; "
                   "with several images name the image, counting from 0: 'img1:row,col;row,col' or "
                   "'i,row,col'), or image soft-token sequence positions 'pos:40,41'")
    p.add_argument("--region-mode", choices=["zero", "mean"], default="zero",
                   help="region ablation: replace the soft tokens by zeros or by the image's mean soft token")
    p.add_argument("--top-k", type=positive_int, default=10, help="tokens listed before and after")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--graph", default=None, metavar="G.graph.safetensors",
                   help="with --top-features: the attribution graph whose features to list")
    p.add_argument("--top-features", type=positive_int, default=None, metavar="N",
                   help="list the N features of --graph with the most influence on its targets, each with the "
                   "--feature spec and --positions that steer it (no model is loaded)")
    p.set_defaults(handler=_steer)


def _steer(args) -> int:
    from tracer.interventions import (
        FeatureIntervention, ablate_region, intervene, parse_positions, steered_generate,
    )
    from tracer.interventions.common import parse_region

    if args.top_features is not None or args.graph:
        return _top_features(args)
    if not args.prompt:
        print("error: --prompt is required (or list a graph's features with --graph G --top-features N)",
              file=sys.stderr)
        return 2
    if not args.feature and not args.ablate_region:
        print("error: give at least one --feature or --ablate-region", file=sys.stderr)
        return 2
    if args.json:
        check_writable(args.json)
    image = image_from_args(args)
    try:
        positions = parse_positions(args.positions)
        features = [FeatureIntervention.parse(spec, positions) for spec in args.feature]
        n_images = len(image) if isinstance(image, list) else int(image is not None)
        region = parse_region(args.ablate_region, n_images) if args.ablate_region else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
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
            for iv in features:
                if not any(a["layer"] == iv.layer and a["feature"] == iv.feature and a["before"] != a["after"]
                           for a in r.applied):
                    print(f"warning: {iv.label} changes no activation: the feature is not active at positions "
                          f"{args.positions!r} of this prompt (ablate and scale only change an active feature; "
                          "use :set:VALUE, or find features worth steering with --graph G --top-features N)",
                          file=sys.stderr)
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


def _top_features(args) -> int:
    """The graph's most influential features, each with the steer arguments that edit it."""
    import numpy as np

    from tracer.graph.formats import open_any_graph
    from tracer.graph.graph import ATTENTION_GRAPH
    from tracer.graph.pruning import node_influence

    if not args.graph or args.top_features is None:
        print("error: --top-features N and --graph G go together", file=sys.stderr)
        return 2
    graph = open_any_graph(args.graph)
    if graph.kind == ATTENTION_GRAPH or not graph.n_features:
        print(f"error: {args.graph} has no transcoder features to steer", file=sys.stderr)
        return 2
    influence = node_influence(graph)[: graph.n_features]
    order = np.argsort(-influence, kind="stable")[: args.top_features]
    print(f"the {len(order)} most influential of {graph.n_features} features of {graph.slug or args.graph} on "
          f"[{', '.join(t.label for t in graph.targets)}]:")
    print(f"{'influence':>9}  {'activation':>10}  {'steer with':<36} where")
    for i in order.tolist():
        layer, pos, feat = (int(x) for x in graph.features[i])
        spec = f"--feature {layer}:{feat} --positions {pos}"
        print(f"{influence[i]:9.4f}  {float(graph.activations[i]):10.4f}  {spec:<36} {graph.position_text(pos)}")
    print("(ablates by default; :scale:F or :set:A after the feature edits it otherwise)")
    return 0
