"""Callbacks, one module per feature, each with register(app, state)."""

from app.callbacks import annotate, clientside, export, graph_list, graph_view, image, selection

MODULES = (graph_list, graph_view, selection, image, annotate, export, clientside)


def register_all(app, state) -> None:
    for module in MODULES:
        module.register(app, state)
