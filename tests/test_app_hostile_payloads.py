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
