"""A batch folder: a table row opens its example's graph; the influence map per question type."""

from __future__ import annotations

from dash import Input, Output, no_update

from app import ids


def register(app, state) -> None:
    batch = state.batch

    @app.callback(Output(ids.GRAPH_DROPDOWN, "value", allow_duplicate=True),
                  Input(ids.BATCH_TABLE, "active_cell"), prevent_initial_call=True)
    def open_row(cell):
        # row_id is the example id (the rows carry "id"), whatever the sort or filter
        name = batch.graphs.get(str((cell or {}).get("row_id")))
        return name if name and name in state.store.names() else no_update

    @app.callback(Output(ids.BATCH_INFLUENCE, "figure"), Input(ids.BATCH_TYPE, "value"), prevent_initial_call=True)
    def influence(question_type):
        return batch.influence_figure(question_type if question_type in batch.question_types() else "all")
