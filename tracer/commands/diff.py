"""`python -m tracer diff A B --out DIR`: what changed between two circuits."""

from __future__ import annotations

from tracer.commands.common import HelpFormatter, check_writable, non_negative_int, probability, share


def register(sub) -> None:
    p = sub.add_parser(
        "diff", help="compare two graphs: nodes and edges that appear, vanish or change influence",
        description="Align two attribution graphs of the same model and transcoders (features by layer and "
        "index at aligned positions; image soft tokens by grid cell, text positions by aligning the prompts; "
        "logits by label) and report the nodes and edges that appear in B, vanish from A or change influence, "
        "and the image cells whose pixels changed. Writes DIR/diff.json, DIR/nodes.csv, DIR/edges.csv and, "
        "with images, DIR/images.png (A, B, changed cells outlined). Example: python -m tracer diff "
        "red.graph.safetensors blue.graph.safetensors --out red-vs-blue",
        formatter_class=HelpFormatter,
    )
    p.add_argument("a", metavar="A", help="first graph file (.graph.safetensors, viewer .json or reference .pt)")
    p.add_argument("b", metavar="B", help="second graph file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--node_threshold", "--node-threshold", dest="node_threshold", type=probability, default=0.8,
                   help="compare the nodes either graph keeps at this share of influence")
    p.add_argument("--edge_threshold", "--edge-threshold", dest="edge_threshold", type=probability, default=0.98,
                   help="compare the edges either graph keeps at this share of influence")
    p.add_argument("--min-change", dest="min_change", type=share, default=0.25,
                   help="a node or edge in both graphs 'changed' when it moves by this fraction of its larger value")
    p.add_argument("--top", type=non_negative_int, default=10, help="rows printed per kind of change")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare graphs traced with different models or transcoder sets (features then mean "
                        "different things: only for graphs you know to be comparable)")
    p.set_defaults(handler=_diff)


def _diff(args) -> int:
    from pathlib import Path

    from tracer.graph.diff import diff_graphs, save_diff
    from tracer.graph.formats import open_any_graph

    out = check_writable(args.out, folder=True)
    a, b = open_any_graph(args.a), open_any_graph(args.b)
    diff = diff_graphs(a, b, args.node_threshold, args.edge_threshold, args.min_change,
                       names=(Path(args.a).name, Path(args.b).name), allow_mismatch=args.allow_mismatch)
    written = save_diff(diff, out, a, b)
    print(diff.format(args.top))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
