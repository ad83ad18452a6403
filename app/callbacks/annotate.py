"""Edits saved to the graph's annotations file: labels, pins, hidden nodes, supernodes."""

from __future__ import annotations

from dash import Input, Output, State, ctx, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.annotations import is_key, update_annotations
from app.graph_store import GraphNotFound
from app.view.build import DECORATIONS
from app.view.keys import is_supernode_key


def _targets(selected_nodes, selected_key) -> list[str]:
    """The nodes an action applies to: the cytoscape selection, else the selected node."""
    nodes = selected_nodes if isinstance(selected_nodes, list) else []
    keys = [d["id"] for d in nodes if isinstance(d, dict) and d.get("kind") not in DECORATIONS and is_key(d.get("id"))]
    if not keys and is_key(selected_key):
        keys = [selected_key]
    return list(dict.fromkeys(keys))  # once each: 5,000 copies of one node are one node (counts, messages)


def register(app, state) -> None:
    @app.callback(
        Output(ids.STORE_ANNOT_REV, "data"), Output(ids.ACTION_MESSAGE, "children"),
        Output(ids.LABEL_MESSAGE, "children"),
        Input(ids.LABEL_SAVE, "n_clicks"), Input(ids.LABEL_INPUT, "n_submit"),
        Input(ids.PIN_BUTTON, "n_clicks"), Input(ids.UNPIN_ALL_BUTTON, "n_clicks"),
        Input(ids.HIDE_BUTTON, "n_clicks"), Input(ids.UNHIDE_ALL_BUTTON, "n_clicks"),
        Input(ids.GROUP_BUTTON, "n_clicks"), Input(ids.UNGROUP_BUTTON, "n_clicks"),
        State(ids.LABEL_INPUT, "value"), State(ids.GROUP_LABEL, "value"), State(ids.STORE_SELECTED, "data"),
        State(ids.CYTO, "selectedNodeData"), State(ids.STORE_GRAPH, "data"), State(ids.STORE_ANNOT_REV, "data"),
        prevent_initial_call=True,
    )
    def edit(*args):
        label, group_label, selected, selected_nodes, graph, rev = args[-6:]
        trigger = ctx.triggered_id
        if not ctx.triggered or not ctx.triggered[0].get("value"):
            return no_update, no_update, no_update
        name = (graph or {}).get("name")
        if not name:
            return no_update, "Open a graph first.", ""
        try:
            session = state.store.session(name)
        except (GraphNotFound, GraphFormatError) as err:
            return no_update, str(err), ""
        keys = _targets(selected_nodes, selected)
        valid = [k for k in keys if k in session.index or is_supernode_key(k)]

        if trigger in (ids.LABEL_SAVE, ids.LABEL_INPUT):
            if not selected:
                return no_update, "", "Select a node first."
            action, done = (lambda a: a.set_label(selected, label, session.index)), "label saved"
        elif trigger == ids.PIN_BUTTON:
            if not valid:
                return no_update, "Select nodes to pin.", ""
            action, done = (lambda a: a.toggle_pins(valid)), None
        elif trigger == ids.UNPIN_ALL_BUTTON:
            action, done = (lambda a: setattr(a, "pinned", [])), "all unpinned"
        elif trigger == ids.HIDE_BUTTON:
            if not valid:
                return no_update, "Select nodes to hide.", ""
            action, done = (lambda a: a.hide(valid)), f"{len(valid)} hidden"
        elif trigger == ids.UNHIDE_ALL_BUTTON:
            action, done = (lambda a: setattr(a, "hidden", [])), "hidden nodes shown again"
        elif trigger == ids.GROUP_BUTTON:
            if len(valid) < 2:
                return no_update, "Select two or more nodes (shift+click) to group.", ""
            action, done = (lambda a: a.group(valid, group_label)), "grouped"
        elif trigger == ids.UNGROUP_BUTTON:
            sids = [k for k in keys if is_supernode_key(k)]
            if not sids:
                return no_update, "Select a supernode to ungroup.", ""
            action, done = (lambda a: [a.ungroup(s) for s in sids]), "ungrouped"
        else:
            return no_update, no_update, no_update
        try:
            _, result = update_annotations(session.path, action)
        except (OSError, ValueError) as err:
            message = f"Not saved: {err}"
            return no_update, ("" if trigger in (ids.LABEL_SAVE, ids.LABEL_INPUT) else message), (
                message if trigger in (ids.LABEL_SAVE, ids.LABEL_INPUT) else "")
        if trigger == ids.PIN_BUTTON:
            done = f"{len(valid)} pinned" if result else f"{len(valid)} unpinned"
        if trigger == ids.GROUP_BUTTON:
            done = f"grouped {len(valid)} nodes into {result}"
        if trigger in (ids.LABEL_SAVE, ids.LABEL_INPUT):
            return (rev or 0) + 1, "", done
        return (rev or 0) + 1, done, ""
