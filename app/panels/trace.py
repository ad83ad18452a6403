"""The "new trace" form: an overlay under the header (position fixed, so nothing above the graph
changes height: the recipe's cytoscape click pitfall), opened by the header's New trace button."""

from __future__ import annotations

from dash import dcc, html

from app import ids
from app.live import LiveConfig


def trace_button() -> html.Button:
    return html.Button("New trace", id=ids.TRACE_OPEN, className="trace-open",
                       title="Trace a new image and prompt with the live model")


def _number(id_: str, label: str, value, step, min_=None, max_=None, title: str = "") -> html.Div:
    return html.Div(className="setting", title=title, children=[
        html.Label(label, htmlFor=id_),
        dcc.Input(id=id_, type="number", value=value, step=step, min=min_, max=max_, debounce=False,
                  className="setting-input"),
    ])


def trace_panel(config: LiveConfig) -> html.Div:
    d = config.defaults()
    return html.Div(id=ids.TRACE_PANEL, className="trace-panel", style={"display": "none"}, children=[
        html.Div(className="trace-title", children=[
            html.Span("New trace", className="trace-heading"),
            html.Span(config.describe(), id=ids.LIVE_INFO, className="live-info"),
            html.Button("×", id=ids.TRACE_CLOSE, className="icon-button close-button", title="Close (the job keeps running)"),
        ]),
        html.Div(className="trace-section", children=[
            html.Div("Image", className="section-title"),
            html.Div(className="upload-row", children=[
                dcc.Upload(id=ids.TRACE_UPLOAD, multiple=False,  # no accept filter: a rejected drop would be silent
                           className="upload", children=html.Div([
                               "Drop an image here or ", html.A("choose a file"), html.Br(),
                               html.Small("PNG, JPEG or WebP, up to 20 MB")])),
                html.Img(id=ids.TRACE_PREVIEW, className="trace-preview", alt="", style={"display": "none"}),
            ]),
            html.Div(className="upload-actions", children=[
                html.Button("Use the open graph's image", id=ids.TRACE_USE_CURRENT, className="small-button"),
                html.Span(id=ids.TRACE_UPLOAD_MESSAGE, className="upload-message", role="status"),
            ]),
        ]),
        html.Div(className="trace-section", children=[
            html.Label("Prompt", htmlFor=ids.TRACE_PROMPT, className="section-title"),
            dcc.Textarea(id=ids.TRACE_PROMPT, placeholder="What color is the circle?", className="trace-prompt",
                         value=""),
            html.Div("The image goes before the prompt if the prompt has no image marker; the model's chat "
                     "template is applied.", className="note"),
        ]),
        html.Div(className="trace-section", children=[
            html.Div("Targets (logit nodes)", className="section-title"),
            dcc.RadioItems(id=ids.TRACE_TARGET_MODE, value="salient", className="target-mode", inline=True, options=[
                {"label": "salient logits", "value": "salient"},
                {"label": "an answer token", "value": "token"},
                {"label": "a contrast A − B", "value": "contrast"},
            ]),
            html.Div(className="target-inputs", children=[
                dcc.Input(id=ids.TRACE_TARGET_A, type="text", placeholder="token, e.g. red", className="target-input",
                          disabled=True),
                html.Span("−", className="target-minus"),
                dcc.Input(id=ids.TRACE_TARGET_B, type="text", placeholder="other token, e.g. blue",
                          className="target-input", disabled=True),
            ]),
        ]),
        html.Div(className="trace-section", children=[
            html.Div("Attribution settings", className="section-title"),
            html.Div(className="settings-grid", children=[
                _number(ids.TRACE_MAX_FEATURES, "max feature nodes", d["max_feature_nodes"], 1, 1, 100_000,
                        "features explored in influence order (bounds time and memory)"),
                _number(ids.TRACE_MAX_LOGITS, "max logits", d["max_n_logits"], 1, 1, 50,
                        "salient logits: at most this many"),
                _number(ids.TRACE_DESIRED_PROB, "desired prob.", d["desired_logit_prob"], 0.01, 0.01, 1.0,
                        "salient logits: the most likely tokens until their probabilities add up to this"),
                _number(ids.TRACE_BATCH, "batch size", d["batch_size"], 1, 1, 4096, "backward lanes per batch"),
            ]),
            html.Div(className="name-row", children=[
                html.Label("File name", htmlFor=ids.TRACE_NAME),
                dcc.Input(id=ids.TRACE_NAME, type="text", placeholder="from the prompt", className="trace-name"),
            ]),
        ]),
        html.Div(className="trace-actions", children=[
            html.Button("Trace", id=ids.TRACE_SUBMIT, className="primary-button"),
            html.Button("Cancel", id=ids.TRACE_CANCEL, className="small-button", style={"display": "none"}),
            html.Span(id=ids.TRACE_STATUS, className="job-status", role="status"),
        ]),
        html.Div(className="progress", children=html.Div(id=ids.TRACE_BAR, className="progress-bar",
                                                         style={"width": "0%"})),
        html.Div(id=ids.TRACE_MESSAGE, className="trace-message", role="alert"),
        dcc.Store(id=ids.STORE_UPLOAD, data=None),
        dcc.Store(id=ids.STORE_TRACE_CANCEL, data=None),
    ])
