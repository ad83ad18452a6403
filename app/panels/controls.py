"""Pruning sliders (each label shows its value), the feature budget, view mode and options,
node/edge counts and scores (fixed height: see the recipe's click pitfall, nothing above the
graph may change height after it is drawn)."""

from dash import dcc, html

from app import ids
from app.state import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD
from app.view.build import DEFAULT_FEATURE_BUDGET, FEATURE_BUDGETS, PINNED, PRUNED


def controls() -> html.Div:
    budget_index = FEATURE_BUDGETS.index(DEFAULT_FEATURE_BUDGET)
    return html.Div(className="controls", children=[
        html.Div(className="slider-box", children=[
            html.Label(f"Features shown ≤ {DEFAULT_FEATURE_BUDGET}", id=ids.BUDGET_LABEL,
                       htmlFor=ids.FEATURE_BUDGET, title="The most influential features first"),
            dcc.Slider(id=ids.FEATURE_BUDGET, min=0, max=len(FEATURE_BUDGETS) - 1, step=1, value=budget_index,
                       marks={i: str(b) for i, b in enumerate(FEATURE_BUDGETS) if b in (10, 40, 100, 1000)},
                       updatemode="mouseup"),
        ]),
        html.Div(className="slider-box", children=[
            html.Label(f"Node threshold: {DEFAULT_NODE_THRESHOLD:.2f}", id=ids.NODE_SLIDER_LABEL,
                       htmlFor=ids.NODE_SLIDER, title="Share of the influence on the logits the kept nodes carry"),
            dcc.Slider(id=ids.NODE_SLIDER, min=0.05, max=1.0, step=0.05, value=DEFAULT_NODE_THRESHOLD,
                       marks={0.05: "0.05", 0.5: "0.5", 1.0: "1"}, updatemode="mouseup"),
        ]),
        html.Div(className="slider-box", children=[
            html.Label(f"Edge threshold: {DEFAULT_EDGE_THRESHOLD:.2f}", id=ids.EDGE_SLIDER_LABEL,
                       htmlFor=ids.EDGE_SLIDER),
            dcc.Slider(id=ids.EDGE_SLIDER, min=0.5, max=1.0, step=0.01, value=DEFAULT_EDGE_THRESHOLD,
                       marks={0.5: "0.5", 0.75: "0.75", 1.0: "1"}, updatemode="mouseup"),
        ]),
        html.Div(className="view-box", children=[
            dcc.RadioItems(id=ids.VIEW_MODE, value=PRUNED, className="view-mode", inline=False, options=[
                {"label": "pruned graph", "value": PRUNED},
                {"label": "pinned subgraph", "value": PINNED},
            ]),
            dcc.Checklist(id=ids.VIEW_OPTIONS, value=[], className="view-options", inline=False, options=[
                {"label": "all edges", "value": "all-edges"},
                {"label": "subgraph pane", "value": "subgraph"},
            ]),
        ]),
        html.Div(className="numbers", children=[
            html.Div(id=ids.COUNTS, className="counts"),
            html.Div(id=ids.SCORES, className="scores"),
            html.Div(id=ids.BUDGET_NOTE, className="budget-note"),
        ]),
    ])
