"""Pruning sliders, view mode, node/edge counts and scores (fixed height: see the recipe's
click pitfall, nothing above the graph may change height after it is drawn)."""

from dash import dcc, html

from app import ids
from app.state import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD
from app.view.build import PINNED, PRUNED


def controls() -> html.Div:
    return html.Div(className="controls", children=[
        html.Div(className="slider-box", children=[
            html.Label("Node threshold (share of influence kept)", htmlFor=ids.NODE_SLIDER),
            dcc.Slider(id=ids.NODE_SLIDER, min=0.05, max=1.0, step=0.05, value=DEFAULT_NODE_THRESHOLD,
                       marks={0.05: "0.05", 0.5: "0.5", 1.0: "1"}, updatemode="mouseup"),
        ]),
        html.Div(className="slider-box", children=[
            html.Label("Edge threshold", htmlFor=ids.EDGE_SLIDER),
            dcc.Slider(id=ids.EDGE_SLIDER, min=0.5, max=1.0, step=0.01, value=DEFAULT_EDGE_THRESHOLD,
                       marks={0.5: "0.5", 0.75: "0.75", 1.0: "1"}, updatemode="mouseup"),
        ]),
        html.Div(className="view-box", children=[
            dcc.RadioItems(id=ids.VIEW_MODE, value=PRUNED, className="view-mode", inline=False, options=[
                {"label": "pruned graph", "value": PRUNED},
                {"label": "pinned subgraph", "value": PINNED},
            ]),
        ]),
        html.Div(className="numbers", children=[
            html.Div(id=ids.COUNTS, className="counts"),
            html.Div(id=ids.SCORES, className="scores"),
            html.Div(id=ids.BUDGET_NOTE, className="budget-note"),
        ]),
    ])
