"""The "new trace" form: upload, validate, queue, progress, cancel, open the result."""

from __future__ import annotations

import logging

from dash import Input, Output, State, ctx, no_update

from app import ids
from app.callbacks.jobs import HIDDEN, SHOWN, open_session, result_graph_url
from app.jobs import ACTIVE, DONE
from app.live import LiveError, Upload, decode_upload, png_bytes, slugify, thumbnail_uri
from app.panels.live_render import job_line, progress_percent
from app.tasks import trace_job

log = logging.getLogger(__name__)

MAX_PROMPT = 4000


def _number(value, name: str, lo: float, hi: float, integer: bool = True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LiveError(f"{name}: enter a number") from None
    if not lo <= v <= hi or (integer and v != int(v)):
        raise LiveError(f"{name}: {'a whole number ' if integer else ''}between {lo:g} and {hi:g}")
    return int(v) if integer else v


def _text(value, name: str) -> str:
    """A text field's value ("" when empty); LiveError for anything else: a forged request can send
    a number or an object where the page sends a string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LiveError(f"{name}: expected text, not {type(value).__name__}")
    return value


def parse_request(prompt, mode, a, b, max_features, max_logits, desired, batch) -> tuple[str, list[str] | None, dict]:
    """(prompt, targets, settings) from the form, or LiveError."""
    prompt = _text(prompt, "prompt").strip()
    if not prompt:
        raise LiveError("Write a prompt (e.g. What color is the circle?).")
    if len(prompt) > MAX_PROMPT:
        raise LiveError(f"The prompt is longer than {MAX_PROMPT} characters.")
    a, b = _text(a, "answer token").strip(), _text(b, "second token").strip()
    targets = None
    if mode == "token":
        if not a:
            raise LiveError("Enter the answer token to trace (e.g. red).")
        targets = [a]
    elif mode == "contrast":
        if not a or not b:
            raise LiveError("Enter both tokens of the contrast (e.g. red − blue).")
        targets = [f"{a} - {b}"]
    settings = {"max_feature_nodes": _number(max_features, "max feature nodes", 1, 100_000),
                "max_n_logits": _number(max_logits, "max logits", 1, 50),
                "desired_logit_prob": _number(desired, "desired prob.", 0.01, 1.0, integer=False),
                "batch_size": _number(batch, "batch size", 1, 4096)}
    return prompt, targets, settings


def register(app, state) -> None:
    live = state.live

    @app.callback(
        Output(ids.TRACE_PANEL, "style"),
        Input(ids.TRACE_OPEN, "n_clicks"), Input(ids.TRACE_CLOSE, "n_clicks"), Input(ids.store_status("trace"), "data"),
        State(ids.TRACE_PANEL, "style"),
        prevent_initial_call=True,
    )
    def toggle(_open, _close, status, style):
        trigger = ctx.triggered_id
        if trigger == ids.TRACE_OPEN:
            return HIDDEN if (style or {}).get("display") == "block" else SHOWN
        if trigger == ids.TRACE_CLOSE:
            return HIDDEN
        # a finished trace opens its graph: get the form out of the way
        if status and status.get("state") == DONE and (style or {}).get("display") == "block":
            return HIDDEN
        return no_update

    @app.callback(
        Output(ids.TRACE_TARGET_A, "disabled"), Output(ids.TRACE_TARGET_B, "disabled"),
        Input(ids.TRACE_TARGET_MODE, "value"),
        prevent_initial_call=True,
    )
    def target_inputs(mode):
        return mode not in ("token", "contrast"), mode != "contrast"

    @app.callback(
        Output(ids.STORE_UPLOAD, "data"), Output(ids.TRACE_PREVIEW, "src"), Output(ids.TRACE_PREVIEW, "style"),
        Output(ids.TRACE_UPLOAD_MESSAGE, "children"), Output(ids.TRACE_UPLOAD_MESSAGE, "className"),
        Input(ids.TRACE_UPLOAD, "contents"), Input(ids.TRACE_USE_CURRENT, "n_clicks"),
        State(ids.TRACE_UPLOAD, "filename"), State(ids.STORE_GRAPH, "data"),
        prevent_initial_call=True,
    )
    def upload(contents, _use, filename, graph):
        """Validate at once (never raises: any failure is a message next to the upload)."""
        try:
            if ctx.triggered_id == ids.TRACE_USE_CURRENT:
                session = open_session(state, graph)
                if session is None or not len(session.graph.images):
                    raise LiveError("The open graph has no image.")
                data = png_bytes(session.graph.images[0])
                h, w = session.graph.images[0].shape[:2]
                item = Upload(data, f"image of {session.name}", int(w), int(h), "PNG")
            else:
                if contents is None:
                    return no_update, no_update, no_update, no_update, no_update
                item = decode_upload(contents, filename)
            token = live.uploads.put(item)
            preview = thumbnail_uri(item.data)
        except LiveError as err:
            return None, None, HIDDEN, str(err), "upload-message error"
        except Exception as err:  # noqa: BLE001: an upload never crashes anything
            log.warning("upload failed", exc_info=True)
            return None, None, HIDDEN, f"Cannot use this file ({type(err).__name__}: {err}).", "upload-message error"
        info = {"token": token, "name": item.name, "width": item.width, "height": item.height}
        return info, preview, {"display": "block"}, f"{item.name}: {item.width}×{item.height} {item.format}", \
            "upload-message ok"

    @app.callback(
        Output(ids.store_job("trace"), "data"), Output(ids.TRACE_MESSAGE, "children"),
        Input(ids.TRACE_SUBMIT, "n_clicks"),
        State(ids.STORE_UPLOAD, "data"), State(ids.TRACE_PROMPT, "value"), State(ids.TRACE_TARGET_MODE, "value"),
        State(ids.TRACE_TARGET_A, "value"), State(ids.TRACE_TARGET_B, "value"),
        State(ids.TRACE_MAX_FEATURES, "value"), State(ids.TRACE_MAX_LOGITS, "value"),
        State(ids.TRACE_DESIRED_PROB, "value"), State(ids.TRACE_BATCH, "value"), State(ids.TRACE_NAME, "value"),
        State(ids.store_job("trace"), "data"),
        prevent_initial_call=True,
    )
    def submit(_n, upload_info, prompt, mode, a, b, max_features, max_logits, desired, batch, name, current):
        current_id = current.get("id") if isinstance(current, dict) else None
        st = live.queue.status(current_id) if current_id else None
        if st and st["state"] in ACTIVE:
            return no_update, "This tab's trace is still running: wait for it or cancel it."
        try:
            prompt, targets, settings = parse_request(prompt, mode, a, b, max_features, max_logits, desired, batch)
            name = _text(name, "graph name")
            image = None
            if upload_info:
                # the store holds {"token", ...}; anything else (forged) is an upload the server does not have
                item = live.uploads.get(upload_info.get("token") if isinstance(upload_info, dict) else None)
                if item is None:
                    raise LiveError("The uploaded image is no longer on the server: upload it again.")
                image = item.data
        except LiveError as err:
            return no_update, str(err)
        stem = slugify(name or prompt)
        job_id = live.submit("trace", trace_job(live, image, prompt, targets, settings, stem),
                             label=prompt[:80], meta={"prompt": prompt})
        note = "" if image else "No image: tracing the prompt as text only."
        return {"id": job_id}, note

    @app.callback(
        Output(ids.TRACE_STATUS, "children"), Output(ids.TRACE_STATUS, "className"), Output(ids.TRACE_BAR, "style"),
        Output(ids.TRACE_CANCEL, "style"), Output(ids.TRACE_OPEN, "children"), Output(ids.TRACE_OPEN, "className"),
        Input(ids.store_status("trace"), "data"),
        prevent_initial_call=True,
    )
    def progress(status):
        text, cls = job_line(status)
        pct = progress_percent(status)
        active = bool(status and status["state"] in ACTIVE)
        if status and status["state"] == DONE:
            result = live.queue.result(status["id"]) or {}
            text = f"done: {result.get('name', '')} ({result.get('n_features', '?')} features)"
        button = "New trace"
        if active:
            button = ("Trace queued" if status["state"] == "queued" else f"Tracing {pct:.0f}%")
        return (text, cls, {"width": f"{pct:.1f}%"}, {"display": "inline-block"} if active else {"display": "none"},
                button, "trace-open busy" if active else "trace-open")

    @app.callback(
        Output(ids.TRACE_PROMPT, "value"),
        Input(ids.store_status("trace"), "data"), State(ids.TRACE_PROMPT, "value"),
        prevent_initial_call=True,
    )
    def prompt_of_job(status, prompt):
        """After a reload the tab re-attaches to its running trace: show that trace's prompt
        (not an empty form, as if nothing were running)."""
        typed = isinstance(prompt, str) and prompt.strip()  # a forged non-string prompt counts as empty
        if not isinstance(status, dict) or status.get("state") not in ACTIVE or typed:
            return no_update
        return (status.get("meta") or {}).get("prompt") or no_update

    @app.callback(
        Output(ids.URL, "search", allow_duplicate=True),
        Input(ids.store_status("trace"), "data"),
        prevent_initial_call=True,
    )
    def open_result(status):
        """Open the traced graph once (not again after a reload)."""
        return result_graph_url(live, status)

    @app.callback(
        Output(ids.STORE_TRACE_CANCEL, "data"),
        Input(ids.TRACE_CANCEL, "n_clicks"), State(ids.store_job("trace"), "data"),
        prevent_initial_call=True,
    )
    def cancel(_n, job):
        job_id = job.get("id") if isinstance(job, dict) else None
        return {"id": job_id, "cancelled": live.queue.cancel(job_id)}
