"""Vision attention overlay switch, region ablation, the attention graph, heads behind an edge."""

from __future__ import annotations

from dash import dcc, html

from app import ids


VISION_OFF = "Off: choose rollout or similarity to compute where the selected cell's vision attention comes from."


def vision_strip() -> html.Div:
    """Under the image: where the vision tower's attention of the selected cell comes from."""
    return html.Div(className="vision-strip", children=[
        html.Span("Vision attention of the selected cell:", className="vision-title"),
        # off by default: a map means a vision-tower run of the live model (4B parameters to load
        # for Gemma3-4B), not something an exploratory click on a cell should start
        dcc.RadioItems(id=ids.VISION_KIND, value="off", inline=True, className="vision-kind", options=[
            {"label": "off", "value": "off"}, {"label": "rollout", "value": "rollout"},
            {"label": "similarity", "value": "similarity"}]),
        html.Div(id=ids.VISION_NOTE, className="note", children=VISION_OFF),
        dcc.Store(id=ids.STORE_VISION_SHOWN, data=None),
    ])


def attention_panel() -> html.Details:
    return html.Details(id=ids.ATTN_PANEL, open=False, className="panel live-panel", children=[
        html.Summary("Region ablation · attention graph · heads", className="live-summary"),
        html.Div("Region ablation", className="section-title"),
        html.Div(className="action-group", children=[
            html.Button("Zero-ablate region", id=ids.REGION_ZERO, className="small-button",
                        title="Replace the selected cells' image soft tokens by zeros"),
            html.Button("Mean-ablate region", id=ids.REGION_MEAN, className="small-button",
                        title="Replace them by the mean soft token of the image"),
            html.Span(id=ids.REGION_STATUS, className="job-status", role="status"),
        ]),
        dcc.Graph(id=ids.REGION_CHART, className="prob-chart", style={"display": "none"},
                  config={"displaylogo": False, "displayModeBar": False}),
        html.Div(id=ids.REGION_RESULT, className="live-result"),
        html.Div("Attention graph", className="section-title"),
        html.Div(className="action-group", children=[
            html.Button("Attention graph of this prompt", id=ids.ATTN_GRAPH, className="small-button",
                        title="How information moves between positions through attention heads (same targets)"),
            html.Button("← back", id=ids.ATTN_BACK, className="small-button", style={"display": "none"}),
            html.Span(id=ids.ATTN_STATUS, className="job-status", role="status"),
        ]),
        html.Div("Heads behind an edge", className="section-title"),
        html.Div(id=ids.EDGE_INFO, className="note", children="Click an edge in the graph."),
        html.Div(className="action-group", children=[
            html.Button("Which heads carry it?", id=ids.HEADS_BUTTON, className="small-button", disabled=True),
        ]),
        html.Div(id=ids.HEADS_RESULT, className="live-result"),
        dcc.Store(id=ids.STORE_EDGE, data=None),
        dcc.Store(id=ids.STORE_ATTN_BACK, data=None, storage_type="session"),
    ])
