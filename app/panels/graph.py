"""The attribution graph (cytoscape), the subgraph pane, the hover line, node actions and exports.

Zooming: cytoscape's own wheel zoom is off (one notch jumped 2.5-3x, and a custom
wheelSensitivity logs a warning); assets/vlmc.js zooms gently instead."""

import dash_cytoscape as cyto
from dash import dcc, html

from app import ids
from app.view.build import base_stylesheet


def graph_panel() -> html.Div:
    return html.Div(className="graph-panel", children=[
        html.Div(id=ids.HOVER_INFO, className="hover-info",
                 children="Hover a node for its label; click to select; shift+click or shift+drag to select several."),
        cyto.Cytoscape(
            id=ids.CYTO, className="cyto", elements=[], stylesheet=base_stylesheet(),
            # 'preset': positions come from the server. The layout (a fit) re-runs only when the
            # callback changes this prop (a new graph or view mode), not after each slider step:
            # autoRefreshLayout would re-run it 100 ms after every change and redraw twice.
            layout={"name": "preset", "fit": True, "padding": 30}, autoRefreshLayout=False,
            minZoom=0.05, maxZoom=6, boxSelectionEnabled=True, userZoomingEnabled=False,
            style={"width": "100%", "height": "100%"},
        ),
        html.Div(id=ids.SUBGRAPH_PANE, className="subgraph-pane closed", children=[
            html.Div(className="subgraph-title", children=[
                html.Span("Subgraph", className="group-title"),
                html.Span(id=ids.SUBGRAPH_NOTE, className="note",
                          children="pinned nodes and supernodes with all their edges: pin nodes to assemble a circuit"),
            ]),
            cyto.Cytoscape(
                id=ids.SUBGRAPH, className="cyto subgraph", elements=[], stylesheet=base_stylesheet(),
                layout={"name": "preset", "fit": True, "padding": 20}, autoRefreshLayout=False,
                minZoom=0.05, maxZoom=6, userZoomingEnabled=False, style={"width": "100%", "height": "100%"},
            ),
        ]),
        html.Div(className="actions", children=[
            html.Div(className="action-group", children=[
                html.Button("Pin / unpin", id=ids.PIN_BUTTON, title="Pin the selected nodes (the pinned subgraph shows only pinned nodes)"),
                html.Button("Unpin all", id=ids.UNPIN_ALL_BUTTON),
                html.Button("Hide", id=ids.HIDE_BUTTON, title="Hide the selected nodes from every view"),
                html.Button("Show hidden", id=ids.UNHIDE_ALL_BUTTON),
                dcc.Input(id=ids.GROUP_LABEL, type="text", placeholder="supernode label", debounce=False,
                          className="group-label"),
                html.Button("Group", id=ids.GROUP_BUTTON, title="Group the selected nodes into one labelled supernode"),
                html.Button("Ungroup", id=ids.UNGROUP_BUTTON, title="Dissolve the selected supernode"),
                html.Button("Suggest groups", id=ids.SUGGEST_BUTTON,
                            title="Groups of features that read the same image cells, share inputs and outputs"),
                html.Span(id=ids.ACTION_MESSAGE, className="message"),
            ]),
            html.Div(id=ids.SUGGESTIONS, className="suggestions"),
            html.Div(className="action-group", children=[
                html.Span("Export", className="group-title"),
                dcc.RadioItems(id=ids.EXPORT_SCOPE, value="view", inline=True, className="export-scope", options=[
                    {"label": "current view", "value": "view"}, {"label": "pinned subgraph", "value": "pinned"}]),
                html.Button("Neuronpedia JSON", id=ids.EXPORT_JSON),
                html.Button("GraphML", id=ids.EXPORT_GRAPHML),
                html.Button("PNG", id=ids.EXPORT_PNG, title="Picture of the current view or of the subgraph"),
                html.Button("SVG", id=ids.EXPORT_SVG, title="Picture of the current view or of the subgraph"),
                html.Span(id=ids.EXPORT_MESSAGE, className="message"),
                dcc.Download(id=ids.DOWNLOAD),
            ]),
        ]),
    ])
