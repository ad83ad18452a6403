"""The image panel: figure (with a selected feature's activation heatmap and the selected
region), region selection by click or drag, and the circuit that starts at the region."""

from __future__ import annotations

import json

from dash import Input, Output, Patch, State, ctx, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.callbacks.jobs import open_session
from app.graph_store import GraphNotFound
from app.panels.image_figure import all_shapes, base_figure, cell_from_xy, cells_in_box, empty_figure, heat_hover
from app.view.build import feature_budget
from app.view.details import feature_position_activations, image_heat
from app.view.region import region_circuit

HELP = ("Hover a cell to find its embedding node in the graph; click a cell or drag a rectangle to "
        "highlight the circuit that starts there.")


def _region_cells(region, image):
    if not region or int(region.get("image", -1)) != int(image):
        return []
    return [tuple(c) for c in region.get("cells", [])]


def register(app, state) -> None:
    @app.callback(
        Output(ids.IMAGE_SELECT, "options"), Output(ids.IMAGE_SELECT, "value"), Output(ids.IMAGE_SELECT, "style"),
        Output(ids.TRUTH_REGION, "style"),
        Input(ids.STORE_GRAPH, "data"),
    )
    def images(graph):
        session = open_session(state, graph)
        n = len(session.graph.images) if session else 0
        truth = session is not None and bool(session.ground_truth and session.ground_truth["cells"])
        return ([{"label": f"image {k}", "value": k} for k in range(n)], 0,
                {"display": "block" if n > 1 else "none", "width": "110px"},
                {"display": "inline-block" if truth else "none"})

    @app.callback(
        Output(ids.IMAGE_SELECT, "value", allow_duplicate=True),
        Input(ids.STORE_SELECTED, "data"), State(ids.STORE_GRAPH, "data"), State(ids.IMAGE_SELECT, "value"),
        prevent_initial_call=True,
    )
    def image_of_selection(selected, graph, shown):
        """Selecting an image soft token's node shows its own image."""
        if not (selected and selected.startswith("E_") and selected[2:].isdigit()):
            return no_update
        session = open_session(state, graph)
        cell = session.cell_of_position.get(int(selected[2:])) if session else None
        return cell[0] if cell and cell[0] != shown else no_update

    @app.callback(
        Output(ids.IMAGE_FIGURE, "figure"), Output(ids.IMAGE_NOTE, "children"), Output(ids.IMAGE_FIGURE, "style"),
        Output(ids.STORE_FIGURE_KEY, "data"),
        Input(ids.STORE_GRAPH, "data"), Input(ids.IMAGE_SELECT, "value"), Input(ids.STORE_SELECTED, "data"),
        Input(ids.STORE_REGION, "data"), State(ids.STORE_FIGURE_KEY, "data"),
    )
    def figure(graph, image, selected, region, shown):
        session = open_session(state, graph)
        if session is None:
            return empty_figure(""), "", {"display": "none"}, None
        g = session.graph
        if not g.images or not len(g.image_positions):
            return empty_figure(""), "This prompt has no image (a text-only graph).", {"display": "none"}, None
        image = int(image or 0) if int(image or 0) < len(g.images) else 0
        figure_key = f"{id(session)}:{image}"
        heat, note = None, HELP
        index = session.index.get(selected) if selected else None
        if index is not None and session.kinds[index] == "feature":
            acts = feature_position_activations(session, index)
            heat = image_heat(session, acts, image)
            if heat.max() > 0:
                note = [html.B("Heatmap: "), f"activation of {session.default_label(index)} at each image position "
                        f"(max {heat.max():.3g}). ", HELP]
            else:
                note = [html.B(session.default_label(index)), " is not active at any position of this image. ", HELP]
                heat = None
        truth = session.ground_truth
        if truth and image == 0:
            what = ", ".join(truth["evidence"]) or "the objects the answer depends on"
            note = [html.Div([html.B("Toy question: "), f"{truth['question']} → {truth['answer']}. ",
                              f"Dotted: the cells under {what}." if truth["cells"] else ""]),
                    html.Div(note)]
        cells = _region_cells(region, image)
        if shown == figure_key:  # the figure already shows this image: send only what changed
            patch = Patch()
            rows, cols = session.grid_shape(image)
            z = heat if heat is not None else [[0.0] * cols for _ in range(rows)]
            patch["data"][1]["z"] = z.tolist() if hasattr(z, "tolist") else z
            patch["data"][1]["zmax"] = float(max(abs(heat).max(), 1e-9)) if heat is not None else 1.0
            patch["data"][1]["showscale"] = heat is not None
            patch["data"][1]["text"] = heat_hover(session, image, heat)
            patch["layout"]["shapes"] = all_shapes(session, image, cells)
            # a drag's selection box has become the region's outlines: drop it, else it stays drawn
            # and swallows clicks on the cells under it (a new selectionrevision: plotly keeps a
            # user's selections while the revision is unchanged)
            patch["layout"]["selections"] = []
            patch["layout"]["selectionrevision"] = json.dumps(region, sort_keys=True)
            return patch, note, {"display": "block"}, figure_key
        return base_figure(session, image, heat, cells), note, {"display": "block"}, figure_key

    @app.callback(
        Output(ids.STORE_REGION, "data"),
        Input(ids.IMAGE_FIGURE, "clickData"), Input(ids.IMAGE_FIGURE, "selectedData"),
        Input(ids.CLEAR_REGION, "n_clicks"), Input(ids.TRUTH_REGION, "n_clicks"), Input(ids.STORE_GRAPH, "data"),
        State(ids.IMAGE_SELECT, "value"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def select_region(click, selected, _clear, _truth, _graph, image, graph):
        trigger = ctx.triggered_id
        if trigger in (ids.CLEAR_REGION, ids.STORE_GRAPH):
            return None
        session = open_session(state, graph)
        if session is None or not session.graph.images:
            return no_update
        if trigger == ids.TRUTH_REGION:
            truth = session.ground_truth
            return {"image": 0, "cells": [list(c) for c in truth["cells"]]} if truth and truth["cells"] else no_update
        image = int(image or 0)
        if ctx.triggered and ctx.triggered[0]["prop_id"].endswith("clickData"):
            if not click or not click.get("points"):
                return no_update
            point = click["points"][0]
            cell = cell_from_xy(session, image, float(point["x"]), float(point["y"]))
            return {"image": image, "cells": [list(cell)]} if cell else no_update
        if not selected or not selected.get("range"):
            return no_update
        box = selected["range"]
        cells = cells_in_box(session, image, box["x"], box["y"])
        return {"image": image, "cells": [list(c) for c in cells]} if cells else no_update

    @app.callback(
        Output(ids.STORE_HL_REGION, "data"), Output(ids.REGION_INFO, "children"),
        Input(ids.STORE_REGION, "data"), Input(ids.STORE_GRAPH, "data"), Input(ids.NODE_SLIDER, "value"),
        Input(ids.EDGE_SLIDER, "value"), Input(ids.VIEW_MODE, "value"), Input(ids.STORE_ANNOT_REV, "data"),
        Input(ids.FEATURE_BUDGET, "value"),
    )
    def circuit(region, graph, nt, et, mode, _rev, budget):
        name = (graph or {}).get("name")
        if not name or not region or not region.get("cells"):
            return None, ""
        try:  # the view the graph panel shows (same thresholds and feature budget)
            current = state.current(name, nt, et, mode, feature_budget(budget))
        except (GraphNotFound, GraphFormatError):
            return None, ""
        cells = [tuple(c) for c in region["cells"]]
        g = current.session.graph

        def target_of(key):  # a contrast shows both tokens' probabilities, not p = 0
            return g.targets[current.session.index[key] - g.logit_offset]

        result = region_circuit(current.session, current.view, int(region.get("image", 0)), cells)
        rows = sorted(r for r, _ in cells), sorted(c for _, c in cells)
        where = (f"cell ({cells[0][0]},{cells[0][1]})" if len(cells) == 1 else
                 f"{len(cells)} cells (rows {rows[0][0]}–{rows[0][-1]}, cols {rows[1][0]}–{rows[1][-1]})")
        if g.n_images > 1:
            where = f"image {int(region.get('image', 0))}, {where}"
        table = html.Table(className="shares", children=[
            html.Thead(html.Tr([html.Th("logit"), html.Th("probability"), html.Th("share from region (view)"),
                                html.Th("(full graph)")])),
            html.Tbody([html.Tr([
                html.Td(r["label"]), html.Td(target_of(r["key"]).probability_text()),
                html.Td(html.Div([html.Div(className="bar", style={"width": f"{min(r['share_view'], 1) * 100:.1f}%"}),
                                  html.Span(f"{r['share_view'] * 100:.1f}%")], className="bar-cell")),
                html.Td(f"{r['share_full'] * 100:.1f}%"),
            ]) for r in result["logits"]]),
        ])
        info = [html.Div([html.B("Region: "), where, f" · {len(result['nodes'])} nodes of the view reachable from it "
                          "(highlighted in the graph)"], className="region-summary"), table]
        return {"nodes": result["nodes"], "edges_from": result["edges_from"]}, info
