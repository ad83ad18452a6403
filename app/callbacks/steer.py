"""Steering: pick features from the graph into rows (pattern-matching ids), edit them, run the
interventions in the worker, show next-token probabilities and generations before and after."""

from __future__ import annotations

import math

from dash import ALL, MATCH, Input, Output, State, ctx, html, no_update

from app import ids
from app.callbacks.jobs import comparison_outputs, live_session, open_session
from app.jobs import ACTIVE
from app.live import LiveError, is_attention_graph
from app.panels.steer import DEFAULT_FACTOR, steer_row
from app.tasks import steer_job

MAX_ROWS = 32
MODES = ("ablate", "scale", "set")


def feature_rows(session, keys: list[str], annotations=None) -> tuple[list[dict], list[str]]:
    """Steering rows for the feature nodes among keys (supernodes: their feature members), and the
    keys that are not features."""
    g = session.graph
    supers = {s["id"]: s for s in (annotations.supernodes if annotations else [])}
    out, skipped = [], []
    for key in keys:
        members = supers[key]["members"] if key in supers else [key]
        for k in members:
            index = session.index.get(k)
            if index is None or session.kinds[index] != "feature":
                skipped.append(k)
                continue
            layer, pos, feat = (int(x) for x in g.features[index])
            if feat < 0:
                skipped.append(k)
                continue
            own = (annotations.labels.get(k) if annotations else None) or session.default_label(index).strip()
            label = f"{supers[key]['label']}: {own}" if key in supers else own
            out.append({"key": k, "layer": layer, "feature": feat, "position": pos,
                        "activation": float(g.activations[index]), "label": label,
                        "mode": "ablate", "value": None, "positions": "active"})
    return out, skipped


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _row_problem(r) -> str | None:
    """What is wrong with one stored row (None: it is a row feature_rows made, with its "row")."""
    if not isinstance(r, dict):
        return "is not a row"
    for name in ("row", "layer", "feature", "position"):
        if not _whole(r.get(name)):
            return f"has no whole-number {name!r}"
    for name in ("label", "key"):
        if not isinstance(r.get(name), str):
            return f"has no text {name!r}"
    act = r.get("activation")
    if act is not None and (not isinstance(act, (int, float)) or isinstance(act, bool) or not math.isfinite(act)):
        return "has an 'activation' that is not a number"
    return None


def check_rows(rows) -> list[dict]:
    """The steering rows store as the page writes it, else LiveError. A forged request can put
    anything there (a string, rows without "row", thousands of rows): refused here, before any
    callback indexes into it or queues a job, with a message for the page."""
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise LiveError("The steering rows are not a list: clear them and add the features again.")
    if len(rows) > MAX_ROWS:  # the Add button stops at MAX_ROWS: more can only be forged
        raise LiveError(f"{len(rows)} steering rows: at most {MAX_ROWS} features can be steered at once.")
    for k, r in enumerate(rows, 1):
        problem = _row_problem(r)
        if problem:
            raise LiveError(f"Steering row {k} {problem}: clear the rows and add the features again.")
    return rows


def _sync(rows: list[dict], modes, values, positions, row_ids) -> list[dict]:
    """Copy what the user set in the rendered rows back into the stored rows (checked ones)."""
    by_row = {r["row"]: dict(r) for r in rows}
    # the rendered rows' values: lists (one item per row) unless forged
    lists = [x if isinstance(x, list) else [] for x in (row_ids, modes, values, positions)]
    for rid, m, v, p in zip(*lists):
        row = rid.get("row") if isinstance(rid, dict) else None
        r = by_row.get(row) if _whole(row) else None
        if r is not None:
            r.update({"mode": m or "ablate", "value": v, "positions": p or "active"})
    return [by_row[r["row"]] for r in rows]


def edits_from_rows(rows: list[dict], region: dict | None) -> list[dict]:
    """FeatureIntervention fields for each row (LiveError for what cannot run)."""
    edits = []
    for r in rows:
        mode, value, where = r.get("mode") or "ablate", r.get("value"), r.get("positions") or "active"
        label = r.get("label") or f"L{r['layer']} #{r['feature']}"
        if mode not in MODES:
            raise LiveError(f"{label}: unknown mode {mode!r:.40}")
        if mode in ("scale", "set"):
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise LiveError(f"{label}: enter a {'factor' if mode == 'scale' else 'value'}")
        else:
            value = None
        if where == "node":
            positions = [int(r["position"])]
        elif where == "region":
            if not isinstance(region, dict) or not region.get("cells"):
                raise LiveError(f"{label}: select an image region first (click a cell or drag a rectangle)")
            image = int(region.get("image", 0))
            positions = [(image, int(c[0]), int(c[1])) for c in region["cells"]]
        elif where in ("active", "last", "generated", "all"):
            positions = where
        else:
            raise LiveError(f"{label}: unknown positions {where!r:.40}")
        edits.append({"layer": int(r["layer"]), "feature": int(r["feature"]), "mode": mode, "value": value,
                      "positions": positions, "label": r.get("label", "")})
    return edits


def register(app, state) -> None:
    live = state.live
    row_states = [State({"type": ids.STEER_MODE, "row": ALL}, "value"),
                  State({"type": ids.STEER_VALUE, "row": ALL}, "value"),
                  State({"type": ids.STEER_POSITIONS, "row": ALL}, "value"),
                  State({"type": ids.STEER_MODE, "row": ALL}, "id")]

    @app.callback(
        Output(ids.STORE_STEER_ROWS, "data"), Output(ids.STEER_SELECTED, "children"),
        Input(ids.STEER_ADD, "n_clicks"), Input(ids.STEER_CLEAR, "n_clicks"),
        Input({"type": ids.STEER_REMOVE, "row": ALL}, "n_clicks"), Input(ids.STORE_GRAPH, "data"),
        Input(ids.STORE_SELECTED, "data"), Input(ids.CYTO, "selectedNodeData"),
        State(ids.STORE_STEER_ROWS, "data"), *row_states,
        prevent_initial_call=True,
    )
    def rows(_add, _clear, _remove, graph, selected, selected_data, current, modes, values, positions, row_ids):
        trigger = ctx.triggered_id
        try:
            current = _sync(check_rows(current), modes, values, positions, row_ids)
        except LiveError as err:  # a forged store: only Clear replaces it, nothing else guesses
            return ([], "Steering rows cleared.") if trigger == ids.STEER_CLEAR else (no_update, str(err))
        session = open_session(state, graph)
        keys = [d["id"] for d in (selected_data or []) if isinstance(d, dict) and d.get("id")]
        if selected and selected not in keys:
            keys.append(selected)
        candidates, skipped = ([], keys)
        if session is not None:
            annotations, _ = state.annotations(session)
            candidates, skipped = feature_rows(session, keys, annotations)
        if session is not None and is_attention_graph(session.graph):
            note = "Attention graphs have no transcoder features to steer."
        elif candidates:
            names = ", ".join(c["label"] for c in candidates[:3]) + (f" and {len(candidates) - 3} more"
                                                                     if len(candidates) > 3 else "")
            note = f"Add: {names}"
        else:
            note = "Select feature nodes in the graph (shift+click for several), then add them."
        if trigger == ids.STORE_GRAPH:
            # rows stay when another graph opens: features are the transcoders', valid for any
            # prompt of the model (edit the red graph with features picked in the blue one)
            return no_update, note
        if trigger == ids.STEER_CLEAR:
            return [], note
        if isinstance(trigger, dict) and trigger.get("type") == ids.STEER_REMOVE:
            if not (ctx.triggered and ctx.triggered[0].get("value")):
                return no_update, note
            return [r for r in current if r["row"] != trigger.get("row")], note
        if trigger == ids.STEER_ADD:
            if not candidates:
                return no_update, "Nothing to add: select one or more feature nodes first."
            have = {(r["layer"], r["feature"], r["position"]) for r in current}
            nxt = max([r["row"] for r in current], default=0) + 1
            added = []
            for c in candidates:
                if (c["layer"], c["feature"], c["position"]) in have or len(current) + len(added) >= MAX_ROWS:
                    continue
                added.append(dict(c, row=nxt))
                have.add((c["layer"], c["feature"], c["position"]))
                nxt += 1
            return current + added, note
        return no_update, note  # a new selection: only the note changes

    @app.callback(Output(ids.STEER_ROWS, "children"), Input(ids.STORE_STEER_ROWS, "data"), prevent_initial_call=True)
    def render_rows(rows):
        try:
            rows = check_rows(rows)
        except LiveError as err:
            return html.Div(str(err), className="note")
        if not rows:
            return html.Div("No features to steer yet.", className="note")
        return [steer_row(r) for r in rows]

    @app.callback(
        Output({"type": ids.STEER_VALUE, "row": MATCH}, "disabled"),
        Output({"type": ids.STEER_VALUE, "row": MATCH}, "placeholder"),
        Output({"type": ids.STEER_VALUE, "row": MATCH}, "value"),
        Input({"type": ids.STEER_MODE, "row": MATCH}, "value"), State(ids.STORE_STEER_ROWS, "data"),
        prevent_initial_call=True,
    )
    def mode_changed(mode, rows):
        """Each mode starts from a sensible value: a factor of 2, or the node's own activation."""
        if mode == "ablate":
            return True, "", None
        if mode == "scale":
            return False, "factor", DEFAULT_FACTOR
        row = ctx.outputs_list[0]["id"]["row"] if ctx.outputs_list else None
        try:
            rows = check_rows(rows)
        except LiveError:
            rows = []  # a forged store: start from the default value
        act = next((r.get("activation") for r in rows if r["row"] == row), None)
        return False, "activation", float(f"{act:.4g}") if act is not None else 1.0

    @app.callback(
        Output(ids.store_job("steer"), "data"), Output(ids.STEER_STATUS, "children", allow_duplicate=True),
        Output(ids.STEER_STATUS, "className", allow_duplicate=True),
        Input(ids.STEER_RUN, "n_clicks"),
        State(ids.STORE_STEER_ROWS, "data"), *row_states, State(ids.STEER_FREEZE, "value"),
        State(ids.STEER_TOPK, "value"), State(ids.STEER_GENERATE, "value"), State(ids.STORE_REGION, "data"),
        State(ids.STORE_GRAPH, "data"), State(ids.store_job("steer"), "data"),
        prevent_initial_call=True,
    )
    def run(_n, rows, modes, values, positions, row_ids, freeze, top_k, generate, region, graph, current):
        current_id = current.get("id") if isinstance(current, dict) else None
        st = live.queue.status(current_id) if current_id else None
        if st and st["state"] in ACTIVE:
            return no_update, "Still running the previous steering job.", "job-status warning"
        session, error = live_session(state, graph)
        try:
            rows = _sync(check_rows(rows), modes, values, positions, row_ids)
            if error:
                raise LiveError(error)
            if not rows:
                raise LiveError("Add at least one feature (select it in the graph, then Add selected features).")
            edits = edits_from_rows(rows, region)
            top_k = int(top_k) if top_k else 8
            generate = int(generate) if generate else 0
            if not 1 <= top_k <= 30 or not 0 <= generate <= 256:
                raise LiveError("top-k: 1 to 30; generate: 0 to 256 tokens")
        except (LiveError, TypeError, ValueError) as err:
            return no_update, str(err), "job-status error"
        freeze = freeze if isinstance(freeze, list) else []  # the checklist's values (a list) unless forged
        job_id = live.submit("steer", steer_job(live, session.graph, edits, "freeze" in freeze, "direct" in freeze,
                                                top_k, generate, session.name),
                             label=f"steer {len(edits)} feature(s) of {session.name}", meta={"top_k": top_k})
        return {"id": job_id}, "queued", "job-status busy"

    @app.callback(
        Output(ids.STEER_STATUS, "children"), Output(ids.STEER_STATUS, "className"),
        Output(ids.STEER_CHART, "figure"), Output(ids.STEER_CHART, "style"), Output(ids.STEER_RESULT, "children"),
        Input(ids.store_status("steer"), "data"), Input(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def show(status, graph):
        return comparison_outputs(live, status, "steering", ((status or {}).get("meta") or {}).get("top_k", 8), graph)
