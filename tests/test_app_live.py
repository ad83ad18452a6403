"""The app's live features without a browser: the job queue (FIFO, positions, cancel, errors,
one worker per device), upload validation, file names, form parsing, the lazy model, and the
worker tasks on the toy VLM (trace, steer, region ablation, vision maps, attention graph, heads).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.jobs import ACTIVE, CANCELLED, DONE, ERROR, QUEUED, RUNNING, JobQueue, status_text
from app.live import (LiveConfig, _default_factory, LiveError, LiveModel, LiveState, check_compatible, decode_upload, save_unique,
                      slugify, target_specs)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the job queue
def gate_job(gate: threading.Event, log: list, name: str, result=None):
    def run(ctx):
        log.append(("start", name, threading.current_thread().name))
        assert gate.wait(10)
        log.append(("end", name))
        return result if result is not None else name

    return run


def test_fifo_order_and_queue_positions():
    q = JobQueue()
    gate, log = threading.Event(), []
    ids = [q.submit("trace", gate_job(gate, log, f"j{i}"), device="cpu") for i in range(4)]
    deadline = time.time() + 5
    while q.status(ids[0])["state"] != RUNNING and time.time() < deadline:
        time.sleep(0.01)
    assert q.status(ids[0])["state"] == RUNNING and q.status(ids[0])["position"] == 0
    assert [q.status(i)["position"] for i in ids[1:]] == [1, 2, 3]
    assert status_text(q.status(ids[2])) == "queued (position 2)"
    gate.set()
    for i in ids:
        assert q.wait(i, 10)["state"] == DONE
    assert [e[1] for e in log if e[0] == "start"] == ["j0", "j1", "j2", "j3"]
    # serialised: each job ended before the next started
    assert [e[0] for e in log] == ["start", "end"] * 4
    assert q.result(ids[1]) == "j1"


def test_cancel_a_queued_job_and_a_running_one():
    q = JobQueue()
    gate, log = threading.Event(), []
    started = threading.Event()

    def cooperative(ctx):
        started.set()
        for _ in range(500):
            ctx.progress("features", 1, 10)
            ctx.check()  # raises JobCancelled once cancel() was called
            time.sleep(0.01)
        return "finished"

    running = q.submit("trace", cooperative)
    waiting = q.submit("trace", gate_job(gate, log, "never"))
    after = q.submit("steer", gate_job(gate, log, "after"))
    assert started.wait(5)
    assert q.cancel(waiting) is True
    assert q.status(waiting)["state"] == CANCELLED
    assert q.status(after)["position"] == 1  # moved up
    assert q.cancel(running) is True
    assert q.wait(running, 10)["state"] == CANCELLED
    gate.set()
    assert q.wait(after, 10)["state"] == DONE
    assert ("start", "never") not in [(e[0], e[1]) for e in log]
    assert q.cancel(after) is False  # finished jobs cannot be cancelled
    assert q.cancel("nonsense") is False and q.cancel(None) is False


def test_tracer_style_cancellation_is_reported_as_cancelled():
    class AttributionCancelled(RuntimeError):  # the name tracer's attribution raises
        pass

    q = JobQueue()

    def run(ctx):
        while not ctx.should_stop():
            time.sleep(0.005)
        raise AttributionCancelled("attribution cancelled")

    job = q.submit("trace", run)
    while q.status(job)["state"] == QUEUED:
        time.sleep(0.005)
    q.cancel(job)
    assert q.wait(job, 5)["state"] == CANCELLED


def test_errors_are_reported_not_raised_and_the_worker_survives():
    q = JobQueue()

    def boom(ctx):
        raise ValueError("target 'rouge' is not a single token")

    def crash(ctx):
        raise KeyError("internal")

    a, b = q.submit("trace", boom), q.submit("trace", crash)
    c = q.submit("trace", lambda ctx: 42)
    sa, sb = q.wait(a, 5), q.wait(b, 5)
    assert sa["state"] == ERROR and sa["error"] == "target 'rouge' is not a single token"
    assert sb["state"] == ERROR and sb["error"].startswith("KeyError")
    assert status_text(sa).startswith("error: target")
    assert q.wait(c, 5)["state"] == DONE and q.result(c) == 42
    assert q.result(a) is None


def test_one_worker_per_device_and_devices_run_in_parallel():
    q = JobQueue()
    gate, log = threading.Event(), []
    a1 = q.submit("trace", gate_job(gate, log, "cpu-1"), device="cpu")
    q.submit("trace", gate_job(gate, log, "cpu-2"), device="cpu")
    b1 = q.submit("trace", gate_job(gate, log, "cuda-1"), device="cuda:0")
    deadline = time.time() + 5
    while time.time() < deadline and not (q.status(a1)["state"] == RUNNING and q.status(b1)["state"] == RUNNING):
        time.sleep(0.01)
    # both devices' first jobs run at once; the second cpu job waits for the first
    assert q.status(a1)["state"] == RUNNING and q.status(b1)["state"] == RUNNING
    assert sorted(q.devices()) == ["cpu", "cuda:0"]
    gate.set()
    for job in (a1, b1):
        q.wait(job, 5)
    threads = {e[2] for e in log if e[0] == "start"}
    assert threads == {"vlmc-worker-cpu", "vlmc-worker-cuda:0"}
    for i in range(20):  # more jobs never start more threads
        q.submit("steer", lambda ctx: None, device="cpu")
    assert len(q.workers()) == 2
    q.shutdown()


def test_progress_delivery_and_unknown_ids():
    q = JobQueue(keep=3)
    seen = threading.Event()

    def run(ctx):
        ctx.progress("features", 3, 10)
        seen.set()
        time.sleep(0.2)
        return {"name": "x.graph.safetensors"}

    job = q.submit("trace", run)
    assert seen.wait(5)
    st = q.status(job)
    assert st["phase"] == "features" and st["done"] == 3 and st["total"] == 10 and st["state"] in ACTIVE
    assert status_text(st) == "features 3/10"
    q.wait(job, 5)
    assert q.mark_delivered(job) is True and q.mark_delivered(job) is False
    assert q.status("0" * 32) is None and q.status(None) is None
    for _ in range(5):  # only the last `keep` finished jobs are remembered
        q.wait(q.submit("steer", lambda ctx: 1), 5)
    assert q.status(job) is None


# ---------------------------------------------------------------------- uploads, names, forms
def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_bytes(fmt: str, size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_uploads_accept_png_jpeg_webp(fmt):
    up = decode_upload(data_uri(image_bytes(fmt)), "scene.img")
    assert (up.width, up.height, up.format) == (32, 24, fmt)


@pytest.mark.parametrize("payload, words", [
    (b"this is not an image at all", "not a readable image"),
    (image_bytes("PNG")[:60], "not a readable image"),  # truncated
    (image_bytes("GIF"), "GIF images are not accepted"),
    (image_bytes("BMP"), "BMP images are not accepted"),
    (b"", "empty"),
])
def test_bad_uploads_give_clear_messages(payload, words):
    with pytest.raises(LiveError, match=words):
        decode_upload(data_uri(payload), "bad.png")


def test_decompression_bomb_and_garbage_uploads():
    # a PNG whose header claims 100,000 x 100,000 pixels (a few hundred bytes on the wire)
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    with pytest.raises(LiveError, match="too large|not a readable image"):
        decode_upload(data_uri(png), "bomb.png")
    with pytest.raises(LiveError, match="could not be decoded"):
        decode_upload("data:image/png;base64,@@@not-base64@@@", "x.png")
    with pytest.raises(LiveError):
        decode_upload(None, None)
    with pytest.raises(LiveError, match="larger than"):
        decode_upload("data:image/png;base64," + "A" * (30 * 1024 * 1024), "huge.png")


def test_file_names_are_safe_and_unique(tmp_path):
    from graph_factory import make_graph

    assert slugify("What color is the circle?") == "what-color-is-the-circle"
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("   ") == "trace" and len(slugify("x" * 300)) <= 48
    g = make_graph(seed=1)
    names = [save_unique(g, tmp_path, "What color?") for _ in range(3)]
    assert names == ["what-color.graph.safetensors", "what-color-2.graph.safetensors", "what-color-3.graph.safetensors"]
    assert save_unique(g, tmp_path, "../../outside") == "outside.graph.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["outside.graph.safetensors"])


def test_trace_form_parsing():
    from app.callbacks.trace import parse_request

    prompt, targets, settings = parse_request("  What color?  ", "contrast", "red", "blue", 200, 5, 0.9, 64)
    assert prompt == "What color?" and targets == ["red - blue"]
    assert settings == {"max_feature_nodes": 200, "max_n_logits": 5, "desired_logit_prob": 0.9, "batch_size": 64}
    assert parse_request("Q", "salient", "red", "", 1, 1, 1, 1)[1] is None
    assert parse_request("Q", "token", "red", "", 1, 1, 1, 1)[1] == ["red"]
    for bad, words in [(("", "salient", "", "", 1, 1, 0.9, 1), "Write a prompt"),
                       (("Q", "token", "", "", 1, 1, 0.9, 1), "answer token"),
                       (("Q", "contrast", "red", "", 1, 1, 0.9, 1), "both tokens"),
                       (("Q", "salient", "", "", 0, 1, 0.9, 1), "max feature nodes"),
                       (("Q", "salient", "", "", 10, 1, 2.0, 1), "desired prob"),
                       (("Q", "salient", "", "", 10, 1, 0.9, "x"), "batch size"),
                       (("Q" * 5000, "salient", "", "", 10, 1, 0.9, 1), "longer than")]:
        with pytest.raises(LiveError, match=words):
            parse_request(*bad)


def test_steering_rows_to_edits():
    from app.callbacks.steer import edits_from_rows

    rows = [{"row": 1, "label": "a", "layer": 2, "feature": 17, "position": 40, "mode": "ablate", "value": 5,
             "positions": "active"},
            {"row": 2, "label": "b", "layer": 3, "feature": 5, "position": 80, "mode": "scale", "value": "3",
             "positions": "node"},
            {"row": 3, "label": "c", "layer": 1, "feature": 9, "position": 80, "mode": "set", "value": 8.5,
             "positions": "region"}]
    region = {"image": 0, "cells": [[2, 3], [2, 4]]}
    edits = edits_from_rows(rows, region)
    assert edits[0] == {"layer": 2, "feature": 17, "mode": "ablate", "value": None, "positions": "active",
                        "label": "a"}
    assert edits[1]["value"] == 3.0 and edits[1]["positions"] == [80]
    assert edits[2]["positions"] == [(0, 2, 3), (0, 2, 4)]
    with pytest.raises(LiveError, match="select an image region"):
        edits_from_rows(rows, None)
    with pytest.raises(LiveError, match="enter a factor"):
        edits_from_rows([dict(rows[1], value=None)], region)


def test_compatibility_and_target_specs():
    from graph_factory import make_graph

    from tracer.graph import Target

    g = make_graph(seed=2)
    g.model, g.transcoders = "toy", "toy-plt"
    toy = LiveConfig()
    check_compatible(toy, g)
    with pytest.raises(LiveError, match="made with model 'toy'"):
        check_compatible(LiveConfig(model="google/gemma-3-4b-it", transcoders="tianhux2/gemma3-4b-it-plt"), g)
    g.transcoders = "other-set"
    with pytest.raises(LiveError, match="transcoders"):
        check_compatible(toy, g)
    check_compatible(toy, g, need_transcoders=False)
    # a shipped toy of another family brings its own transcoder set: `python -m app --model toy-llava`
    llava = LiveConfig(model="toy-llava")
    assert llava.transcoders_ref == "toy-plt-llava" and not llava.is_toy
    g.model, g.transcoders = "toy-llava", "toy-plt-llava"
    check_compatible(llava, g)
    with pytest.raises(LiveError, match="start it with --model toy-llava"):
        check_compatible(toy, g)
    with pytest.raises(LiveError, match="needs --transcoders"):
        _default_factory(LiveConfig(model="google/gemma-3-4b-it"))
    g.targets = [Target("red", 44, 0.9), Target("red - blue", -1, 0.0, "direction",
                                                {"plus": [44], "minus": [25]})]
    assert target_specs(g) == ["#44", "#44 - #25"]


def test_live_model_loads_once_in_the_worker_and_reports_failures(tmp_path):
    calls = []

    def factory(config):
        calls.append(threading.current_thread().name)
        return object()

    live = LiveState(LiveConfig(device="cpu"), tmp_path, factory=factory)
    assert calls == [] and not live.model.loaded  # nothing at construction
    jobs = [live.submit("steer", lambda ctx: live.model.session(ctx)) for _ in range(3)]
    for j in jobs:
        assert live.queue.wait(j, 5)["state"] == DONE
    assert calls == ["vlmc-worker-cpu"]

    def failing(config):
        raise OSError("no such model: google/gemma-3-4b-it")

    broken = LiveModel(LiveConfig(model="google/gemma-3-4b-it", transcoders="x"), failing)
    with pytest.raises(LiveError, match="cannot load model google/gemma-3-4b-it.*no such model"):
        broken.session()


def test_command_line_live_flags_and_nothing_heavy_at_start():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    for word in ("--model", "--transcoders", "--device", "--dtype", "--no-live"):
        assert word in out.stdout
    out = subprocess.run([sys.executable, "-m", "app", "--model", "google/gemma-3-4b-it"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "--model needs --transcoders" in out.stderr
    probe = ("import sys; from app.factory import create_app; from app.live import LiveConfig; "
             "a = create_app(live=LiveConfig()); a.server.test_client().get('/_dash-layout'); "
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), len(a.callback_map))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    names, n = out.stdout.split("]")
    assert names + "]" == "[]", out.stdout + out.stderr
    assert int(n) > 30


# ---------------------------------------------------------------------- the server side
def post(client, output: str, inputs: list[dict], state: list[dict] | None = None):
    outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in output.strip(".").split("...")]
    body = {"output": output, "outputs": outs if output.startswith("..") else outs[0], "inputs": inputs,
            "state": state or [], "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs]}
    r = client.post("/_dash-update-component", json=body)
    return r.status_code, (r.get_json() if r.status_code == 200 else r.get_data(as_text=True))


def test_forged_requests_give_messages_not_errors(tmp_path):
    from app import ids
    from app.factory import create_app

    app = create_app(tmp_path, live=True, live_factory=lambda c: pytest.fail("no model may load here"))
    client = app.server.test_client()
    # a corrupt upload
    out = (f"..{ids.STORE_UPLOAD}.data...{ids.TRACE_PREVIEW}.src...{ids.TRACE_PREVIEW}.style..."
           f"{ids.TRACE_UPLOAD_MESSAGE}.children...{ids.TRACE_UPLOAD_MESSAGE}.className..")
    status, data = post(client, out, [{"id": ids.TRACE_UPLOAD, "property": "contents",
                                       "value": data_uri(b"garbage", "image/png")},
                                      {"id": ids.TRACE_USE_CURRENT, "property": "n_clicks", "value": None}],
                        [{"id": ids.TRACE_UPLOAD, "property": "filename", "value": "x.png"},
                         {"id": ids.STORE_GRAPH, "property": "data", "value": {"name": None}}])
    assert status == 200
    assert "not a readable image" in json.dumps(data["response"][ids.TRACE_UPLOAD_MESSAGE])
    assert data["response"][ids.STORE_UPLOAD]["data"] is None
    # a forged job id polls as 'lost'; polling never raises
    from app.live import KINDS

    out = ".." + "...".join([f"{ids.store_status(k)}.data" for k in KINDS] + [f"{ids.LIVE_POLL}.disabled"]) + ".."
    inputs = [{"id": ids.LIVE_POLL, "property": "n_intervals", "value": 3}]
    inputs += [{"id": ids.store_job(k), "property": "data", "value": {"id": "f" * 32} if k == "trace" else None}
               for k in KINDS]
    states = [{"id": ids.store_status(k), "property": "data", "value": None} for k in KINDS]
    status, data = post(client, out, inputs, states)
    assert status == 200
    assert data["response"][ids.store_status("trace")]["data"]["state"] == "lost"
    assert data["response"][ids.LIVE_POLL]["disabled"] is True
    # an upload token that does not exist
    out = f"..{ids.store_job('trace')}.data...{ids.TRACE_MESSAGE}.children.."
    st = [{"id": ids.STORE_UPLOAD, "property": "data", "value": {"token": "nope"}},
          {"id": ids.TRACE_PROMPT, "property": "value", "value": "What color?"},
          {"id": ids.TRACE_TARGET_MODE, "property": "value", "value": "salient"},
          {"id": ids.TRACE_TARGET_A, "property": "value", "value": ""},
          {"id": ids.TRACE_TARGET_B, "property": "value", "value": ""},
          {"id": ids.TRACE_MAX_FEATURES, "property": "value", "value": 50},
          {"id": ids.TRACE_MAX_LOGITS, "property": "value", "value": 5},
          {"id": ids.TRACE_DESIRED_PROB, "property": "value", "value": 0.9},
          {"id": ids.TRACE_BATCH, "property": "value", "value": 32},
          {"id": ids.TRACE_NAME, "property": "value", "value": ""},
          {"id": ids.store_job("trace"), "property": "data", "value": None}]
    status, data = post(client, out, [{"id": ids.TRACE_SUBMIT, "property": "n_clicks", "value": 1}], st)
    assert status == 200 and "upload it again" in json.dumps(data["response"])


# ---------------------------------------------------------------------- tasks on the toy VLM
@pytest.fixture(scope="module")
def toy_live(tmp_path_factory):
    from tracer.session import TracingSession

    folder = tmp_path_factory.mktemp("live-graphs")
    session = TracingSession(device="cpu")
    live = LiveState(LiveConfig(device="cpu"), folder, factory=lambda config: session)
    yield live
    live.queue.shutdown()


def _red_circle():
    from tracer.toy import world

    return next(e for e in world.examples("heldout", question_type="color")
                if e.answer == "red" and e.question == "What color is the circle?")


def test_trace_job_saves_a_graph_with_progress_and_can_be_cancelled(toy_live):
    from tracer.graph import load_graph

    from app.tasks import trace_job

    ex = _red_circle()
    buf = io.BytesIO()
    ex.image().save(buf, format="PNG")
    phases = []

    class Spy:  # records every progress report of the job
        def __init__(self, ctx):
            self.ctx = ctx

        def progress(self, phase, done=0, total=0):
            phases.append(phase)
            self.ctx.progress(phase, done, total)

        def __getattr__(self, name):
            return getattr(self.ctx, name)

    run = trace_job(toy_live, buf.getvalue(), ex.question, ["red - blue"], {"max_feature_nodes": 60, "batch_size": 32},
                    "red circle")
    job = toy_live.submit("trace", lambda ctx: run(Spy(ctx)))
    st = toy_live.queue.wait(job, 60)
    assert st["state"] == DONE, st
    result = toy_live.queue.result(job)
    assert result["name"] == "red-circle.graph.safetensors" and result["targets"] == ["red - blue"]
    g = load_graph(toy_live.graphs_dir / result["name"])
    assert ex.question in g.prompt and g.n_features == 60 and g.model == "toy" and len(g.images) == 1
    assert [p for p in dict.fromkeys(phases) if not p.startswith("loading")] == [
        "forward", "encode", "logit lanes", "features", "assemble", "saving"]

    # cancelled between batches: nothing saved
    job = toy_live.submit("trace", trace_job(toy_live, buf.getvalue(), ex.question, None,
                                             {"max_feature_nodes": 3000, "batch_size": 1}, "cancelled"))
    while toy_live.queue.status(job)["phase"] != "features":
        time.sleep(0.005)
    toy_live.queue.cancel(job)
    assert toy_live.queue.wait(job, 30)["state"] == CANCELLED
    assert not (toy_live.graphs_dir / "cancelled.graph.safetensors").exists()

    # a target that is not a token: an error message, the worker carries on
    job = toy_live.submit("trace", trace_job(toy_live, buf.getvalue(), ex.question, ["#999999"], {}, "bad"))
    st = toy_live.queue.wait(job, 30)
    assert st["state"] == ERROR and "outside the vocabulary" in st["error"]


def test_steer_region_vision_attention_and_heads_jobs(toy_live):
    from tracer.graph import load_graph

    from app.graph_store import GraphStore
    from app.tasks import attention_job, heads_job, region_job, steer_job, vision_job

    store = GraphStore(toy_live.graphs_dir)
    name = "red-circle.graph.safetensors"
    if name not in store.names():
        pytest.skip("needs the graph of the trace test")
    session = store.session(name)
    g = session.graph
    logit = g.logit_offset
    edges = g.adjacency[g.n_features, : g.n_features]
    top = np.argsort(-edges)[:4]
    edits = [{"layer": int(g.features[i, 0]), "feature": int(g.features[i, 2]), "mode": "ablate", "value": None,
              "positions": "active"} for i in top]
    run = toy_live.submit("steer", steer_job(toy_live, g, edits, False, False, 5, 3))
    assert toy_live.queue.wait(run, 60)["state"] == DONE
    r = toy_live.queue.result(run)
    red = next(c for c in r["changes"] if c["token"] == "red")
    assert r["answer_before"] == "red" and red["p_after"] < red["p_before"] - 0.01 and red["logit_change"] < 0
    assert r["generation"]["before"].startswith("red") and r["applied"] >= 4

    # direct effects only: one feature's ablation moves the contrast by minus its edge
    i = int(top[0])
    one = [{"layer": int(g.features[i, 0]), "feature": int(g.features[i, 2]), "mode": "ablate", "value": None,
            "positions": [int(g.features[i, 1])]}]
    one[0]["label"] = "red detector"
    run = toy_live.submit("steer", steer_job(toy_live, g, one, True, True, 100, 0, name))
    assert toy_live.queue.wait(run, 60)["state"] == DONE
    r = toy_live.queue.result(run)
    d = {c["token"]: c["logit_change"] for c in r["changes"]}
    assert d["red"] - d["blue"] == pytest.approx(-float(edges[i]), rel=2e-3, abs=2e-3)
    # the result names its graph and its edits by label, and measures along the graph's target
    assert r["graph"] == name and r["edits"] == [f"red detector: ablate @{int(g.features[i, 1])}"]
    assert [t["label"] for t in r["target_changes"]] == ["red - blue"]
    assert r["target_changes"][0]["change"] == pytest.approx(-float(edges[i]), rel=1e-4, abs=1e-5)

    cells = [(0, int(r_), int(c_)) for r_, c_ in session.ground_truth["cells"]] if session.ground_truth else \
        [(0, r_, c_) for r_ in range(3, 5) for c_ in range(3, 5)]
    run = toy_live.submit("region", region_job(toy_live, g, cells, "mean", 5))
    assert toy_live.queue.wait(run, 60)["state"] == DONE
    assert len(toy_live.queue.result(run)["positions"]) == len(cells)

    run = toy_live.submit("vision", vision_job(toy_live, session))
    assert toy_live.queue.wait(run, 60)["state"] == DONE
    from app.live import graph_identity

    maps = toy_live.cached(("vision", graph_identity(session)))
    side = maps["tokens_per_side"]
    assert maps["rollout"].shape[:2] == (1, side * side)
    assert np.allclose(maps["rollout"].sum((-1, -2)), 1, atol=1e-4)

    # heads behind the strongest edge into the logit: the replacement model rebuilt from the
    # graph file gives back the graph's own edge
    run = toy_live.submit("heads", heads_job(toy_live, session, logit, i))
    assert toy_live.queue.wait(run, 60)["state"] == DONE, toy_live.queue.status(run)
    h = toy_live.queue.result(run)
    assert h["edge"] == pytest.approx(h["graph_edge"], rel=1e-3, abs=1e-4)
    assert h["heads"] and abs(h["heads"][0]["carried"]) >= abs(h["heads"][-1]["carried"])

    run = toy_live.submit("attention", attention_job(toy_live, session))
    assert toy_live.queue.wait(run, 60)["state"] == DONE
    out = toy_live.queue.result(run)
    ag = load_graph(toy_live.graphs_dir / out["name"])
    assert out["name"].startswith("attention-red-circle") and ag.info.get("kind") == "attention"
    assert ag.info["source_graph"] == name and [t.label for t in ag.targets] == [t.label for t in g.targets]
    again = toy_live.submit("attention", attention_job(toy_live, session))  # made before: reused
    assert toy_live.queue.wait(again, 60)["state"] == DONE
    assert toy_live.queue.result(again) == dict(out, reused=True)
