"""Selecting a node (graph click, box/shift selection or a node link): details, label editor,
activations over the prompt, top-activating examples. Its edges are drawn in the browser
(assets/vlmc.js) from the view's edge list, with no round trip."""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.panels.details_render import details_children, examples_children, token_strip
from app.view.build import DECORATIONS, feature_budget
from app.view.details import node_details


def register(app, state) -> None:
    @app.callback(
        Output(ids.STORE_SELECTED, "data"),
        Input(ids.CYTO, "tapNodeData"), Input(ids.CYTO, "selectedNodeData"),
        Input({"type": ids.GOTO_NODE, "key": ALL}, "n_clicks"), Input(ids.STORE_GRAPH, "data"),
        State(ids.STORE_SELECTED, "data"),
        prevent_initial_call=True,
    )
    def select(tap, selected_nodes, _clicks, _graph, current):
        """The node the details show: the tapped node; after a box or shift selection, the
        selection's most influential node unless the current one is still selected; nothing
        when the selection is cleared (so no action applies to a node no longer selected)."""
        triggered = {t["prop_id"].rsplit(".", 1)[0] for t in ctx.triggered}
        trigger = ctx.triggered_id
        if trigger == ids.STORE_GRAPH:
            return None
        if isinstance(trigger, dict):
            return trigger["key"] if ctx.triggered and ctx.triggered[0].get("value") else no_update
        tapped = tap.get("id") if tap and tap.get("kind") not in DECORATIONS else None
        if ids.CYTO in triggered and any(t["prop_id"].endswith("selectedNodeData") for t in ctx.triggered):
            chosen = [d for d in (selected_nodes or []) if d.get("kind") not in DECORATIONS and d.get("id")]
            keys = [d["id"] for d in chosen]
            if tapped in keys:
                return tapped
            if current in keys:
                return current
            if keys:
                return max(chosen, key=lambda d: d.get("influence") or 0.0)["id"]
            return None
        return tapped if tapped else no_update

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
            grid = current.session.graph.tokens_per_side or None
            found, note = state.examples.top(d["layer"], d["feature"], k=6, grid=grid)
            examples = examples_children(found, note)
        return title, details_children(d, in_view), d["label"], False, False, strip, examples
