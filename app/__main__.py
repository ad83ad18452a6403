"""python -m app: serve the graph explorer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from app.view.budget import MAX_EDGES, MAX_NODES
    from tracer.commands.common import port, positive_int
    from tracer.toy.shipped import SHIPPED_TOYS

    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=("Explore attribution graphs of vision-language models in the browser. Serves a Dash app "
                     "that lists the graph files in a folder (*.graph.safetensors, and circuit-tracer / "
                     "Neuronpedia JSON and reference .pt graphs where supported) and opens one. Needs no model, "
                     "no GPU and no network: every script and style is served locally."),
        epilog="Labels, pins, hidden nodes and supernodes are saved next to each graph as "
               "<graph file>.annotations.json. See docs/app.md.",
    )
    parser.add_argument("--graphs", metavar="DIR", default=None,
                        help="folder with graph files (default: the sample graphs shipped with the app, app/sample_graphs/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it "
                             "to the network, with no authentication)")
    parser.add_argument("--port", type=port, default=8050, help="port to listen on, 1..65535 (default 8050)")
    parser.add_argument("--debug", action="store_true",
                        help="Dash debug mode: in-browser error pane, hot reload of code and assets")
    parser.add_argument("--examples", metavar="PATH", default=None,
                        help="feature-examples store for top-activating examples, or a folder of stores "
                             "(default: DIR/feature_examples and DIR/feature_examples-* if they exist; each graph "
                             "uses the store of its transcoder set)")
    parser.add_argument("--max-nodes", type=positive_int, default=MAX_NODES,
                        help=f"display budget: most nodes drawn at once (default {MAX_NODES})")
    parser.add_argument("--max-edges", type=positive_int, default=MAX_EDGES,
                        help=f"display budget: most edges drawn at once (default {MAX_EDGES})")
    live = parser.add_argument_group(
        "live features", "New trace, steering, region ablation and attention need a model. By default the shipped "
        "toy VLM and its transcoders, loaded on first use (not at start).")
    live.add_argument("--model", default=None,
                      help="model for the live features: a Hugging Face id, a local folder, or a shipped toy "
                           f"({', '.join(SHIPPED_TOYS)}) (default: the toy VLM)")
    live.add_argument("--transcoders", default=None,
                      help="its transcoder set: hub id or folder with config.yaml (default: a shipped toy's own set)")
    live.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available, else cpu)")
    live.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    live.add_argument("--no-live", action="store_true", help="explorer only: no model, no tracing or steering")
    args = parser.parse_args(argv)
    if args.no_live and any(v is not None for v in (args.model, args.transcoders, args.device, args.dtype)):
        parser.error("--no-live cannot be combined with --model, --transcoders, --device or --dtype")
    if args.model not in (None, "toy") and not args.transcoders:
        parser.error("--model needs --transcoders (the transcoder set of that model)")
    if args.dtype is not None or args.device is not None:  # checked now, not at the first live job
        from tracer.errors import InputError
        from tracer.models.loading import check_device
        from tracer.session import parse_dtype

        try:
            if args.dtype is not None:
                parse_dtype(args.dtype)
            if args.device is not None:
                check_device(args.device)
        except InputError as err:
            parser.error(str(err))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from app.factory import create_app, default_graphs_dir

    graphs = Path(args.graphs) if args.graphs else default_graphs_dir()
    if not graphs.is_dir():
        print(f"error: graphs folder {graphs} does not exist", file=sys.stderr)
        return 2
    live = None
    if not args.no_live:
        from app.live import LiveConfig

        live = LiveConfig(model=args.model, transcoders=args.transcoders, device=args.device, dtype=args.dtype)
    app = create_app(graphs, examples=args.examples, max_nodes=args.max_nodes, max_edges=args.max_edges, live=live)
    print(f"Serving graphs from {graphs.resolve()} at http://{args.host}:{args.port}/", flush=True)
    if live is not None:
        print(f"Live features: {live.describe()} (loaded on first use)", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, dev_tools_disable_version_check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
