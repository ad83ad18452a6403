"""Supernode suggestions (tracer.graph.supernodes): listed with their reason, grouped in one click."""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.annotations import update_annotations
from app.graph_store import GraphNotFound

SHOWN = 6  # suggestions listed at once


def register(app, state) -> None:
    listed: dict[str, list] = {}  # graph name -> the suggestions its buttons stand for

    @app.callback(Output(ids.SUGGESTIONS, "children"),
                  Input(ids.SUGGEST_BUTTON, "n_clicks"), Input(ids.STORE_GRAPH, "data"), prevent_initial_call=True)
    def suggest(_clicks, graph):
        from tracer.graph.supernodes import suggest_supernodes

        name = (graph or {}).get("name")
        if ctx.triggered_id != ids.SUGGEST_BUTTON or not name:
            return []  # another graph: its suggestions are not these
        try:
            session = state.store.session(name)
        except (GraphNotFound, GraphFormatError) as err:
            return html.Div(str(err), className="message")
        found = suggest_supernodes(session.graph, top=SHOWN)
        listed[name] = found
        if not found:
            return html.Div("No groups to suggest: no features of this graph read the same cells or share "
                            "their inputs and outputs closely enough.", className="note")
        return [html.Div(className="suggestion", children=[
            html.Button("Group", id={"type": ids.SUGGEST_APPLY, "index": k},
                        title=f"Group these {len(s.members)} features into one supernode"),
            html.B(s.label), html.Span(f" · {s.kind}: {s.reason}", className="note"),
        ]) for k, s in enumerate(found)]

    @app.callback(Output(ids.STORE_ANNOT_REV, "data", allow_duplicate=True),
                  Output(ids.ACTION_MESSAGE, "children", allow_duplicate=True),
                  Input({"type": ids.SUGGEST_APPLY, "index": ALL}, "n_clicks"),
                  State(ids.STORE_GRAPH, "data"), State(ids.STORE_ANNOT_REV, "data"), prevent_initial_call=True)
    def apply(clicks, graph, rev):
        name = (graph or {}).get("name")
        trigger = ctx.triggered_id
        if not name or not isinstance(trigger, dict) or not any(clicks or []):
            return no_update, no_update
        found = listed.get(name) or []
        k = trigger.get("index")
        if not isinstance(k, int) or not 0 <= k < len(found):
            return no_update, "That suggestion is gone: suggest again."
        suggestion = found[k]
        try:
            session = state.store.session(name)
            keys = [session.keys[m] for m in suggestion.members]
            _, sid = update_annotations(session.path, lambda a: a.group(keys, suggestion.label))
        except (GraphNotFound, GraphFormatError, OSError, ValueError, IndexError) as err:
            return no_update, f"Not grouped: {err}"
        return (rev or 0) + 1, f"grouped {len(keys)} features into {sid} ({suggestion.label})"
