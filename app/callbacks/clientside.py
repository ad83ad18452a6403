"""Browser-side callbacks: the hover line; the edges of the hovered / selected node drawn on
demand from the view's edge list; the stylesheet that highlights the region circuit and the
hovered image cell (no server round trip, small payloads)."""

from __future__ import annotations

from dash import ClientsideFunction, Input, Output

from app import ids


def register(app, state) -> None:
    app.clientside_callback(
        ClientsideFunction(namespace="vlmc", function_name="hoverInfo"),
        Output(ids.HOVER_INFO, "children"),
        Input(ids.CYTO, "mouseoverNodeData"), Input(ids.IMAGE_FIGURE, "hoverData"),
    )
    app.clientside_callback(
        ClientsideFunction(namespace="vlmc", function_name="stylesheet"),
        Output(ids.CYTO, "stylesheet"),
        Input(ids.STORE_SELECTED, "data"), Input(ids.STORE_HL_REGION, "data"),
        Input(ids.IMAGE_FIGURE, "hoverData"), Input(ids.STORE_BASE_STYLE, "data"), Input(ids.STORE_VIEW_EDGES, "data"),
    )
