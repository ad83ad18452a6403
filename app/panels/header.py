"""Top bar: the graph list and the status line (where load errors appear)."""

from dash import dcc, html

from app import ids


def header(names: list[str], value: str | None, folder: str, extra: list | None = None) -> html.Header:
    return html.Header(className="app-header", children=[
        html.Div("VLM circuits", className="app-title"),
        html.Label("Graph", htmlFor=ids.GRAPH_DROPDOWN, className="header-label"),
        dcc.Dropdown(id=ids.GRAPH_DROPDOWN, options=[{"label": n, "value": n} for n in names], value=value,
                     clearable=False, placeholder="choose a graph" if names else f"no graphs in {folder}",
                     className="graph-dropdown"),
        html.Button("↻", id=ids.REFRESH_BUTTON, title=f"Re-read the graph folder {folder}", className="icon-button"),
        *(extra or []),  # the live features' New trace button
        html.Div(id=ids.STATUS, className="status", role="status"),
    ])
