"""`python -m tracer supernodes GRAPH`: suggested groupings of a graph's features."""

from __future__ import annotations

import json

from tracer.commands.common import HelpFormatter, positive_int, probability


def register(sub) -> None:
    p = sub.add_parser(
        "supernodes", help="suggest supernodes: features reading the same image cells, sharing edges or decoders",
        description="Suggest groups of a graph's influential features that act as one unit: image-driven "
        "features whose input comes from the same image cells (named after the toy object under them when the "
        "graph records its scene), features with alike input and output edges, and, with --transcoders, features "
        "with alike decoder directions. Each suggestion has a reason and a score (mean pairwise similarity x "
        "the members' share of the feature influence). Example: python -m tracer supernodes "
        "app/sample_graphs/color-heldout2-what-color-is-the-cross.graph.safetensors --top 5",
        formatter_class=HelpFormatter,
    )
    p.add_argument("graph", metavar="GRAPH", help="graph file (.graph.safetensors, viewer .json or reference .pt)")
    p.add_argument("--top", type=positive_int, default=10, help="suggestions printed, best score first")
    p.add_argument("--threshold", type=probability, default=0.8,
                   help="every pair in a group is at least this alike (cosine, in (0, 1])")
    p.add_argument("--node-threshold", type=probability, default=0.8,
                   help="consider the features kept at this share of the feature influence")
    p.add_argument("--transcoders", default=None,
                   help="transcoder set whose decoder rows to compare too (e.g. toy-plt for the shipped set); "
                        "a graph file does not store decoder directions")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_supernodes)


def decoder_rows(graph, transcoders_ref: str):
    """(n_features, d_model) decoder rows of the graph's features from a transcoder set."""
    import numpy as np
    import torch

    from tracer.transcoders import load_transcoder_set
    from tracer.transcoders.errors import TranscoderMismatchError

    ts = load_transcoder_set(None if transcoders_ref in ("toy", "toy-plt") else transcoders_ref, device="cpu")
    out = None
    for layer in sorted(set(graph.features[:, 0].tolist())):
        rows = np.flatnonzero(graph.features[:, 0] == layer)
        widest = int(graph.features[rows, 2].max())  # the graph's features must be in this set
        if layer not in ts or widest >= ts[layer].d_transcoder:
            have = f"{ts[layer].d_transcoder} features there" if layer in ts else "no transcoder there"
            raise TranscoderMismatchError(f"{transcoders_ref}: the graph has feature {widest} at layer {layer}, the set "
                                          f"has {have}: not the transcoders this graph was traced with")
        if out is None:
            out = np.zeros((graph.n_features, ts[layer].d_model))
        if ts[layer].d_model != out.shape[1]:
            raise TranscoderMismatchError(f"{transcoders_ref}: its layers differ in d_model")
        out[rows] = ts[layer].decoder_rows(torch.as_tensor(graph.features[rows, 2])).double().cpu().numpy()
    return out if out is not None else np.zeros((0, 0))


def _supernodes(args) -> int:
    from tracer.graph.formats import open_any_graph
    from tracer.graph.supernodes import format_suggestions, suggest_supernodes

    graph = open_any_graph(args.graph)
    decoders = decoder_rows(graph, args.transcoders) if args.transcoders and graph.n_features else None
    found = suggest_supernodes(graph, top=args.top, threshold=args.threshold, node_threshold=args.node_threshold,
                               decoders=decoders)
    if args.json:
        print(json.dumps([s.to_dict() for s in found], indent=1))
    else:
        print(format_suggestions(found, graph))
        if decoders is None:
            print("(decoder directions not compared: the graph file does not store them; pass --transcoders)")
    return 0
