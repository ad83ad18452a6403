"""Selecting a node (graph click or a node link): details, label editor, highlight of its
strongest inputs and outputs, activations over the prompt, top-activating examples."""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.panels.details_render import details_children, examples_children, token_strip
from app.view.build import DECORATIONS, selection_highlight
from app.view.details import node_details


def register(app, state) -> None:
    @app.callback(
        Output(ids.STORE_SELECTED, "data"),
        Input(ids.CYTO, "tapNodeData"), Input({"type": ids.GOTO_NODE, "key": ALL}, "n_clicks"),
        Input(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def select(tap, _clicks, _graph):
        trigger = ctx.triggered_id
        if trigger == ids.STORE_GRAPH:
            return None
        if trigger == ids.CYTO:
            if not tap or tap.get("kind") in DECORATIONS:
                return no_update
            return tap["id"]
        if isinstance(trigger, dict) and ctx.triggered and ctx.triggered[0].get("value"):
            return trigger["key"]
        return no_update

    @app.callback(
        Output(ids.DETAILS_TITLE, "children"), Output(ids.DETAILS, "children"),
        Output(ids.LABEL_INPUT, "value"), Output(ids.LABEL_INPUT, "disabled"), Output(ids.LABEL_SAVE, "disabled"),
        Output(ids.TOKEN_STRIP, "children"), Output(ids.EXAMPLES, "children"),
        Input(ids.STORE_SELECTED, "data"), Input(ids.STORE_ANNOT_REV, "data"),
        State(ids.STORE_GRAPH, "data"), State(ids.NODE_SLIDER, "value"), State(ids.EDGE_SLIDER, "value"),
        State(ids.VIEW_MODE, "value"),
    )
    def details(key, _rev, graph, nt, et, mode):
        name = (graph or {}).get("name")
        empty = ("Details", details_children(None, True), "", True, True, [], [])
        if not name or not key:
            return empty
        try:
            current = state.current(name, nt, et, mode)
        except (GraphNotFound, GraphFormatError):
            return empty
        d = node_details(current.session, key, current.annotations)
        if d is None:
            return empty
        in_view = key in set(current.view.display_of.values())
        title = [html.Span(d["kind"], className=f"kind-badge {d['kind']}"),
                 html.Span(d["label"] or d["default_label"], className="details-label")]
        strip = token_strip(current.session, d.get("position_activations")) if d["kind"] == "feature" else []
        examples = []
        if d["kind"] == "feature":
            grid = current.session.graph.tokens_per_side or None
            found, note = state.examples.top(d["layer"], d["feature"], k=6, grid=grid)
            examples = examples_children(found, note)
        return title, details_children(d, in_view), d["label"], False, False, strip, examples

    @app.callback(
        Output(ids.STORE_HL_SELECTION, "data"),
        Input(ids.STORE_SELECTED, "data"), Input(ids.STORE_GRAPH, "data"), Input(ids.NODE_SLIDER, "value"),
        Input(ids.EDGE_SLIDER, "value"), Input(ids.VIEW_MODE, "value"), Input(ids.STORE_ANNOT_REV, "data"),
    )
    def highlight(key, graph, nt, et, mode, _rev):
        name = (graph or {}).get("name")
        if not name or not key:
            return None
        try:
            current = state.current(name, nt, et, mode)
        except (GraphNotFound, GraphFormatError):
            return None
        index = current.session.index.get(key)
        shown = current.view.display_of.get(index, key) if index is not None else key
        return selection_highlight(current.view, shown)
