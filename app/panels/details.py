"""Details of the selected node: editable label, numbers, tokens, edges, examples."""

from dash import dcc, html

from app import ids


def details_panel() -> html.Div:
    return html.Div(className="panel details-panel", children=[
        html.Div(id=ids.DETAILS_TITLE, className="panel-title", children="Details"),
        html.Div(className="label-editor", children=[
            dcc.Input(id=ids.LABEL_INPUT, type="text", placeholder="label (clerp) of the selected node",
                      debounce=False, className="label-input", disabled=True),
            html.Button("Save label", id=ids.LABEL_SAVE, disabled=True),
            html.Span(id=ids.LABEL_MESSAGE, className="message"),
        ]),
        html.Div(id=ids.DETAILS, className="details", children=html.Div(
            "Click a node in the graph to see its details.", className="note")),
        html.Div(id=ids.TOKEN_STRIP, className="token-strip"),
        html.Div(id=ids.EXAMPLES, className="examples"),
    ])
