"""The batch panel: a sortable, filterable table of a batch folder's examples (click a row to
open its graph) and two plots over all of them."""

from __future__ import annotations

import warnings

from dash import dash_table, dcc, html

from app import ids
from app.batch import ALL_TYPES, COLUMNS, BatchView


def batch_panel(batch: BatchView) -> html.Details:
    if batch.error:
        return html.Details(className="batch", open=True, id=ids.BATCH_PANEL, children=[
            html.Summary("Batch folder"), html.Div(batch.error, className="status error")])
    return html.Details(className="batch", open=True, id=ids.BATCH_PANEL, children=[
        html.Summary(batch.headline(), id=ids.BATCH_HEADLINE),
        html.Div("Click a row to open its graph; click a column header's arrows to sort, type in the row "
                 "under the headers to filter (e.g. >0.5, or a word).", className="hint"),
        _table(batch),
        html.Div(className="batch-plots", children=[
            dcc.Graph(id=ids.BATCH_RECURRING, figure=batch.recurring_figure(), config={"displaylogo": False}),
            html.Div(children=[
                dcc.Dropdown(id=ids.BATCH_TYPE, clearable=False, value=ALL_TYPES,
                             options=[{"label": "every question type", "value": ALL_TYPES}]
                             + [{"label": t, "value": t} for t in batch.question_types()]),
                dcc.Graph(id=ids.BATCH_INFLUENCE, figure=batch.influence_figure(), config={"displaylogo": False}),
            ]),
        ]),
    ])


def _table(batch: BatchView) -> dash_table.DataTable:
    with warnings.catch_warnings():
        # Dash 4 marks DataTable for removal in a later major version; it is what this Dash has
        warnings.simplefilter("ignore", DeprecationWarning)
        return dash_table.DataTable(
            id=ids.BATCH_TABLE, data=batch.table_rows(),
            columns=[{"name": header, "id": key, "type": "numeric" if decimals is not None else "text"}
                     for key, header, decimals in COLUMNS],
            sort_action="native", filter_action="native", page_size=8, row_selectable=False,
            style_table={"overflowX": "auto"}, style_cell={"fontSize": "12px", "maxWidth": "260px",
                                                           "overflow": "hidden", "textOverflow": "ellipsis"},
            tooltip_duration=None,
        )
