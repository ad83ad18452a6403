"""The graph list and opening a graph (with a clear message when a file cannot be read)."""

from __future__ import annotations

from urllib.parse import parse_qs

from dash import Input, Output, State, ctx, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound


def describe(session) -> tuple[list, str]:
    """The status line and its plain text (the tooltip: the line is cut to one line of the header)."""
    g = session.graph
    kind = f"{len(g.images)} image(s), {g.grid_text()} soft tokens" if len(g.images) else "text only"
    targets = "; ".join(f"{t.label} ({t.probability_text()})" for t in g.targets[:4])
    more = f" and {len(g.targets) - 4} more" if len(g.targets) > 4 else ""
    rest = f" · {g.n_features} features, {g.n_nodes} nodes, {kind} · model {g.model or '?'} · targets: {targets}{more}"
    return [html.B(session.name), rest], session.name + rest


def url_graph(search) -> str | None:
    """The graph named in the page address (?graph=NAME), or None."""
    if not isinstance(search, str):
        return None
    return (parse_qs(search.lstrip("?")).get("graph") or [None])[0]


def register(app, state) -> None:
    @app.callback(
        Output(ids.GRAPH_DROPDOWN, "options"), Output(ids.GRAPH_DROPDOWN, "value"),
        Output(ids.GRAPH_DROPDOWN, "placeholder"), Output(ids.STATUS, "children", allow_duplicate=True),
        Output(ids.STATUS, "className", allow_duplicate=True), Output(ids.STATUS, "title", allow_duplicate=True),
        Input(ids.URL, "search"), Input(ids.REFRESH_BUTTON, "n_clicks"), State(ids.GRAPH_DROPDOWN, "value"),
        prevent_initial_call="initial_duplicate",  # runs on page load (it picks the graph) and shares the status
    )
    def choose(search, _clicks, current):
        """Page load: the graph named in the URL (?graph=NAME) if it is in the folder, else the
        first one; a name that is not in the folder opens none, and the status line says so
        (another graph in its place would pass for the one asked for). Refresh: re-read the
        folder, keep the current graph if it is still there."""
        names = state.store.names()
        options = [{"label": n, "value": n} for n in names]
        placeholder = "choose a graph" if names else f"no graphs in {state.graphs_dir}"
        keep_status = (no_update, no_update, no_update)
        if ctx.triggered_id == ids.REFRESH_BUTTON:
            return options, current if current in names else (names[0] if names else None), placeholder, *keep_status
        wanted = url_graph(search)
        if wanted is not None and wanted not in names:
            text = (f"{wanted[:200]!r} (named in the address) is not a graph in {state.graphs_dir}: "
                    "choose one from the list.")
            return options, None, placeholder, text, "status error", text
        return options, wanted if wanted is not None else (names[0] if names else None), placeholder, *keep_status

    @app.callback(
        Output(ids.STORE_GRAPH, "data"), Output(ids.STATUS, "children"), Output(ids.STATUS, "className"),
        Output(ids.STATUS, "title"),
        Input(ids.GRAPH_DROPDOWN, "value"),
    )
    def open_graph(name):
        if not name:
            if state.store.names():
                # no graph chosen (yet): the status keeps what choose said (an unknown graph in the
                # address), never "no graph files" of a folder that has some
                return {"name": None}, no_update, no_update, no_update
            text = f"No graph files in {state.graphs_dir} (looking for *.graph.safetensors, *.json, *.pt)."
            return {"name": None}, text, "status warning", text
        try:
            session = state.store.session(name)
        except GraphNotFound:
            text = f"{name[:200]!r} is not a graph in the graphs folder."
            return {"name": None, "error": True}, text, "status error", text
        except GraphFormatError as err:
            return ({"name": None, "error": True}, [html.B("Cannot open this graph. "), str(err)], "status error",
                    f"Cannot open this graph. {err}")
        children, text = describe(session)
        return {"name": name}, children, "status", text
