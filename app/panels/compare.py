"""Compare mode: the open graph (A) against another graph of the folder (B), aligned by
tracer.graph.diff: what appears, vanishes or changes influence, and the image cells that changed."""

from __future__ import annotations

import warnings

from dash import dash_table, dcc, html

from app import ids

COLUMNS = [("status", "status", None), ("kind", "kind", None), ("label_a", "in A", None), ("label_b", "in B", None),
           ("influence_a", "influence A", 4), ("influence_b", "influence B", 4), ("delta", "B - A", 4)]


def compare_panel() -> html.Details:
    with warnings.catch_warnings():  # Dash 4 marks DataTable for removal in a later major version
        warnings.simplefilter("ignore", DeprecationWarning)
        table = dash_table.DataTable(
            id=ids.COMPARE_TABLE, data=[], page_size=8, sort_action="native", filter_action="native",
            columns=[{"name": header, "id": key, "type": "numeric" if decimals is not None else "text"}
                     for key, header, decimals in COLUMNS],
            style_table={"overflowX": "auto"},
            style_cell={"fontSize": "12px", "maxWidth": "240px", "overflow": "hidden", "textOverflow": "ellipsis"},
            style_data_conditional=[
                {"if": {"filter_query": '{status} = "appears"'}, "backgroundColor": "#e6f4ea"},
                {"if": {"filter_query": '{status} = "vanishes"'}, "backgroundColor": "#fde8e8"},
            ])
    return html.Details(className="compare", id=ids.COMPARE_PANEL, children=[
        html.Summary("Compare with another graph"),
        html.Div(className="compare-row", children=[
            dcc.Dropdown(id=ids.COMPARE_WITH, options=[], placeholder="graph B (same model and transcoders)",
                         className="compare-with"),
            html.Button("Download diff (JSON)", id=ids.COMPARE_DOWNLOAD, disabled=True),
            dcc.Download(id=ids.COMPARE_FILE),
        ]),
        html.Div(id=ids.COMPARE_SUMMARY, className="note"),
        html.Img(id=ids.COMPARE_IMAGE, className="compare-image", style={"display": "none"}),
        table,
    ])
