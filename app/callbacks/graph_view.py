"""Re-prune and redraw the graph when a slider, the feature budget, the view mode or options,
the graph or its annotations change; the subgraph pane; slider labels with their values."""

from __future__ import annotations

from dash import Input, Output, ctx, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.view.build import DECORATIONS, FEATURE_BUDGETS, PINNED, drawn_elements, edges_payload, feature_budget


def counts_text(view, session) -> str:
    if view.mode == PINNED:
        return f"{view.n_nodes:,} nodes · {view.n_edges:,} edges (pinned subgraph)"
    return (f"{view.n_features:,} of {session.graph.n_features:,} features · "
            f"{view.n_nodes:,} nodes · {view.n_edges:,} edges")


def register(app, state) -> None:
    @app.callback(
        Output(ids.CYTO, "elements"), Output(ids.COUNTS, "children"), Output(ids.SCORES, "children"),
        Output(ids.BUDGET_NOTE, "children"), Output(ids.CYTO, "layout"), Output(ids.STORE_VIEW_EDGES, "data"),
        Input(ids.STORE_GRAPH, "data"), Input(ids.NODE_SLIDER, "value"), Input(ids.EDGE_SLIDER, "value"),
        Input(ids.VIEW_MODE, "value"), Input(ids.STORE_ANNOT_REV, "data"), Input(ids.FEATURE_BUDGET, "value"),
        Input(ids.VIEW_OPTIONS, "value"),
    )
    def render(graph, node_threshold, edge_threshold, mode, _rev, budget, options):
        name = (graph or {}).get("name")
        # fit the view to the new elements when the graph, the view mode or the feature budget
        # changes (the layout is recomputed for the nodes shown), not on threshold steps
        refit = ctx.triggered_id in (None, ids.STORE_GRAPH, ids.VIEW_MODE, ids.FEATURE_BUDGET)
        layout = {"name": "preset", "fit": True, "padding": 24, "animate": False,
                  "view": f"{name}:{mode}:{budget}"} if refit else no_update
        if not name:
            return [], "", "", "", layout, None
        try:
            current = state.current(name, node_threshold, edge_threshold, mode, feature_budget(budget))
        except (GraphNotFound, GraphFormatError) as err:
            return [], "", "", str(err), layout, None
        view, session = current.view, current.session
        all_edges = "all-edges" in (options or [])
        scores = (f"replacement {session.scores['replacement']:.3f} · "
                  f"completeness {session.scores['completeness']:.3f}")
        notes = []
        if mode != PINNED:
            notes.append("edges: all drawn" if all_edges else "edges on hover / click")
        if view.n_features < view.n_features_threshold:
            notes.append(f"the threshold keeps {view.n_features_threshold:,}")
        if view.nodes_cut and view.n_features < min(feature_budget(budget), view.n_features_threshold):
            notes.append(f"display budget ≤{session.max_nodes:,} nodes")
        if view.edges_cut:
            notes.append(f"≤{session.max_edges:,} edges kept")
        if view.n_hidden:
            notes.append(f"{view.n_hidden} hidden")
        if mode == PINNED and view.n_nodes == 0:
            notes.append("nothing pinned yet: select nodes and press Pin")
        if current.annotations_error:
            notes.append(current.annotations_error)
        state.warm_examples()
        payload = {"view": f"{name}:{mode}", "all": all_edges or mode == PINNED,
                   "edges": [] if all_edges or mode == PINNED else edges_payload(view)}
        return drawn_elements(view, all_edges), counts_text(view, session), scores, " · ".join(notes), layout, payload

    @app.callback(
        Output(ids.SUBGRAPH, "elements"), Output(ids.SUBGRAPH, "layout"), Output(ids.SUBGRAPH_NOTE, "children"),
        Output(ids.SUBGRAPH_PANE, "className"),
        Input(ids.STORE_GRAPH, "data"), Input(ids.STORE_ANNOT_REV, "data"), Input(ids.VIEW_OPTIONS, "value"),
    )
    def subgraph(graph, _rev, options):
        shown = "subgraph" in (options or [])
        cls = "subgraph-pane" + ("" if shown else " closed")
        name = (graph or {}).get("name")
        layout = {"name": "preset", "fit": True, "padding": 20, "animate": False, "view": f"{name}:{_rev}"}
        if not name:
            return [], layout, "", cls
        try:
            current = state.current(name, None, None, PINNED)
        except (GraphNotFound, GraphFormatError) as err:
            return [], layout, str(err), cls
        view = current.view
        if len(view.node_indices) == 0:
            note = "pin nodes (select, then Pin) to assemble a circuit here"
        else:
            drawn = sum(1 for n in view.nodes if n["data"]["kind"] not in DECORATIONS and not n["data"].get("offview"))
            note = f"{drawn} pinned nodes · {view.n_edges:,} edges · export it with scope 'pinned subgraph'"
        return drawn_elements(view, True), layout, note, cls

    # slider labels follow the thumb while it is dragged (no server round trip)
    app.clientside_callback(
        """(budget, node, edge) => {
            const budgets = %s;
            const f = (v, d) => (v === undefined || v === null) ? window.dash_clientside.no_update : d(v);
            return [f(budget, v => "Features shown ≤ " + budgets[v]), f(node, v => "Node threshold: " + v.toFixed(2)),
                    f(edge, v => "Edge threshold: " + v.toFixed(2))];
        }""" % list(FEATURE_BUDGETS),
        Output(ids.BUDGET_LABEL, "children"), Output(ids.NODE_SLIDER_LABEL, "children"),
        Output(ids.EDGE_SLIDER_LABEL, "children"),
        Input(ids.FEATURE_BUDGET, "drag_value"), Input(ids.NODE_SLIDER, "drag_value"), Input(ids.EDGE_SLIDER, "drag_value"),
    )
