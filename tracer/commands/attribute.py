"""`python -m tracer attribute` and `python -m tracer verify`."""

from __future__ import annotations

import re

from tracer.commands.common import (
    HelpFormatter, add_attribution_arguments, add_model_arguments, add_prompt_arguments, check_graph_output,
    check_writable, image_from_args, non_negative_int, positive_int, share,
)


def register(sub) -> None:
    p = sub.add_parser(
        "attribute", help="compute the attribution graph of a prompt (+ image)",
        description="Compute the attribution graph of the model's next token for an image + text prompt "
        "(or text only) through its per-layer transcoders, and save it as a .graph.safetensors file "
        "(and, with --graph_file_dir, as circuit-tracer / Neuronpedia JSON). Defaults: the shipped toy VLM "
        "and its transcoders. Example: python -m tracer attribute --prompt 'What color is the circle?' "
        "--image scene.png --out circle.graph.safetensors",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    add_prompt_arguments(p)
    p.add_argument("-o", "--out", "--graph_output_path", dest="out", default=None,
                   help="graph file to write (default: <slug>.graph.safetensors in the current folder)")
    p.add_argument("--slug", default=None, help="name of the graph (default: from the prompt)")
    p.add_argument("--graph_file_dir", "--graph-file-dir", default=None,
                   help="also write pruned Neuronpedia/circuit-tracer JSON + graph-metadata.json here")
    p.add_argument("--target", action="append", default=None,
                   help="explain this token's logit instead of the salient logits (repeatable); "
                   "'A - B' explains the logit difference, '#123' names a token id")
    add_attribution_arguments(p)
    p.add_argument("--offload", choices=["cpu"], default=None,
                   help="keep the edge rows in host memory (less GPU memory, a little slower)")
    p.add_argument("--lazy-encoder", action="store_true",
                   help="read transcoder encoders from disk chunk by chunk (for sets larger than memory)")
    p.add_argument("--node_threshold", "--node-threshold", type=share, default=0.8,
                   help="pruning of the JSON export: keep features carrying this share of influence")
    p.add_argument("--edge_threshold", "--edge-threshold", type=share, default=0.98,
                   help="pruning of the JSON export: keep edges carrying this share of influence")
    p.add_argument("--include-prefix", action="store_true",
                   help="also make feature nodes at BOS and the chat-template prefix (excluded by default)")
    p.add_argument("--half-edges", "--half_edges", action="store_true",
                   help="store the edges as float16 scaled per row: about half the file, each edge off by at most "
                   "2^-12 of its row's largest (verify then uses its half-precision tolerance, 5e-2)")
    p.add_argument("--verify", action="store_true", help="verify the graph after computing it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_attribute)

    v = sub.add_parser(
        "verify", help="prove a saved graph is exact (perturbation identity and sum rule)",
        description="Re-run the model on the graph's prompt, run the frozen replacement model forward with "
        "sampled sources (features, errors, text and image embeddings) doubled, and check that every "
        "target changes by exactly the stored edge; check the sum rule on every target. Prints the worst "
        "error; exit status 1 when it is above the tolerance for the graph's dtype.",
        formatter_class=HelpFormatter,
    )
    v.add_argument("graph", help="a .graph.safetensors file (or an imported viewer JSON graph)")
    v.add_argument("-m", "--model", default=None, help="model (default: the one recorded in the graph)")
    v.add_argument("-t", "--transcoders", default=None, help="transcoders (default: those recorded in the graph)")
    v.add_argument("--sources", type=positive_int, default=24, help="how many sources to perturb")
    v.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    v.add_argument("--dtype", default=None, help="re-run in this dtype (default: the graph's)")
    v.add_argument("--seed", type=non_negative_int, default=0, help="which sources are sampled")
    v.set_defaults(handler=_verify)


def slug_from(prompt: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", prompt.lower())
    return "-".join(words[:8]) or "graph"


def _attribute(args) -> int:
    from tracer.graph import save_graph
    from tracer.graph.neuronpedia import safe_slug
    from tracer.session import TracingSession

    # a slug names files (the default graph file, the viewer JSON): letters, digits, '.', '_' and '-' only
    slug = safe_slug(args.slug) if args.slug else slug_from(args.prompt)
    out = check_graph_output(args.out or f"{slug}.graph.safetensors")
    if args.graph_file_dir:
        check_writable(args.graph_file_dir, folder=True)
    image = image_from_args(args)
    session = TracingSession(args.model, args.transcoders, device=args.device, dtype=args.dtype)
    graph = session.attribute(
        args.prompt, image, slug=slug,
        max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob, targets=args.target,
        max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, offload=args.offload,
        chat=not args.no_chat, exclude_prefix=not args.include_prefix, progress=not args.quiet,
    )
    path = save_graph(graph, out, half=args.half_edges)
    t = graph.info.get("timings_s", {}).get("total", 0.0)
    print(f"{path}: {graph.n_features} features, {graph.n_errors} error nodes, {graph.n_positions} positions "
          f"({len(graph.image_positions)} image), {graph.n_logits} targets "
          f"[{', '.join(f'{x.label} p={x.probability:.3f}' for x in graph.targets)}] in {t:.2f} s; "
          f"replacement {graph.scores.get('replacement', 0):.3f}, completeness {graph.scores.get('completeness', 0):.3f}")
    phases = {k: v for k, v in graph.info.get("timings_s", {}).items() if k != "total"}
    if phases:
        print("phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    if args.graph_file_dir:
        from tracer.graph.neuronpedia import export_neuronpedia

        written = export_neuronpedia(graph, args.graph_file_dir, slug=slug, node_threshold=args.node_threshold,
                                     edge_threshold=args.edge_threshold)
        print(f"wrote {written}")
    if args.verify:
        report = session.verify(graph)
        print(report.format())
        return 0 if report.ok else 1
    return 0


def _verify(args) -> int:
    from tracer.attribution.verify import check_verifiable, graph_dtype
    from tracer.graph.formats import open_any_graph
    from tracer.session import TracingSession

    graph = open_any_graph(args.graph)
    check_verifiable(graph)  # before loading any model
    if not args.model and not graph.model:
        from tracer.errors import InputError

        raise InputError(f"{args.graph} does not name its model: give --model (and --transcoders)")
    # names read from the file are only looked up locally; names on the command line may use the hub
    session = TracingSession(args.model or graph.model, args.transcoders or graph.transcoders or None,
                             device=args.device, dtype=args.dtype or graph_dtype(graph),
                             model_from_file=not args.model, transcoders_from_file=not args.transcoders)
    report = session.verify(graph, n_sources=args.sources, seed=args.seed)
    print(report.format())
    return 0 if report.ok else 1
