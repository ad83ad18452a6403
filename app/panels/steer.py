"""The steering panel: rows of feature edits (pattern-matching ids), options, before/after."""

from __future__ import annotations

from dash import dcc, html

from app import ids

MODES = [{"label": "ablate", "value": "ablate"}, {"label": "scale by", "value": "scale"},
         {"label": "set to", "value": "set"}]
POSITIONS = [
    {"label": "where active", "value": "active"},
    {"label": "this node's position", "value": "node"},
    {"label": "the selected image region", "value": "region"},
    {"label": "the last token", "value": "last"},
    {"label": "last + all generated tokens", "value": "generated"},
    {"label": "every position", "value": "all"},
]
DEFAULT_FACTOR = 2.0  # scale; set starts at the node's own activation


def steer_panel() -> html.Details:
    return html.Details(id=ids.STEER_PANEL, open=False, className="panel live-panel", children=[
        html.Summary("Steer features", className="live-summary"),
        html.Div(id=ids.STEER_SELECTED, className="note",
                 children="Select feature nodes in the graph (shift+click for several), then add them."),
        html.Div(className="action-group", children=[
            html.Button("Add selected features", id=ids.STEER_ADD, className="small-button"),
            html.Button("Clear", id=ids.STEER_CLEAR, className="small-button"),
        ]),
        html.Div(id=ids.STEER_ROWS, className="steer-rows",
                 children=html.Div("No features to steer yet.", className="note")),
        html.Div(className="steer-options", children=[
            dcc.Checklist(id=ids.STEER_FREEZE, value=[], inline=True, className="steer-freeze", options=[
                {"label": "freeze attention", "value": "freeze"},
                {"label": "direct effects only", "value": "direct"},
            ]),
            html.Label("top-k", htmlFor=ids.STEER_TOPK),
            dcc.Input(id=ids.STEER_TOPK, type="number", value=8, min=1, max=30, step=1, className="small-number"),
            html.Label("generate", htmlFor=ids.STEER_GENERATE, title="greedy generation, tokens (0: none)"),
            dcc.Input(id=ids.STEER_GENERATE, type="number", value=12, min=0, max=256, step=1,
                      className="small-number"),
        ]),
        html.Div(className="action-group", children=[
            html.Button("Run", id=ids.STEER_RUN, className="primary-button"),
            html.Span(id=ids.STEER_STATUS, className="job-status", role="status"),
        ]),
        dcc.Graph(id=ids.STEER_CHART, className="prob-chart", style={"display": "none"},
                  config={"displaylogo": False, "displayModeBar": False}),
        html.Div(id=ids.STEER_RESULT, className="live-result"),
    ])


def steer_row(row: dict) -> html.Div:
    """One edit: the feature, what to do, where, remove."""
    n = row["row"]
    mode = row.get("mode", "ablate")
    value = row.get("value")
    return html.Div(className="steer-row", children=[
        html.Div(className="steer-row-head", children=[
            html.Span(row["label"], className="steer-label", title=row["key"]),
            html.Small(f"act. {row['activation']:.3g}" if row.get("activation") is not None else "",
                       className="steer-act"),
            html.Button("×", id={"type": ids.STEER_REMOVE, "row": n}, className="remove-button", title="Remove"),
        ]),
        html.Div(className="steer-row-edit", children=[
            dcc.Dropdown(id={"type": ids.STEER_MODE, "row": n}, options=MODES, value=mode, clearable=False,
                         searchable=False, className="steer-mode"),
            dcc.Input(id={"type": ids.STEER_VALUE, "row": n}, type="number", value=value, step="any",
                      disabled=mode == "ablate", placeholder="factor" if mode == "scale" else "value",
                      className="steer-value"),
            dcc.Dropdown(id={"type": ids.STEER_POSITIONS, "row": n}, options=POSITIONS,
                         value=row.get("positions", "active"), clearable=False, searchable=False,
                         className="steer-positions"),
        ]),
    ])
