"""Vision attention overlay on the image, region ablation, the attention graph (switch the main
view to it and back), and which heads carry a selected edge."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
from dash import Input, Output, Patch, State, ctx, html, no_update

from tracer.graph.graph import carrier_layers

from app import ids
from app.callbacks.jobs import HIDDEN, comparison_outputs, live_session, open_session, result_graph_url
from app.jobs import ACTIVE, DONE
from app.live import LiveError, graph_identity, is_attention_graph
from app.panels.attention import VISION_OFF
from app.panels.live_render import attention_split_children, heads_children, job_line, overlay_layout_image
from app.tasks import attention_job, heads_job, region_job, vision_job

TOP_K = 8


def selected_cells(session, selected: str | None, region: dict | None) -> tuple[int, list[tuple[int, int]]] | None:
    """(image, cells) the overlay is for: the selected image embedding node, else the region."""
    if selected and selected.startswith("E_"):
        try:
            pos = int(selected[2:])
        except ValueError:
            pos = -1
        cell = session.cell_of_position.get(pos)
        if cell is not None:
            return cell[0], [(cell[1], cell[2])]
    if region and region.get("cells"):
        return int(region.get("image", 0)), [(int(r), int(c)) for r, c in region["cells"]]
    return None


def vision_map(maps: dict, kind: str, image: int, cells, grid: tuple[int, int]) -> np.ndarray:
    """Mean map of the cells' soft tokens, (P, P); grid: (rows, cols) of soft tokens."""
    arr = maps[kind][image]
    n_rows, n_cols = grid
    rows = [r * n_cols + c for r, c in cells if 0 <= r < n_rows and 0 <= c < n_cols]
    return arr[rows].mean(0)


def register(app, state) -> None:
    live = state.live

    # ------------------------------------------------------------------ vision attention overlay
    @app.callback(
        Output(ids.store_job("vision"), "data"),
        Input(ids.STORE_REGION, "data"), Input(ids.STORE_SELECTED, "data"), Input(ids.VISION_KIND, "value"),
        State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def request_maps(region, selected, kind, graph):
        """Queue the vision maps of the open graph's image when a cell is selected (once per graph)."""
        if kind == "off":
            return no_update
        session, error = live_session(state, graph, need_transcoders=False, need_image=True)
        if error or selected_cells(session, selected, region) is None:
            return no_update
        key = ("vision", graph_identity(session))
        if live.cached(key) is not None:
            return no_update
        job_id = live.pending(key)
        if job_id is None:
            job_id = live.submit("vision", vision_job(live, session), label=f"vision maps of {session.name}")
            live.set_pending(key, job_id)
        return {"id": job_id}

    @app.callback(
        Output(ids.IMAGE_FIGURE, "figure", allow_duplicate=True), Output(ids.VISION_NOTE, "children"),
        Output(ids.STORE_VISION_SHOWN, "data"),
        Input(ids.STORE_REGION, "data"), Input(ids.STORE_SELECTED, "data"), Input(ids.VISION_KIND, "value"),
        Input(ids.store_status("vision"), "data"), Input(ids.STORE_FIGURE_KEY, "data"),
        State(ids.STORE_GRAPH, "data"), State(ids.IMAGE_SELECT, "value"), State(ids.STORE_VISION_SHOWN, "data"),
        prevent_initial_call=True,
    )
    def overlay(region, selected, kind, status, figure_key, graph, image, shown):
        """The overlay is a plotly layout image over the image panel's figure (a Patch: the
        explorer's own callback owns the traces and shapes)."""
        # `shown`: the figure key the overlay was drawn on. The explorer redraws the whole figure
        # only when its key changes, so the overlay is on screen iff shown == figure_key.
        clear = Patch()
        clear["layout"]["images"] = []

        def nothing(note: str = ""):
            return (clear if shown and shown == figure_key else no_update), note, None

        if kind == "off":
            return nothing(VISION_OFF)
        if not figure_key:  # no image figure drawn (no graph, text only)
            return nothing()
        session, error = live_session(state, graph, need_transcoders=False, need_image=True)
        if session is None:
            return nothing()
        where = selected_cells(session, selected, region)
        if where is None:
            return nothing("Select an image cell (or its embedding node) to see where its vision attention comes from.")
        img, cells = where
        if img != int(image or 0):
            return nothing()
        maps = live.cached(("vision", graph_identity(session)))
        if maps is None:
            if status and status["state"] in ACTIVE:
                return nothing(job_line(status, "vision attention")[0])
            if status and status["state"] != DONE:
                return nothing(job_line(status)[0])
            return nothing("computing vision attention…")
        m = vision_map(maps, kind, img, cells, maps.get("token_grid") or (maps["tokens_per_side"],) * 2)
        h, w = session.graph.images[img].shape[:2]
        patch = Patch()
        patch["layout"]["images"] = [overlay_layout_image(m, int(w), int(h))]
        what = ("attention rollout over the vision layers" if kind == "rollout"
                else "cosine similarity of the pooled soft token with each patch")
        where_text = f"cell ({cells[0][0]},{cells[0][1]})" if len(cells) == 1 else f"{len(cells)} cells (mean)"
        return patch, (f"Purple: where the vision tower's {what} for {where_text} comes from "
                       f"({maps['patch_grid'][0]}×{maps['patch_grid'][1]} patches)."), figure_key

    # ------------------------------------------------------------------ region ablation
    @app.callback(
        Output(ids.store_job("region"), "data"), Output(ids.REGION_STATUS, "children", allow_duplicate=True),
        Output(ids.REGION_STATUS, "className", allow_duplicate=True),
        Input(ids.REGION_ZERO, "n_clicks"), Input(ids.REGION_MEAN, "n_clicks"),
        State(ids.STORE_REGION, "data"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def ablate(_zero, _mean, region, graph):
        mode = "zero" if ctx.triggered_id == ids.REGION_ZERO else "mean"
        session, error = live_session(state, graph, need_transcoders=False, need_image=True)
        if error:
            return no_update, error, "job-status error"
        if not region or not region.get("cells"):
            return no_update, "Select an image region first (click a cell or drag a rectangle).", "job-status error"
        image = int(region.get("image", 0))
        cells = [(image, int(r), int(c)) for r, c in region["cells"]]
        job_id = live.submit("region", region_job(live, session.graph, cells, mode, TOP_K, session.name),
                             label=f"{mode}-ablate {len(cells)} cells of {session.name}")
        return {"id": job_id}, "queued", "job-status busy"

    @app.callback(
        Output(ids.REGION_STATUS, "children"), Output(ids.REGION_STATUS, "className"),
        Output(ids.REGION_CHART, "figure"), Output(ids.REGION_CHART, "style"), Output(ids.REGION_RESULT, "children"),
        Input(ids.store_status("region"), "data"), Input(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def show_region(status, graph):
        return comparison_outputs(live, status, "region ablation", TOP_K, graph)

    # ------------------------------------------------------------------ attention graph
    @app.callback(
        Output(ids.store_job("attention"), "data"), Output(ids.STORE_ATTN_BACK, "data"),
        Output(ids.ATTN_STATUS, "children", allow_duplicate=True),
        Output(ids.ATTN_STATUS, "className", allow_duplicate=True),
        Input(ids.ATTN_GRAPH, "n_clicks"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def attention_graph(_n, graph):
        session, error = live_session(state, graph)
        if error:
            return no_update, no_update, error, "job-status error"
        try:
            fn = attention_job(live, session)
        except LiveError as err:
            return no_update, no_update, str(err), "job-status error"
        job_id = live.submit("attention", fn, label=f"attention graph of {session.name}")
        return {"id": job_id}, session.name, "queued", "job-status busy"

    @app.callback(
        Output(ids.ATTN_STATUS, "children"), Output(ids.ATTN_STATUS, "className"),
        Input(ids.store_status("attention"), "data"),
        prevent_initial_call=True,
    )
    def attention_status(status):
        if status and status["state"] == DONE:
            result = live.queue.result(status["id"]) or {}
            return f"opened {result.get('name', '')}", "job-status"
        return job_line(status, "attention graph")

    @app.callback(
        Output(ids.URL, "search", allow_duplicate=True),
        Input(ids.store_status("attention"), "data"),
        prevent_initial_call=True,
    )
    def open_attention(status):
        return result_graph_url(live, status)

    @app.callback(
        Output(ids.URL, "search", allow_duplicate=True),
        Input(ids.ATTN_BACK, "n_clicks"), State(ids.STORE_ATTN_BACK, "data"),
        prevent_initial_call=True,
    )
    def back(_n, name):
        return f"?graph={quote(name)}" if name else no_update

    @app.callback(
        Output(ids.ATTN_BACK, "style"), Output(ids.ATTN_BACK, "children"), Output(ids.ATTN_GRAPH, "disabled"),
        Input(ids.STORE_GRAPH, "data"), Input(ids.STORE_ATTN_BACK, "data"),
        prevent_initial_call=True,
    )
    def back_button(graph, back_to):
        session = open_session(state, graph)
        attention = session is not None and is_attention_graph(session.graph)
        show = attention and bool(back_to) and back_to != session.name and back_to in state.store.names()
        return ({"display": "inline-block"} if show else HIDDEN), f"← back to {back_to}" if show else "← back", \
            attention

    # ------------------------------------------------------------------ heads behind an edge
    @app.callback(
        Output(ids.STORE_EDGE, "data"),
        Input(ids.CYTO, "tapEdgeData"), Input(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def pick_edge(edge, _graph):
        if ctx.triggered_id != ids.CYTO or not edge:
            return None
        return {"source": edge.get("source"), "target": edge.get("target"), "weight": edge.get("weight")}

    @app.callback(
        Output(ids.EDGE_INFO, "children"), Output(ids.HEADS_BUTTON, "disabled"), Output(ids.HEADS_RESULT, "children"),
        Input(ids.STORE_EDGE, "data"), Input(ids.store_status("heads"), "data"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def edge_info(edge, status, graph):
        session = open_session(state, graph)
        if session is None or not edge:
            return "Click an edge in the graph.", True, []
        s, t = session.index.get(edge.get("source")), session.index.get(edge.get("target"))
        if s is None or t is None:
            return "This edge joins supernodes: pick an edge between two graph nodes.", True, []
        labels = (session.default_label(s).strip(), session.default_label(t).strip())
        w = float(session.graph.adjacency[session.graph.row_of_node(t), s])
        info = f"Edge {labels[0]} → {labels[1]} (weight {w:+.4g})"
        if is_attention_graph(session.graph):
            split = _attention_split(session.graph, t, s)
            if split is None:
                return info + ": the graph stores the per-head split of its strongest edges only.", True, []
            return info, True, attention_split_children(split, labels)
        why_not = _no_heads(session.graph, t, s)
        if why_not:
            return [info, html.Div(why_not, className="note")], True, []
        result = []
        if status and (status.get("meta") or {}).get("edge") == [session.name, t, s]:
            if status["state"] == DONE:
                data = live.queue.result(status["id"])
                result = heads_children(data, labels) if data else []
            else:
                text, cls = job_line(status, "heads")
                result = [html.Div(text, className=cls)]
        return info, False, result

    @app.callback(
        Output(ids.store_job("heads"), "data"), Output(ids.HEADS_RESULT, "children", allow_duplicate=True),
        Input(ids.HEADS_BUTTON, "n_clicks"), State(ids.STORE_EDGE, "data"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def heads(_n, edge, graph):
        session, error = live_session(state, graph)
        if error:
            return no_update, html.Div(error, className="job-status error")
        s, t = (session.index.get((edge or {}).get(k)) for k in ("source", "target"))
        if s is None or t is None:
            return no_update, html.Div("Pick an edge between two graph nodes.", className="job-status error")
        why_not = _no_heads(session.graph, t, s)
        if why_not:
            return no_update, html.Div(why_not, className="job-status error")
        job_id = live.submit("heads", heads_job(live, session, t, s), label=f"heads of an edge of {session.name}",
                             meta={"edge": [session.name, t, s]})
        return {"id": job_id}, html.Div("queued", className="job-status busy")


def _no_heads(graph, target: int, source: int) -> str:
    """Why no attention head can carry the edge source -> target ('' when some can)."""
    try:
        layers = carrier_layers(graph, target, source)
    except ValueError as err:
        return str(err)
    if not len(layers):
        return ("No attention head lies on this edge: the source writes after the last attention layer "
                "before its target (a direct path through the residual stream).")
    return ""


def _attention_split(graph, target: int, source: int) -> dict | None:
    info = (graph.info or {}).get("attention") or {}
    for k, (t, s) in enumerate(zip(info.get("target", []), info.get("source", []))):
        if int(t) == target and int(s) == source:
            return {"heads": info["heads"][k], "residual": float(info.get("residual", [0.0] * (k + 1))[k])}
    return None
