"""The input image with its soft-token grid: hover, click or drag a region."""

from dash import dcc, html

from app import ids


def image_panel() -> html.Div:
    return html.Div(id=ids.IMAGE_PANEL, className="panel image-panel", children=[
        html.Div(className="panel-title", children=[
            html.Span("Image"),
            dcc.Dropdown(id=ids.IMAGE_SELECT, options=[], value=0, clearable=False, className="image-select",
                         style={"display": "none"}),
            html.Button("Ground-truth region", id=ids.TRUTH_REGION, className="small-button",
                        title="Select the cells under the objects the answer depends on (toy graphs)",
                        style={"display": "none"}),
            html.Button("Clear region", id=ids.CLEAR_REGION, className="small-button"),
        ]),
        html.Div(id=ids.IMAGE_NOTE, className="note"),
        dcc.Graph(id=ids.IMAGE_FIGURE, className="image-figure", clear_on_unhover=True,
                  config={"displaylogo": False, "scrollZoom": False,
                          "modeBarButtonsToRemove": ["lasso2d", "autoScale2d", "toImage"]}),
        html.Div(id=ids.REGION_INFO, className="region-info"),
    ])
