"""Selecting a node (graph click, box/shift selection or a node link): details, label editor,
activations over the prompt, top-activating examples. Its edges are drawn in the browser
(assets/vlmc.js) from the view's edge list, with no round trip."""

from __future__ import annotations

from dash import ALL, ClientsideFunction, Input, Output, State, html

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.panels.details_render import details_children, examples_children, token_strip
from app.view.build import feature_budget
from app.view.details import node_details


def register(app, state) -> None:
    # The node the details show (in the browser: no round trip before the details are asked
    # for): the tapped node; after a box or shift selection, the selection's most influential
    # node unless the current one is still selected; nothing when the selection is cleared, so
    # that no action applies to a node that is no longer selected (assets/vlmc.js: selectNode).
    app.clientside_callback(
        ClientsideFunction(namespace="vlmc", function_name="selectNode"),
        Output(ids.STORE_SELECTED, "data"),
        Input(ids.CYTO, "tapNodeData"), Input(ids.CYTO, "selectedNodeData"),
        Input({"type": ids.GOTO_NODE, "key": ALL}, "n_clicks"), Input(ids.STORE_GRAPH, "data"),
        State(ids.STORE_SELECTED, "data"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output(ids.DETAILS_TITLE, "children"), Output(ids.DETAILS, "children"),
        Output(ids.LABEL_INPUT, "value"), Output(ids.LABEL_INPUT, "disabled"), Output(ids.LABEL_SAVE, "disabled"),
        Output(ids.TOKEN_STRIP, "children"), Output(ids.EXAMPLES, "children"),
        Input(ids.STORE_SELECTED, "data"), Input(ids.STORE_ANNOT_REV, "data"),
        State(ids.STORE_GRAPH, "data"), State(ids.NODE_SLIDER, "value"), State(ids.EDGE_SLIDER, "value"),
        State(ids.VIEW_MODE, "value"), State(ids.FEATURE_BUDGET, "value"),
    )
    def details(key, _rev, graph, nt, et, mode, budget):
        name = (graph or {}).get("name")
        empty = ("Details", details_children(None, True), "", True, True, [], [])
        if not name or not key:
            return empty
        try:
            current = state.current(name, nt, et, mode, feature_budget(budget))
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
            grid = current.session.grid_shape(0) if current.session.graph.n_images else None
            found, note = state.examples.top(d["layer"], d["feature"], k=6, grid=grid,
                                             transcoders=current.session.graph.transcoders)
            examples = examples_children(found, note)
        return title, details_children(d, in_view), d["label"], False, False, strip, examples
