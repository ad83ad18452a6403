"""Exports: Neuronpedia / circuit-tracer JSON and GraphML of the current view or the pinned
subgraph (labels, pins and supernodes included), PNG / SVG pictures of the drawn view."""

from __future__ import annotations

from dash import Input, Output, State, ctx, no_update

from tracer.graph import GraphFormatError

from app import graph_store, ids
from app.graph_store import GraphNotFound
from app.view.build import PINNED


def register(app, state) -> None:
    @app.callback(
        Output(ids.DOWNLOAD, "data"), Output(ids.EXPORT_MESSAGE, "children"),
        Input(ids.EXPORT_JSON, "n_clicks"), Input(ids.EXPORT_GRAPHML, "n_clicks"),
        State(ids.EXPORT_SCOPE, "value"), State(ids.STORE_GRAPH, "data"), State(ids.NODE_SLIDER, "value"),
        State(ids.EDGE_SLIDER, "value"), State(ids.VIEW_MODE, "value"),
        prevent_initial_call=True,
    )
    def export(_json, _graphml, scope, graph, nt, et, mode):
        name = (graph or {}).get("name")
        if not name:
            return no_update, "Open a graph first."
        try:
            current = state.current(name, nt, et, PINNED if scope == "pinned" else mode)
        except (GraphNotFound, GraphFormatError) as err:
            return no_update, str(err)
        view = current.view
        if len(view.node_indices) == 0:
            return no_update, "Nothing to export (pin some nodes first)." if scope == "pinned" else "The view is empty."
        stem = name.split(".")[0]
        suffix = "pinned" if scope == "pinned" else "view"
        args = (current.session, view.node_indices, view.edge_mask, current.annotations)
        if ctx.triggered_id == ids.EXPORT_GRAPHML:
            text, filename = graph_store.export_graphml(*args), f"{stem}.{suffix}.graphml"
        else:
            text, filename = graph_store.export_neuronpedia(*args, slug=f"{stem}-{suffix}"), f"{stem}.{suffix}.json"
        return ({"content": text, "filename": filename, "type": "application/octet-stream"},
                f"{filename}: {len(view.node_indices)} nodes, {len(view.edge_rows)} edges")

    @app.callback(
        Output(ids.CYTO, "generateImage"),
        Input(ids.EXPORT_PNG, "n_clicks"), Input(ids.EXPORT_SVG, "n_clicks"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def picture(_png, _svg, graph):
        name = ((graph or {}).get("name") or "graph").split(".")[0]
        kind = "svg" if ctx.triggered_id == ids.EXPORT_SVG else "png"
        options = {"full": True, "bg": "white"}
        if kind == "png":
            options["scale"] = 2
        return {"type": kind, "action": "download", "filename": f"{name}-view", "options": options}
