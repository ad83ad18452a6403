"""Re-prune and redraw the graph when a slider, the view mode, the graph or its annotations change."""

from __future__ import annotations

from dash import Input, Output, ctx, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.view.build import PINNED


def register(app, state) -> None:
    @app.callback(
        Output(ids.CYTO, "elements"), Output(ids.COUNTS, "children"), Output(ids.SCORES, "children"),
        Output(ids.BUDGET_NOTE, "children"), Output(ids.CYTO, "layout"),
        Input(ids.STORE_GRAPH, "data"), Input(ids.NODE_SLIDER, "value"), Input(ids.EDGE_SLIDER, "value"),
        Input(ids.VIEW_MODE, "value"), Input(ids.STORE_ANNOT_REV, "data"),
    )
    def render(graph, node_threshold, edge_threshold, mode, _rev):
        name = (graph or {}).get("name")
        # fit the view to the new elements when the graph or the view mode changes, not on
        # slider steps (the user keeps their zoom and pan)
        refit = ctx.triggered_id in (None, ids.STORE_GRAPH, ids.VIEW_MODE)
        layout = {"name": "preset", "fit": True, "padding": 30, "animate": False,
                  "view": f"{name}:{mode}"} if refit else no_update
        if not name:
            return [], "", "", "", layout
        try:
            current = state.current(name, node_threshold, edge_threshold, mode)
        except (GraphNotFound, GraphFormatError) as err:
            return [], "", "", str(err), layout
        view, session = current.view, current.session
        counts = f"{view.n_nodes} nodes · {view.n_edges} edges"
        scores = (f"replacement {session.scores['replacement']:.3f} · "
                  f"completeness {session.scores['completeness']:.3f}")
        notes = []
        if view.nodes_cut or view.edges_cut:
            notes.append(f"display budget: ≤{session.max_nodes} nodes / ≤{session.max_edges} edges "
                         "(most influential kept)")
        if view.n_hidden:
            notes.append(f"{view.n_hidden} hidden")
        if mode == PINNED and view.n_nodes == 0:
            notes.append("nothing pinned yet: select nodes and press Pin")
        if current.annotations_error:
            notes.append(current.annotations_error)
        return view.elements, counts, scores, " · ".join(notes), layout
