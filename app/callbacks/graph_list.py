"""The graph list and opening a graph (with a clear message when a file cannot be read)."""

from __future__ import annotations

from urllib.parse import parse_qs

from dash import Input, Output, State, ctx, html

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound


def describe(session) -> list:
    g = session.graph
    kind = f"{len(g.images)} image(s), {g.tokens_per_side}x{g.tokens_per_side} soft tokens" if len(g.images) else "text only"
    targets = ", ".join(f"{t.label} ({t.probability:.2f})" for t in g.targets[:4])
    return [html.B(session.name), f" · {g.n_features} features, {g.n_nodes} nodes, {kind} · model {g.model or '?'} · "
            f"targets: {targets}"]


def register(app, state) -> None:
    @app.callback(
        Output(ids.GRAPH_DROPDOWN, "options"), Output(ids.GRAPH_DROPDOWN, "value"),
        Input(ids.URL, "search"), Input(ids.REFRESH_BUTTON, "n_clicks"), State(ids.GRAPH_DROPDOWN, "value"),
    )
    def choose(search, _clicks, current):
        """Page load: the graph named in the URL (?graph=NAME) if it is in the folder, else the
        first one. Refresh: re-read the folder, keep the current graph if it is still there."""
        names = state.store.names()
        options = [{"label": n, "value": n} for n in names]
        if ctx.triggered_id == ids.REFRESH_BUTTON:
            return options, current if current in names else (names[0] if names else None)
        wanted = (parse_qs((search or "").lstrip("?")).get("graph") or [None])[0]
        return options, wanted if wanted in names else (names[0] if names else None)

    @app.callback(
        Output(ids.STORE_GRAPH, "data"), Output(ids.STATUS, "children"), Output(ids.STATUS, "className"),
        Input(ids.GRAPH_DROPDOWN, "value"),
    )
    def open_graph(name):
        if not name:
            return ({"name": None}, f"No graph files in {state.graphs_dir} (looking for *.graph.safetensors, *.json, *.pt).",
                    "status warning")
        try:
            session = state.store.session(name)
        except GraphNotFound:
            return {"name": None, "error": True}, f"{name!r} is not a graph in the graphs folder.", "status error"
        except GraphFormatError as err:
            return ({"name": None, "error": True}, [html.B("Cannot open this graph. "), str(err)], "status error")
        return {"name": name}, describe(session), "status"
