"""`python -m tracer attention`: the attention graph of a prompt, and the image's vision attention maps."""

from __future__ import annotations

import sys
from pathlib import Path

from tracer.commands.common import (
    HelpFormatter, add_model_arguments, add_prompt_arguments, check_graph_output, image_from_args, non_negative_float,
    positive_int, probability,
)


def register(sub) -> None:
    p = sub.add_parser(
        "attention", help="attention graph (information flow between positions) and vision attention maps",
        description="Compute how information moves between positions through the attention heads for an "
        "image + text prompt: nodes (layer, position), edges = each head's value-output contribution from a key "
        "position to a query position (frozen pattern and norms) times the gradient of the target logits, "
        "summed over heads, plus residual edges. Writes it as a graph file the explorer opens "
        "(.graph.safetensors; feature nodes are (layer, position, -1)), the full per-head array as "
        "<out>.heads.npz, and for an image the vision tower's attention maps per soft token (rollout and "
        "hidden-state similarity on the patch grid) as <out>.vision.npz. See docs/attention.md. Example: "
        "python -m tracer attention --prompt 'What color is the circle?' --image scene.png --out circle-attn",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p, "transcoder set (its skips enter the gradients; default: the shipped toy set)")
    add_prompt_arguments(p)
    p.add_argument("-o", "--out", required=True,
                   help="output path stem: writes <out>.graph.safetensors, <out>.heads.npz, <out>.vision.npz")
    p.add_argument("--target", action="append", default=None,
                   help="explain this token (repeatable; 'A - B' for a logit difference); default: salient logits")
    p.add_argument("--max-n-logits", type=positive_int, default=10, help="at most this many salient logits")
    p.add_argument("--desired-logit-prob", type=probability, default=0.95,
                   help="salient logits up to this probability")
    p.add_argument("--max-nodes", type=positive_int, default=None,
                   help="keep only this many (layer, position) nodes in the graph file, most influential first")
    p.add_argument("--rollout-layers", type=positive_int, default=None,
                   help="vision rollout over this many last vision layers (default: all)")
    p.add_argument("--identity-weight", type=non_negative_float, default=0.5,
                   help="weight of the identity mixed into each vision layer's attention for rollout")
    p.add_argument("--no-vision", action="store_true", help="skip the vision attention maps")
    p.add_argument("--slug", default=None, help="name of the graph (default: from the prompt)")
    p.set_defaults(handler=_attention)


def _stem(out: str) -> Path:
    path = Path(out)
    for suffix in (".graph.safetensors", ".safetensors", ".npz"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def _attention(args) -> int:
    from tracer.attention import attention_graph, vision_attention_maps
    from tracer.commands.attribute import slug_from
    from tracer.graph import save_graph
    from tracer.interventions.common import prompt_inputs
    from tracer.models.base import VisionMapsUnavailable
    from tracer.session import TracingSession

    stem = _stem(args.out)
    check_graph_output(stem.with_name(stem.name + ".graph.safetensors"))
    image = image_from_args(args)
    session = TracingSession(args.model, args.transcoders, device=args.device, dtype=args.dtype)
    maps = None
    try:  # everything is computed before anything is written: a bad option leaves no partial output
        pi = prompt_inputs(session, args.prompt, image, chat=not args.no_chat)
        ag = attention_graph(session, pi, targets=args.target, max_n_logits=args.max_n_logits,
                             desired_logit_prob=args.desired_logit_prob)
        if image is not None and not args.no_vision:
            try:
                maps = vision_attention_maps(session, pi, last_layers=args.rollout_layers,
                                             identity_weight=args.identity_weight)
            except VisionMapsUnavailable as err:
                print(f"note: {err}; the attention graph is written without them", file=sys.stderr)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    graph = ag.to_graph(max_feature_nodes=args.max_nodes)
    graph.slug = args.slug or slug_from(args.prompt) + "-attention"
    written = []
    heads_path = ag.save_npz(stem.with_name(stem.name + ".heads.npz"))
    graph.info["heads_file"] = heads_path.name
    if maps is not None:
        vision_path = maps.save_npz(stem.with_name(stem.name + ".vision.npz"))
        graph.info["vision_maps_file"] = vision_path.name
        written.append(vision_path)
    path = save_graph(graph, stem.with_name(stem.name + ".graph.safetensors"))
    written = [path, heads_path] + written
    print(f"attention graph: {ag.n_layers} layers x {ag.n_positions} positions, {ag.n_heads} heads, targets "
          f"[{', '.join(t.label for t in ag.targets)}]; {graph.n_features} nodes in the graph file")
    for w in written:
        print(f"wrote {w}")
    return 0
