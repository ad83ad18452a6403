"""Callbacks, one module per feature, each with register(app, state)."""

from app.callbacks import (annotate, clientside, compare, export, graph_list, graph_view, image, selection,
                           suggest)

MODULES = (graph_list, graph_view, selection, image, annotate, suggest, compare, export, clientside)


def register_all(app, state) -> None:
    for module in MODULES:
        module.register(app, state)
    if getattr(state, "batch", None) is not None and not state.batch.error:  # a batch folder's table
        from app.callbacks import batch

        batch.register(app, state)
    if getattr(state, "live", None) is not None:  # trace, steer, attention (a live model)
        from app.callbacks import attention, jobs, steer, trace

        for module in (jobs, trace, steer, attention):
            module.register(app, state)
