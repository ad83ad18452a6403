"""Exports: Neuronpedia / circuit-tracer JSON and GraphML of the current view or the pinned
subgraph (labels, pins and supernodes included), PNG / SVG pictures of the drawn view or of
the subgraph pane. Every export says what it wrote (no message left from the previous one)."""

from __future__ import annotations

from dash import Input, Output, State, ctx, no_update

from tracer.graph import GraphFormatError

from app import graph_store, ids
from app.graph_store import GraphNotFound
from app.view.build import PINNED, feature_budget


def register(app, state) -> None:
    @app.callback(
        Output(ids.DOWNLOAD, "data"), Output(ids.EXPORT_MESSAGE, "children"),
        Input(ids.EXPORT_JSON, "n_clicks"), Input(ids.EXPORT_GRAPHML, "n_clicks"),
        State(ids.EXPORT_SCOPE, "value"), State(ids.STORE_GRAPH, "data"), State(ids.NODE_SLIDER, "value"),
        State(ids.EDGE_SLIDER, "value"), State(ids.VIEW_MODE, "value"), State(ids.FEATURE_BUDGET, "value"),
        prevent_initial_call=True,
    )
    def export(_json, _graphml, scope, graph, nt, et, mode, budget):
        name = (graph or {}).get("name")
        if not name:
            return no_update, "Open a graph first."
        try:
            current = state.current(name, nt, et, PINNED if scope == "pinned" else mode, feature_budget(budget))
        except (GraphNotFound, GraphFormatError) as err:
            return no_update, str(err)
        view = current.view
        if len(view.node_indices) == 0:
            return no_update, "Nothing to export (pin some nodes first)." if scope == "pinned" else "The view is empty."
        stem = name.split(".")[0]
        suffix = "pinned" if scope == "pinned" else "view"
        args = (current.session, view.node_indices, view.edge_mask, current.annotations)
        try:  # the writers check what they write: a graph they refuse is a message, not a 500
            if ctx.triggered_id == ids.EXPORT_GRAPHML:
                text, filename = graph_store.export_graphml(*args), f"{stem}.{suffix}.graphml"
            else:
                text, filename = graph_store.export_neuronpedia(*args, slug=f"{stem}-{suffix}"), f"{stem}.{suffix}.json"
        except ValueError as err:  # GraphFormatError included
            return no_update, f"Cannot export {name}: {err}"
        return ({"content": text, "filename": filename, "type": "application/octet-stream"},
                f"{filename}: {len(view.node_indices)} nodes, {len(view.edge_rows)} edges")

    @app.callback(
        Output(ids.CYTO, "generateImage"), Output(ids.SUBGRAPH, "generateImage"),
        Output(ids.EXPORT_MESSAGE, "children", allow_duplicate=True),
        Input(ids.EXPORT_PNG, "n_clicks"), Input(ids.EXPORT_SVG, "n_clicks"), State(ids.EXPORT_SCOPE, "value"),
        State(ids.STORE_GRAPH, "data"), State(ids.STORE_ANNOT_REV, "data"),
        prevent_initial_call=True,
    )
    def picture(_png, _svg, scope, graph, _rev):
        name = (graph or {}).get("name")
        if not name:
            return no_update, no_update, "Open a graph first."
        pinned = scope == "pinned"
        if pinned:
            try:
                current = state.current(name, None, None, PINNED)
            except (GraphNotFound, GraphFormatError) as err:
                return no_update, no_update, str(err)
            if len(current.view.node_indices) == 0:
                return no_update, no_update, "Nothing to export (pin some nodes first)."
        kind = "svg" if ctx.triggered_id == ids.EXPORT_SVG else "png"
        options = {"full": True, "bg": "white"}
        if kind == "png":
            options["scale"] = 2
        filename = f"{name.split('.')[0]}-{'pinned' if pinned else 'view'}"
        request = {"type": kind, "action": "download", "filename": filename, "options": options}
        message = f"{filename}.{kind}: picture of the {'subgraph pane' if pinned else 'drawn view'}"
        return (no_update, request, message) if pinned else (request, no_update, message)
