"""Compare mode: diff the open graph (A) with another graph of the folder (B)."""

from __future__ import annotations

import json

import numpy as np
from dash import Input, Output, State, html, no_update

from tracer.errors import InputError

from app import ids
from app.graph_store import GraphNotFound
from app.panels.compare import COLUMNS

TABLE_ROWS = 500  # the largest changes; the download has every row


def register(app, state) -> None:
    @app.callback(Output(ids.COMPARE_WITH, "options"), Output(ids.COMPARE_WITH, "value"),
                  Input(ids.STORE_GRAPH, "data"))
    def choices(graph):
        name = (graph or {}).get("name")
        return [{"label": n, "value": n} for n in state.store.names() if n != name], None

    @app.callback(Output(ids.COMPARE_SUMMARY, "children"), Output(ids.COMPARE_IMAGE, "src"),
                  Output(ids.COMPARE_IMAGE, "style"), Output(ids.COMPARE_TABLE, "data"),
                  Output(ids.COMPARE_DOWNLOAD, "disabled"),
                  Input(ids.COMPARE_WITH, "value"), State(ids.STORE_GRAPH, "data"))
    def compare(other, graph):
        hidden = {"display": "none"}
        name = (graph or {}).get("name")
        if not other or not name:
            return "Choose a graph B to see what appears, vanishes or changes between the two.", None, hidden, [], True
        try:
            diff, a, b = _diff(state, name, other)
        except (GraphNotFound, InputError) as err:
            return html.Span(f"Cannot compare: {err}", className="message"), None, hidden, [], True
        counts = diff.counts()["nodes"]
        cells = diff.changed_cells
        summary = [html.Div([html.B("A: "), _targets(diff.targets_a), html.B("  B: "), _targets(diff.targets_b)]),
                   html.Div(f"nodes: {counts['appears']} appear in B, {counts['vanishes']} vanish from A, "
                            f"{counts['changed']} change influence, {counts['same']} stay"),
                   html.Div(f"image cells that changed: {len(cells)}"
                            + (": " + " ".join(f"({c['row']},{c['col']})" for c in cells) if cells else ""))]
        from tracer.graph.diff import image_panel
        from tracer.graph.neuronpedia import image_to_data_uri

        panel = image_panel(diff, a, b)
        src = image_to_data_uri(np.asarray(panel.convert("RGB"))) if panel is not None else None
        rows = []
        for n in diff.nodes[:TABLE_ROWS]:
            row = {"status": n.status, "kind": n.kind, "label_a": n.label_a or "—", "label_b": n.label_b or "—",
                   "influence_a": n.influence_a, "influence_b": n.influence_b, "delta": n.delta}
            rows.append({k: (round(v, d) if d is not None else v) for (k, _, d), v in
                         zip(COLUMNS, (row[k] for k, _, _ in COLUMNS))})
        return summary, src, ({"display": "block"} if src else hidden), rows, False

    @app.callback(Output(ids.COMPARE_FILE, "data"), Input(ids.COMPARE_DOWNLOAD, "n_clicks"),
                  State(ids.COMPARE_WITH, "value"), State(ids.STORE_GRAPH, "data"), prevent_initial_call=True)
    def download(clicks, other, graph):
        name = (graph or {}).get("name")
        if not clicks or not other or not name:
            return no_update
        try:
            diff, _, _ = _diff(state, name, other)
        except (GraphNotFound, InputError):
            return no_update
        stem = lambda n: n.split(".")[0]  # noqa: E731
        return {"content": json.dumps(diff.to_dict(), indent=1), "filename": f"{stem(name)}-vs-{stem(other)}.diff.json"}


def _diff(state, name_a: str, name_b: str):
    from tracer.graph.diff import diff_graphs

    a, b = state.store.session(name_a).graph, state.store.session(name_b).graph
    return diff_graphs(a, b, names=(name_a, name_b)), a, b


def _targets(targets: list[dict]) -> str:
    return ", ".join(f"{t['label']} ({t['probability']:.2f})" for t in targets[:3])
