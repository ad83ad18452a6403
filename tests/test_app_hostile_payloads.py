"""Forged payloads posted to /_dash-update-component, as any web client can (a hostile-input
audit of the app): each gets a clear message in the page, never an HTTP 500, and nothing stored
is lost or corrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from graph_factory import make_graph

from tracer.graph import save_graph

from app import ids
from app.annotations import load_annotations
from app.factory import create_app
from app.live import LiveError

GOOD = "good.graph.safetensors"
# a steering row as the Add button stores it
ROW = {"row": 1, "key": "F_0_5_7", "layer": 0, "feature": 7, "position": 5, "activation": 1.5, "label": "red",
       "mode": "ablate", "value": None, "positions": "active"}


def _rewrite(path: Path, meta=None, tensors=None) -> None:
    """Edit a saved graph file's metadata / tensors, as a hostile writer would."""
    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    t, m = load_file(str(path)), json.loads(raw["vlm_circuits_graph"])
    if meta:
        meta(m)
    if tensors:
        tensors(t)
    save_file(t, str(path), metadata={"vlm_circuits_graph": json.dumps(m)})


def _negative_feature(t):
    f = t["features"].copy()
    f[0, 2] = -3
    t["features"] = f


HOSTILE_GRAPHS = {  # the audit's graph files: each must give a message wherever the app opens it
    "feat_neg.graph.safetensors": (None, _negative_feature),
    "m_scores_str.graph.safetensors": (lambda m: m.__setitem__("scores", {"replacement": "str"}), None),
}


@pytest.fixture
def app(tmp_path):
    g = make_graph(seed=0)
    g.model, g.transcoders = "toy", "toy-plt"  # the live model's: steering gets as far as it can
    save_graph(g, tmp_path / GOOD)
    for name, (meta, tensors) in HOSTILE_GRAPHS.items():
        _rewrite(save_graph(make_graph(seed=0), tmp_path / name), meta, tensors)
    app = create_app(tmp_path, live=True, live_factory=lambda c: pytest.fail("no model may load here"))
    yield app
    app.state.live.queue.shutdown()


def forge(app, output: str, values: dict, trigger: str):
    """POST the callback whose output starts with `output`, with `values[(id, property)]` (None
    for the rest; no rendered steering rows); (status, response)."""
    key, spec = next((k, cb) for k, cb in app.callback_map.items() if k.startswith(output) and "callback" in cb)

    def entry(i):
        if i["id"].startswith("{"):  # a pattern-matching id (ALL): no such components rendered
            return []
        return {"id": i["id"], "property": i["property"], "value": values.get((i["id"], i["property"]))}

    outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in key.strip(".").split("...")]
    body = {"output": key, "outputs": outs if key.startswith("..") else outs[0],
            "inputs": [entry(i) for i in spec["inputs"]], "state": [entry(i) for i in spec.get("state", [])],
            "changedPropIds": [trigger]}
    r = app.server.test_client().post("/_dash-update-component", json=body)
    return r.status_code, (r.get_json()["response"] if r.status_code == 200 else r.get_data(as_text=True))


def no_job_queued(app, response, kind):
    assert ids.store_job(kind) not in response  # no_update: the tab's job is unchanged
    assert app.state.live.queue.workers() == {}  # nothing was ever submitted


def every_callback_reading(app, target: tuple[str, str], hostile: list) -> int:
    """Post each server callback that reads `target` with each hostile value (the open graph good,
    buttons clicked, the rest empty); all must answer below 500. The number of callbacks."""
    n = 0
    for output, cb in app.callback_map.items():
        specs = cb["inputs"] + cb.get("state", [])
        if "callback" not in cb or not any((i["id"], i["property"]) == target for i in specs):
            continue
        if any(o.startswith("{") for o in output.strip(".").split("...")):
            continue  # MATCH outputs (one steering row's value field): forged in their own test
        n += 1
        for value in hostile:
            values = {(i["id"], i["property"]): (1 if i["property"] == "n_clicks" else None) for i in specs}
            values[(ids.STORE_GRAPH, "data")] = {"name": GOOD}
            values[target] = value
            status, response = forge(app, output, values, f"{target[0]}.{target[1]}")
            assert status < 500, (output, repr(value)[:60], response[-600:])
    return n


# ---------------------------------------------------------------------- the trace form (1, 2)
TRACE = {(ids.TRACE_SUBMIT, "n_clicks"): 1, (ids.TRACE_PROMPT, "value"): "What color?",
         (ids.TRACE_TARGET_MODE, "value"): "token", (ids.TRACE_TARGET_A, "value"): "red",
         (ids.TRACE_MAX_FEATURES, "value"): 50, (ids.TRACE_MAX_LOGITS, "value"): 5,
         (ids.TRACE_DESIRED_PROB, "value"): 0.9, (ids.TRACE_BATCH, "value"): 32}


@pytest.mark.parametrize("field, value, words", [
    (ids.TRACE_PROMPT, 5, "prompt: expected text, not int"),
    (ids.TRACE_PROMPT, {"a": 1}, "prompt: expected text, not dict"),
    (ids.TRACE_TARGET_A, 7, "answer token: expected text, not int"),
    (ids.TRACE_NAME, ["x"], "graph name: expected text, not list"),
])
def test_trace_submit_refuses_form_values_that_are_not_text(app, field, value, words):
    status, response = forge(app, f"..{ids.store_job('trace')}.data", {**TRACE, (field, "value"): value},
                             f"{ids.TRACE_SUBMIT}.n_clicks")
    assert status == 200, response
    assert words in response[ids.TRACE_MESSAGE]["children"]
    no_job_queued(app, response, "trace")


def test_parse_request_refuses_a_prompt_that_is_not_text():
    from app.callbacks.trace import parse_request

    with pytest.raises(LiveError, match="prompt: expected text, not int"):
        parse_request(5, "salient", "", "", 10, 1, 0.9, 1)


@pytest.mark.parametrize("upload", ["str", 5, ["token"], {"token": {"x": 1}}])
def test_trace_submit_with_a_forged_upload_store(app, upload):
    status, response = forge(app, f"..{ids.store_job('trace')}.data", {**TRACE, (ids.STORE_UPLOAD, "data"): upload},
                             f"{ids.TRACE_SUBMIT}.n_clicks")
    assert status == 200, response
    assert "upload it again" in response[ids.TRACE_MESSAGE]["children"]
    no_job_queued(app, response, "trace")


@pytest.mark.parametrize("target, hostile", [((ids.TRACE_PROMPT, "value"), [5, {"a": 1}, ["x"]]),
                                             ((ids.STORE_UPLOAD, "data"), ["str", 5, ["x"]])])
def test_no_trace_callback_answers_500_to_forged_values(app, target, hostile):
    assert every_callback_reading(app, target, hostile) >= 1


# ---------------------------------------------------------------------- steering (2, 3, 5)
STEER = {(ids.STEER_RUN, "n_clicks"): 1, (ids.STORE_GRAPH, "data"): {"name": GOOD}, (ids.STEER_TOPK, "value"): 8,
         (ids.STEER_GENERATE, "value"): 0}
STEER_OUT = f"..{ids.store_job('steer')}.data"


def steer_run(app, rows, region=None, top_k=8):
    values = {**STEER, (ids.STORE_STEER_ROWS, "data"): rows, (ids.STORE_REGION, "data"): region,
              (ids.STEER_TOPK, "value"): top_k}
    status, response = forge(app, STEER_OUT, values, f"{ids.STEER_RUN}.n_clicks")
    assert status == 200, response
    assert response[ids.STEER_STATUS]["className"] == "job-status error"
    no_job_queued(app, response, "steer")
    return response[ids.STEER_STATUS]["children"]


@pytest.mark.parametrize("region", ["str", 5, ["cells"], {"image": "0", "cells": [[0, 0]]},
                                    {"image": 0, "cells": "all"}, {"image": 0, "cells": [["a", 1]]},
                                    {"image": 0, "cells": [[0, 0, 0]]}, {"image": 0, "cells": [[-1, 0]]}])
def test_steer_run_with_a_forged_region_store(app, region):
    """A forged region is no region (app.browser_values): a row steered on the region asks for one."""
    message = steer_run(app, [dict(ROW, positions="region")], region)
    assert "red: select an image region first" in message


@pytest.mark.parametrize("rows, words", [
    ([{k: v for k, v in ROW.items() if k != "row"}], "Steering row 1 has no whole-number 'row'"),
    ([ROW, dict(ROW, row=2, layer="0")], "Steering row 2 has no whole-number 'layer'"),
    ([dict(ROW, row=[1])], "Steering row 1 has no whole-number 'row'"),
    ([dict(ROW, label={"a": 1})], "Steering row 1 has no text 'label'"),
    ([dict(ROW, activation="high")], "Steering row 1 has an 'activation' that is not a number"),
    ([5], "Steering row 1 is not a row"),
    ("str", "The steering rows are not a list"),
])
def test_steer_run_with_malformed_rows(app, rows, words):
    assert words in steer_run(app, rows)


@pytest.mark.parametrize("row, words", [
    (dict(ROW, mode={"x": 1}), "red: unknown mode"),
    (dict(ROW, mode="scale", value="NaN"), "red: enter a factor"),
    (dict(ROW, mode="set", value=[1]), "red: enter a value"),
    (dict(ROW, positions=["x"] * 1000), "red: unknown positions ['x', 'x'"),
])
def test_steer_run_with_forged_row_settings(app, row, words):
    message = steer_run(app, [row])
    assert words in message and len(message) < 200


def test_steer_run_enforces_max_rows_on_the_server(app):
    from app.callbacks.steer import MAX_ROWS

    rows = [dict(ROW, row=k, feature=k) for k in range(1, 2001)]
    message = steer_run(app, rows)
    assert message == f"2000 steering rows: at most {MAX_ROWS} features can be steered at once."
    # at the limit the rows are accepted (and the run goes on to the next check)
    assert steer_run(app, rows[:MAX_ROWS], top_k=99) == "top-k: 1 to 30; generate: 0 to 256 tokens"


def test_steering_row_callbacks_with_a_forged_store(app):
    rows_out = f"..{ids.STORE_STEER_ROWS}.data...{ids.STEER_SELECTED}.children.."
    forged = [{"label": "no row"}]
    for trigger in (ids.STEER_ADD, ids.STORE_SELECTED):
        status, response = forge(app, rows_out, {(ids.STORE_STEER_ROWS, "data"): forged, (trigger, "n_clicks"): 1},
                                 f"{trigger}.n_clicks")
        assert status == 200, response
        assert ids.STORE_STEER_ROWS not in response  # kept as it is until Clear
        assert "Steering row 1 has no whole-number 'row'" in response[ids.STEER_SELECTED]["children"]
    status, response = forge(app, rows_out, {(ids.STORE_STEER_ROWS, "data"): forged, (ids.STEER_CLEAR, "n_clicks"): 1},
                             f"{ids.STEER_CLEAR}.n_clicks")
    assert status == 200 and response[ids.STORE_STEER_ROWS]["data"] == []
    status, response = forge(app, f"{ids.STEER_ROWS}.children", {(ids.STORE_STEER_ROWS, "data"): forged},
                             f"{ids.STORE_STEER_ROWS}.data")
    assert status == 200 and "clear the rows" in json.dumps(response)


def test_mode_change_of_a_row_with_a_forged_rows_store(app):
    key = next(k for k in app.callback_map if k.startswith('..{"row":["MATCH"]'))
    row_id = {"type": ids.STEER_MODE, "row": 1}
    outs = [{"id": {"type": ids.STEER_VALUE, "row": 1}, "property": p} for p in ("disabled", "placeholder", "value")]
    body = {"output": key, "outputs": outs, "inputs": [{"id": row_id, "property": "value", "value": "set"}],
            "state": [{"id": ids.STORE_STEER_ROWS, "property": "data", "value": [{"label": "no row"}, 5]}],
            "changedPropIds": [json.dumps(row_id, separators=(",", ":"), sort_keys=True) + ".value"]}
    r = app.server.test_client().post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)[-600:]
    assert r.get_json()["response"][json.dumps({"row": 1, "type": ids.STEER_VALUE}, separators=(",", ":"))]["value"] \
        == 1.0


def test_region_store_shape_keeps_what_the_page_writes():
    from app.browser_values import _region

    good = {"image": 1, "cells": [[2, 3], [2, 4]]}
    assert _region(good) == good and _region({"cells": [[0, 0]]}) == {"image": 0, "cells": [[0, 0]]}
    assert _region({"image": 0, "cells": []}) == {"image": 0, "cells": []}
    for bad in ("str", None, [1], {"image": True, "cells": []}, {"image": 0, "cells": [[0, 1.5]]},
                {"image": 0, "cells": [[0, 10**9]]}, {"image": 10**9, "cells": [[0, 0]]}):
        assert _region(bad) is None, bad


@pytest.mark.parametrize("target, hostile", [
    ((ids.STORE_REGION, "data"), ["str", 5, {"image": 0, "cells": [["a", 1]]}, {"cells": "x"}]),
    ((ids.STORE_STEER_ROWS, "data"), ["str", [{"label": "x"}], [5], [dict(ROW, row=[1])]]),
])
def test_no_region_or_steering_callback_answers_500_to_forged_values(app, target, hostile):
    assert every_callback_reading(app, target, hostile) >= 3


# ---------------------------------------------------------------------- graphs the library refuses (4)
@pytest.mark.parametrize("name", list(HOSTILE_GRAPHS))
def test_graphs_refused_by_the_library_give_a_message_wherever_opened(app, name):
    ref = {(ids.STORE_GRAPH, "data"): {"name": name}}
    status, response = forge(app, f"..{ids.STORE_GRAPH}.data", {(ids.GRAPH_DROPDOWN, "value"): name},
                             f"{ids.GRAPH_DROPDOWN}.value")
    assert status == 200 and response[ids.STATUS]["className"] == "status error"
    assert response[ids.STATUS]["title"].startswith("Cannot open this graph")
    assert ("feature index out of range" if name.startswith("feat") else "scores must be finite numbers") in \
        response[ids.STATUS]["title"]
    # the Neuronpedia JSON and GraphML exports, both scopes
    for button in (ids.EXPORT_JSON, ids.EXPORT_GRAPHML):
        for scope in ("view", "pinned"):
            status, response = forge(app, f"..{ids.DOWNLOAD}.data",
                                     {**ref, (button, "n_clicks"): 1, (ids.EXPORT_SCOPE, "value"): scope},
                                     f"{button}.n_clicks")
            assert status == 200 and ids.DOWNLOAD not in response
            assert "out of range" in response[ids.EXPORT_MESSAGE]["children"] or \
                "scores must be finite" in response[ids.EXPORT_MESSAGE]["children"]
    # compared with another graph, as graph B
    status, response = forge(app, f"..{ids.COMPARE_SUMMARY}.children",
                             {(ids.STORE_GRAPH, "data"): {"name": GOOD}, (ids.COMPARE_WITH, "value"): name},
                             f"{ids.COMPARE_WITH}.value")
    assert status == 200 and "Cannot compare" in json.dumps(response[ids.COMPARE_SUMMARY])
    # every other callback that opens the graph: no 500
    assert every_callback_reading(app, (ids.STORE_GRAPH, "data"), [{"name": name}]) > 10


def test_an_export_the_writer_refuses_is_a_message(app, monkeypatch):
    """A graph that opens but that a writer refuses (its self-check): a message, not a 500."""
    from tracer.graph import GraphFormatError

    from app import graph_store

    def refuse(*args, **kwargs):
        raise GraphFormatError("node 3: feature index -3 is out of range")

    monkeypatch.setattr(graph_store, "export_neuronpedia", refuse)
    monkeypatch.setattr(graph_store, "export_graphml", refuse)
    for button in (ids.EXPORT_JSON, ids.EXPORT_GRAPHML):
        status, response = forge(app, f"..{ids.DOWNLOAD}.data", {(ids.STORE_GRAPH, "data"): {"name": GOOD},
                                                                  (button, "n_clicks"): 1}, f"{button}.n_clicks")
        assert status == 200 and ids.DOWNLOAD not in response
        assert response[ids.EXPORT_MESSAGE]["children"] == \
            f"Cannot export {GOOD}: node 3: feature index -3 is out of range"


# ---------------------------------------------------------------------- the graph in the URL (6, 7)
def test_unknown_graph_in_the_url_says_so(app):
    choose = f"..{ids.GRAPH_DROPDOWN}.options...{ids.GRAPH_DROPDOWN}.value"
    for search in ("?graph=../../etc/passwd", "?graph=nope.graph.safetensors", "?graph=" + "x" * 5000):
        status, response = forge(app, choose, {(ids.URL, "search"): search}, f"{ids.URL}.search")
        assert status == 200
        dropdown = response[ids.GRAPH_DROPDOWN]
        assert dropdown["value"] is None and dropdown["placeholder"] == "choose a graph"  # opens none
        assert GOOD in [o["value"] for o in dropdown["options"]]  # the list is there to choose from
        text = response[ids.STATUS]["children"]
        assert "(named in the address) is not a graph in" in text and "choose one from the list" in text
        assert response[ids.STATUS]["className"] == "status error" and len(text) < 600
        # the empty value that follows keeps that message (no "No graph files" over it)
        status, response = forge(app, f"..{ids.STORE_GRAPH}.data", {(ids.GRAPH_DROPDOWN, "value"): None},
                                 f"{ids.GRAPH_DROPDOWN}.value")
        assert status == 200 and response == {ids.STORE_GRAPH: {"data": {"name": None}}}
    # a known name opens it, no name the first of the folder; the status is open_graph's
    for search, opened in ((f"?graph={GOOD}", GOOD), ("", "feat_neg.graph.safetensors"),
                           (None, "feat_neg.graph.safetensors"), ("?graph=", "feat_neg.graph.safetensors")):
        status, response = forge(app, choose, {(ids.URL, "search"): search}, f"{ids.URL}.search")
        assert status == 200 and response[ids.GRAPH_DROPDOWN]["value"] == opened and ids.STATUS not in response


@pytest.mark.parametrize("value", [None, ""])
def test_empty_dropdown_value_with_graphs_in_the_folder(app, value):
    status, response = forge(app, f"..{ids.STORE_GRAPH}.data", {(ids.GRAPH_DROPDOWN, "value"): value},
                             f"{ids.GRAPH_DROPDOWN}.value")
    assert status == 200 and response == {ids.STORE_GRAPH: {"data": {"name": None}}}  # no "No graph files"
    layout = json.dumps(app.server.test_client().get("/_dash-layout").get_json())
    assert '"placeholder": "choose a graph"' in layout and "no graphs in" not in layout


def test_empty_folder_still_says_it_has_no_graphs(tmp_path):
    app = create_app(tmp_path)
    status, response = forge(app, f"..{ids.STORE_GRAPH}.data", {(ids.GRAPH_DROPDOWN, "value"): None},
                             f"{ids.GRAPH_DROPDOWN}.value")
    assert status == 200 and response[ids.STATUS]["children"].startswith(f"No graph files in {tmp_path}")
    status, response = forge(app, f"..{ids.GRAPH_DROPDOWN}.options", {(ids.URL, "search"): ""}, f"{ids.URL}.search")
    assert response[ids.GRAPH_DROPDOWN]["placeholder"] == f"no graphs in {tmp_path}"


# ---------------------------------------------------------------------- annotations (8, 9)
EDIT = f"..{ids.STORE_ANNOT_REV}.data...{ids.ACTION_MESSAGE}.children...{ids.LABEL_MESSAGE}.children.."


FIELDS = {"label": (ids.LABEL_INPUT, "value"), "group_label": (ids.GROUP_LABEL, "value"),
          "selected": (ids.STORE_SELECTED, "data"), "nodes": (ids.CYTO, "selectedNodeData")}


def edit(app, button, **fields):
    """Click an annotation button of the open graph GOOD with these FIELDS."""
    values = {(ids.STORE_GRAPH, "data"): {"name": GOOD}, (ids.STORE_ANNOT_REV, "data"): 0, (button, "n_clicks"): 1}
    values.update({FIELDS[k]: v for k, v in fields.items()})
    status, response = forge(app, EDIT, values, f"{button}.n_clicks")
    assert status == 200, response
    return response


def test_pinning_copies_of_one_node_counts_it_once(app, tmp_path):
    key = app.state.store.session(GOOD).keys[0]
    response = edit(app, ids.PIN_BUTTON, nodes=[{"id": key}] * 5000)
    assert response[ids.ACTION_MESSAGE]["children"] == "1 pinned"
    assert load_annotations(tmp_path / GOOD).pinned == [key]
    response = edit(app, ids.HIDE_BUTTON, nodes=[{"id": key}] * 5000)
    assert response[ids.ACTION_MESSAGE]["children"] == "1 hidden"
    # copies of one node are not two nodes to group
    response = edit(app, ids.GROUP_BUTTON, nodes=[{"id": key}] * 2, group_label="pair")
    assert "Select two or more nodes" in response[ids.ACTION_MESSAGE]["children"]


@pytest.mark.parametrize("label", [{"a": 1}, 5, ["x"], True])
def test_labels_that_are_not_text_are_refused(app, tmp_path, label):
    session = app.state.store.session(GOOD)
    key, other = session.keys[0], session.keys[1]
    assert edit(app, ids.LABEL_SAVE, selected=key, label="red detector")[ids.LABEL_MESSAGE]["children"] == \
        "label saved"
    response = edit(app, ids.LABEL_SAVE, selected=key, label=label)
    assert response[ids.LABEL_MESSAGE]["children"] == f"Not saved: a label must be text, not {type(label).__name__}"
    assert ids.STORE_ANNOT_REV not in response
    # a supernode label too; the label saved before is kept
    response = edit(app, ids.GROUP_BUTTON, nodes=[{"id": key}, {"id": other}], group_label=label)
    assert response[ids.ACTION_MESSAGE]["children"].startswith("Not saved: a label must be text")
    a = load_annotations(tmp_path / GOOD)
    assert a.labels == {key: "red detector"} and a.supernodes == []


def test_empty_label_still_removes_a_label(app, tmp_path):
    key = app.state.store.session(GOOD).keys[0]
    for empty in (None, ""):
        edit(app, ids.LABEL_SAVE, selected=key, label="x")
        assert edit(app, ids.LABEL_SAVE, selected=key, label=empty)[ids.LABEL_MESSAGE]["children"] == "label saved"
        assert load_annotations(tmp_path / GOOD).labels == {}


@pytest.mark.parametrize("target", [(ids.LABEL_INPUT, "value"), (ids.GROUP_LABEL, "value")])
def test_no_annotation_callback_answers_500_to_forged_labels(app, target):
    assert every_callback_reading(app, target, [{"a": 1}, 5, ["x"]]) >= 1


# ---------------------------------------------------------------------- every callback, every value
def test_no_callback_answers_500_to_any_forged_value(tmp_path):
    """Each server callback, each of its inputs and states (not pattern-matching ones) in turn sent
    values of other types, the open graph a good one: never a 500 (app/browser_values.py keeps
    widget values and stores of the wrong shape from the callbacks; form fields say so)."""
    from app.live import LiveError

    def no_model(config):
        raise LiveError("no model in this test")

    g = make_graph(seed=0)
    g.model, g.transcoders = "toy", "toy-plt"
    save_graph(g, tmp_path / GOOD)
    app = create_app(tmp_path, live=True, live_factory=no_model)
    n = 0
    try:
        for output, cb in app.callback_map.items():
            specs = [i for i in cb["inputs"] + cb.get("state", []) if not i["id"].startswith("{")]
            if "callback" not in cb or any(o.startswith("{") for o in output.strip(".").split("...")):
                continue
            for target in specs:
                for value in ["str", {"a": 1}, [1], 5, True, -1, 1e308]:
                    values = {(i["id"], i["property"]): (1 if i["property"] == "n_clicks" else None) for i in specs}
                    values[(ids.STORE_GRAPH, "data")] = {"name": GOOD}
                    values[(target["id"], target["property"])] = value
                    status, response = forge(app, output, values, f"{target['id']}.{target['property']}")
                    assert status < 500, (output[:60], target, repr(value), response[-600:])
                    n += 1
    finally:
        app.state.live.queue.shutdown()
    assert n > 500, n
