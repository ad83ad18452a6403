"""The whole page: stores and panels."""

from dash import dcc, html

from app import ids
from app.panels.batch import batch_panel
from app.panels.compare import compare_panel
from app.panels.controls import controls
from app.panels.details import details_panel
from app.panels.graph import graph_panel
from app.panels.header import header
from app.panels.image import image_panel
from app.panels.live import live_parts
from app.view.build import base_stylesheet


def page(names: list[str], value: str | None, folder: str, live=None, batch=None) -> html.Div:
    """live: the LiveConfig when the app has a live model (trace, steer, attention), else None;
    batch: the app.batch.BatchView of a batch folder, else None."""
    extra = live_parts(live)
    return html.Div(className="app", children=[
        dcc.Location(id=ids.URL, refresh=False),
        dcc.Store(id=ids.STORE_GRAPH, data={"name": None}),
        dcc.Store(id=ids.STORE_ANNOT_REV, data=0),
        dcc.Store(id=ids.STORE_SELECTED, data=None),
        dcc.Store(id=ids.STORE_REGION, data=None),
        dcc.Store(id=ids.STORE_VIEW_EDGES, data=None),
        dcc.Store(id=ids.STORE_HL_REGION, data=None),
        dcc.Store(id=ids.STORE_BASE_STYLE, data=base_stylesheet()),
        dcc.Store(id=ids.STORE_FIGURE_KEY, data=None),
        *extra["stores"],
        header(names, value, folder, extra=extra["header"]),
        *extra["overlay"],
        html.Main(className="main", children=[
            html.Section(className="left", children=[*([batch_panel(batch)] if batch is not None else []),
                                                     controls(), graph_panel()]),
            html.Aside(className="right", children=[image_panel(), compare_panel(), *extra["aside"], details_panel()]),
        ]),
    ])
