"""`python -m tracer export ...` and `python -m tracer import ...`: other tools' graph formats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tracer.commands.common import HelpFormatter, check_graph_output, check_writable, share


def _add_threshold_flags(p: argparse.ArgumentParser) -> None:
    # circuit-tracer spells these with underscores; accept dashes too.
    p.add_argument("--node_threshold", "--node-threshold", dest="node_threshold", type=share, default=0.8,
                   help="keep the feature nodes holding this share of the influence on the logits")
    p.add_argument("--edge_threshold", "--edge-threshold", dest="edge_threshold", type=share, default=0.98,
                   help="keep the edges holding this share of the influence")


def register(sub) -> None:
    ex = sub.add_parser(
        "export", help="write a graph as circuit-tracer / Neuronpedia JSON or GraphML",
        description="Export a graph (ours, viewer JSON or a reference .pt) to the circuit-tracer / "
        "Neuronpedia graph JSON (DIR/<slug>.json plus DIR/graph-metadata.json, updated by slug) or "
        "GraphML (DIR/<slug>.graphml), pruned by influence as circuit-tracer does.",
        formatter_class=HelpFormatter,
    )
    ex.add_argument("graph", metavar="GRAPH", help="graph file (.graph.safetensors, .json or .pt)")
    ex.add_argument("--format", choices=["neuronpedia", "graphml"], default="neuronpedia",
                    help="neuronpedia: circuit-tracer / Neuronpedia graph JSON + graph-metadata.json; graphml: GraphML")
    ex.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_threshold_flags(ex)
    ex.add_argument("--no-prune", "--no_prune", dest="no_prune", action="store_true",
                    help="write every node and non-zero edge (thresholds ignored)")
    ex.add_argument("--slug", default=None, help="graph name in the viewer (default: the graph's slug or file name)")
    ex.add_argument("--scan", default=None, help="transcoder set id for Neuronpedia (default: the graph's)")
    ex.add_argument("--labels", default=None, metavar="JSON",
                    help="labels to include: a JSON file {node_id: label} or {\"labels\": {...}, "
                    "\"supernodes\": [[label, node_id, ...]], \"pinned\": [node_id, ...]}")
    ex.add_argument("--no-images", "--no_images", dest="no_images", action="store_true",
                    help="do not embed the input images in the JSON")
    ex.set_defaults(handler=_export)

    im = sub.add_parser(
        "import", help="convert a viewer JSON or reference .pt graph to our graph file",
        description="Read a circuit-tracer / Neuronpedia graph JSON or a reference .pt graph (safely: no "
        "pickled code runs) and write it as a .graph.safetensors file. What the source format lacks "
        "(e.g. constant terms) is recorded as missing.",
        formatter_class=HelpFormatter,
    )
    im.add_argument("file", metavar="FILE", help="circuit-tracer / Neuronpedia graph JSON or a reference .pt graph")
    im.add_argument("--out", required=True, metavar="G.graph.safetensors", help="our graph file to write")
    im.set_defaults(handler=_import)


def _read_labels(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the labels file ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if any(k in data for k in ("labels", "supernodes", "pinned", "pinnedIds")):
        out = {"labels": data.get("labels") or {}, "supernodes": data.get("supernodes") or [],
               "pinned_ids": data.get("pinned") or data.get("pinnedIds") or []}
    else:
        out = {"labels": data}
    # shapes checked here, so that a wrong one is a message rather than a traceback mid-export
    if not isinstance(out["labels"], dict):
        raise ValueError(f"{path}: labels must be an object {{node_id: label}}")
    if not isinstance(out.get("pinned_ids", []), list):
        raise ValueError(f"{path}: pinned must be a list of node ids")
    supernodes = out.get("supernodes", [])
    if not isinstance(supernodes, list) or not all(
            isinstance(sn, list) or (isinstance(sn, dict) and isinstance(sn.get("members", []), list))
            for sn in supernodes):
        raise ValueError(f"{path}: supernodes must be a list of [label, node_id, ...] lists")
    return out


def _export(args) -> int:
    from tracer.graph.errors import GraphFormatError
    from tracer.graph.formats import open_any_graph
    from tracer.graph.pruning import prune

    from tracer.graph.graph import ATTENTION_GRAPH

    check_writable(args.out, folder=True)
    try:
        graph = open_any_graph(args.graph)
        extra = _read_labels(args.labels)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
    except (GraphFormatError, OSError, ValueError) as err:  # bad input: exit 2, as every command
        print(f"error: {err}", file=sys.stderr)
        return 2
    if graph.kind == ATTENTION_GRAPH and args.format == "neuronpedia":
        print("error: an attention graph has no circuit-tracer / Neuronpedia JSON form: its nodes are (layer, "
              "position) residual-stream states, not transcoder features; export it with --format graphml, or open "
              "the .graph.safetensors in python -m app", file=sys.stderr)
        return 2
    slug = args.slug or graph.slug or Path(args.graph).name.split(".")[0]
    pruned = None if args.no_prune else prune(graph, args.node_threshold, args.edge_threshold)
    if args.format == "neuronpedia":
        from tracer.graph.neuronpedia import export_neuronpedia

        path = export_neuronpedia(graph, args.out, slug=slug, pruned=pruned, prune=False, scan=args.scan,
                                  include_images=not args.no_images, **extra)
    else:
        from tracer.graph.graphml import export_graphml
        from tracer.graph.neuronpedia import safe_slug

        path = export_graphml(graph, Path(args.out) / f"{safe_slug(slug)}.graphml", pruned,
                              labels=extra.get("labels"))
    kept = f"{pruned.n_nodes} of {graph.n_nodes} nodes, {pruned.n_edges} edges" if pruned is not None else "unpruned"
    print(f"wrote {path} ({kept})")
    return 0


def _import(args) -> int:
    from tracer.graph.errors import GraphFormatError
    from tracer.graph.formats import open_any_graph
    from tracer.graph.storage import save_graph

    check_graph_output(args.out)
    try:
        graph = open_any_graph(args.file)
    except GraphFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = save_graph(graph, args.out)
    note = "" if graph.info.get("sum_rule_checkable", True) else " (sum rule not checkable: the source lacks constant terms)"
    print(f"wrote {path}: {graph.n_features} features, {graph.n_errors} error nodes, {graph.n_positions} positions, "
          f"{graph.n_logits} logits{note}")
    return 0
